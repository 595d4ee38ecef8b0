"""Leases: the pure lessor (see docs/lease-watch.md)."""

from securekv.lease.lessor import MAX_LEASE_TTL, Lease, LeaseRow, Lessor, min_lease_ttl, new_lease_id

__all__ = ["MAX_LEASE_TTL", "Lease", "LeaseRow", "Lessor", "min_lease_ttl", "new_lease_id"]
