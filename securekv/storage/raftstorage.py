"""Raft's Storage protocol over what the WAL holds (etcd's MemoryStorage-backed-by-WAL shape).

The WAL is the durable copy; this in-memory mirror is what the Raft core reads. The node keeps
both in step while handling a Ready: it writes entries + hard state (+ snapshot marker) to the
WAL with one fsync, then mirrors them here. At start-up the mirror is rebuilt from the WAL's
ReadResult (the entries after the last snapshot marker, the last hard state).

Snapshot *data* (a copy of the sqlite backend) is produced on demand by the node for a lagging
follower: :meth:`snapshot` returns the cached copy, or raises SnapshotTemporarilyUnavailable and
asks the node (``request_snapshot``) to build one off the trio thread — the core retries later.
"""

from __future__ import annotations

from typing import Any, Callable

from securekv.raft.errors import SnapshotTemporarilyUnavailable
from securekv.raft.storage import MemoryStorage
from securekv.raft.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata


class RaftStorage(MemoryStorage):
    """MemoryStorage mirror of the WAL, plus lazily built snapshot data for followers."""

    def __init__(self, conf_state: ConfState | None = None) -> None:
        super().__init__(conf_state)
        self.request_snapshot: Callable[[], None] | None = None
        self.cached: Snapshot | None = None

    @classmethod
    def from_wal(cls, result: Any, default_conf: ConfState) -> RaftStorage:
        """Rebuild from ``WAL.open``'s ReadResult.

        A marker without a configuration (a log written before Raft was wired in) stands for
        ``default_conf``. The commit index never exceeds the last entry (a marker beyond the
        saved commit is etcd's ValidSnapshotEntries case: the commit is raised to the marker,
        whose data the backend already holds because the marker is written after it).
        """
        marker = result.snapshot
        conf = default_conf
        if marker is not None and (marker.voters or marker.learners):
            conf = ConfState(voters=tuple(marker.voters), learners=tuple(marker.learners))
        st = cls(conf)
        snap_index = marker.index if marker is not None else 0
        if marker is not None and marker.index > 0:
            st._snapshot = Snapshot(SnapshotMetadata(marker.index, marker.term, conf))
            st._ents = [Entry(marker.term, marker.index)]
        st._ents.extend(Entry(e.term, e.index, EntryType(e.type), bytes(e.data))
                        for e in result.entries if e.index > snap_index)
        hs = result.hard_state
        commit = min(max(hs.commit, snap_index), st.last_index())
        st.hard_state = HardState(hs.term, hs.vote, commit)
        return st

    def snapshot(self) -> Snapshot:
        meta = self._snapshot.metadata
        cached = self.cached
        if cached is not None and cached.metadata.index >= meta.index:
            return cached
        if self.request_snapshot is not None:
            self.request_snapshot()
        raise SnapshotTemporarilyUnavailable()

    def marker_conf_state(self) -> ConfState:
        return self.snapshot_metadata().conf_state

    def set_marker(self, index: int, term: int, conf_state: ConfState) -> None:
        """A snapshot (the backend at ``index``) became durable: remember its metadata."""
        if index > self._snapshot.metadata.index:
            self._snapshot = Snapshot(SnapshotMetadata(index, term, conf_state))

    def compact_to(self, index: int) -> None:
        """Drop entries before ``index`` if still held (keeps the log usable for catch-up)."""
        if self._ents[0].index < index <= self.last_index():
            self.compact(index)
