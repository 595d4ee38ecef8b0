"""Whole-cluster operations: plan a secure cluster into per-member bundles (``plan``, ``bundle``)
and let members join without the CA key (``join``, ``token``, ``signer``). See docs/deployment.md
and docs/pki.md."""
