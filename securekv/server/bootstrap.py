"""How a member that never ran gets its IDs and its first WAL (shared by ``serve`` and
``snapshot restore``).

No trio, no grpc: ``securekv ctl snapshot restore`` writes the same WAL a fresh ``securekv
serve --initial-cluster-state new`` would write, so the restored member starts exactly like a
newly bootstrapped one (it just finds a backend that already holds data).
"""

from __future__ import annotations

from typing import Iterable, Sequence

from securekv.server import ids
from securekv.server.cluster import Member


def cluster_ids(name: str, initial_cluster: Iterable[tuple[str, str]], token: str) -> tuple[int, int]:
    """(own member ID, cluster ID) by etcd's formula from ``--initial-cluster`` and the token."""
    by_name: dict[str, list[str]] = {}
    for member, url in initial_cluster:
        by_name.setdefault(member, []).append(str(url))
    members = [ids.member_id(urls, token) for urls in by_name.values()]
    return ids.member_id(by_name[name], token), ids.cluster_id(members)


def create_member_wal(wal_dir: str, member_id: int, cluster_id: int, founders: Sequence[Member] | None,
                      restored: bool = False) -> None:
    """Create (and close) the WAL of a member that was never started.

    ``founders`` (``--initial-cluster-state new``): a marker at index 0 carrying the founders
    as voters and their ADD_NODE conf changes at index 1..n (term 0, context = name + peer
    URLs), committed from the start — identical on every founder, as etcd writes them.
    ``None``: a member joining an existing cluster, whose log starts empty.

    ``restored`` (``snapshot restore``): then also a snapshot marker at index n, as etcdctl's
    restore writes one. The restored data is in the backend, not in the log, so the log must
    start after it: a member added later is sent a snapshot of the backend (its log cannot
    start at index 1), instead of replaying bootstrap entries onto an empty store. The caller
    has stored the founders' membership and consistent index n in the backend.
    """
    from securekv.raft import ConfChange, ConfChangeType, Entry, EntryType
    from securekv.storage import WAL, HardState, Metadata, SnapshotMarker

    wal = WAL.create(wal_dir, Metadata(member_id=member_id, cluster_id=cluster_id))
    try:
        if founders is not None:
            ordered = sorted(founders, key=lambda m: m.id)
            wal.save_snapshot(SnapshotMarker(index=0, term=0, voters=[m.id for m in ordered]))
            boot = [Entry(0, i + 1, EntryType.CONF_CHANGE,
                          ConfChange(ConfChangeType.ADD_NODE, m.id, m.context()).encode())
                    for i, m in enumerate(ordered)]
            wal.append(boot, hard_state=HardState(0, 0, len(boot)))
            if restored:
                wal.save_snapshot(SnapshotMarker(index=len(boot), term=0, voters=[m.id for m in ordered]))
        wal.sync()
    finally:
        wal.close()


__all__ = ["cluster_ids", "create_member_wal"]
