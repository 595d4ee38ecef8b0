"""Fault-injection suite over real processes: ``python -m securekv.torture``.

Real `securekv serve` members on loopback with mutual TLS, clients with a mixed workload, a
nemesis (kill -9, SIGSTOP/SIGCONT, partitions through a TCP proxy, a full disk, restarts), and
every recorded history checked afterwards (``securekv.testing.history_checks``). See
docs/torture.md.
"""
