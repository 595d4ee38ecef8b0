"""Whole-cluster operations: plan a secure cluster into per-member bundles (``plan``, ``bundle``)
and let members join without the CA key (``join``, ``token``). See docs/deployment.md."""
