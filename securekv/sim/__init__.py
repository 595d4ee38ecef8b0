"""Deterministic simulation of a securekv Raft cluster (``python -m securekv.sim``).

See docs/simulation.md. The driver is sans-IO too: it owns a virtual clock, a simulated network
and disk, and real ``securekv.raft`` nodes; only ``__main__`` prints.
"""
