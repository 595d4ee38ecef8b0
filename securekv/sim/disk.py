"""A simulated member's disk: its WAL and its backend, which survive crashes — partly.

The WAL behaves like ``securekv/storage/wal.py``: ``append`` buffers records (each entry, then
the hard state), ``sync`` makes everything appended durable, ``save_snapshot`` writes a marker
and syncs. A crash keeps what was synced plus a random *prefix* of what was not (the OS wrote
some pages back; the WAL's checksums cut a torn record off): fsyncs lost on crash and torn
writes. The durable image is a ``MemoryStorage`` — what a restart reads, and what the safety
monitor inspects as the node's persisted log.

The backend behaves like ``securekv/storage/backend.py``'s sqlite file at the level the server
uses it: atomic ``commit(WriteBatch)``, the readers a restart needs, a copy for a snapshot and
a restore from one.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from securekv.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot, SnapshotMetadata
from securekv.storage.backend import CONSISTENT_INDEX, Lease, Revision, WriteBatch
from securekv.testing.raft_invariants import SafetyMonitor


@attrs.frozen
class Marker:
    """A WAL snapshot marker (``securekv.storage.SnapshotMarker``'s fields)."""

    index: int
    term: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]


@attrs.frozen
class WalImage:
    """What ``WAL.open`` returns (``ReadResult``'s fields ``RaftStorage.from_wal`` reads)."""

    snapshot: Marker | None
    entries: list[Entry]
    hard_state: HardState


class SimWAL:
    def __init__(self, node: int, log: MemoryStorage, monitor: SafetyMonitor) -> None:
        self.node = node
        self.log = log  # the durable image
        self.monitor = monitor
        self._pending: list[Entry | HardState] = []
        self.synced_records = 0
        self.lost_records = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, entries: tuple[Entry, ...], hard_state: HardState | None) -> None:
        self._pending.extend(entries)
        if hard_state is not None:
            self._pending.append(hard_state)

    def sync(self) -> None:
        records, self._pending = self._pending, []
        self._write(records)

    def crash(self, rng: random.Random) -> tuple[int, int]:
        """Power loss: a random prefix of the unsynced records reached the disk. Returns
        (kept, lost)."""
        records, self._pending = self._pending, []
        keep = rng.randint(0, len(records)) if records else 0
        self._write(records[:keep])
        self.lost_records += len(records) - keep
        return keep, len(records) - keep

    def save_snapshot(self, marker: Marker) -> None:
        """The backend is durable at ``marker.index``: the log starts after it from now on."""
        self.sync()
        log = self.log
        cs = ConfState(voters=marker.voters, learners=marker.learners)
        if log.first_index() - 1 >= marker.index:
            return
        if marker.index <= log.last_index() and log.term(marker.index) == marker.term:
            log.create_snapshot(marker.index, cs, b"")
            log.compact(marker.index)
        else:  # a snapshot received from the leader, beyond (or conflicting with) this log
            log.apply_snapshot(Snapshot(SnapshotMetadata(marker.index, marker.term, cs)))
        self.monitor.observe_snapshot(self.node, marker.index, marker.term)

    def image(self) -> WalImage:
        log = self.log
        meta = log.snapshot_metadata()
        marker = Marker(meta.index, meta.term, tuple(meta.conf_state.voters), tuple(meta.conf_state.learners))
        first, last = log.first_index(), log.last_index()
        entries = list(log.entries(first, last + 1)) if last >= first else []
        return WalImage(marker, entries, log.hard_state)

    def _write(self, records: list[Entry | HardState]) -> None:
        if not records:
            return
        self.synced_records += len(records)
        run: list[Entry] = []
        for rec in records:
            if isinstance(rec, Entry):
                run.append(rec)
                continue
            self._append(run)
            run = []
            self.log.set_hard_state(rec)
            self.monitor.observe_hard_state(self.node, rec.commit, self.log)
        self._append(run)

    def _append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.monitor.before_append(self.node, self.log, entries)
        self.log.append(entries)
        self.monitor.after_append(self.node, self.log, entries)


class SimBackend:
    """The sqlite backend's tables in memory; every commit is atomic and durable."""

    def __init__(self) -> None:
        self.revisions: dict[tuple[int, int], Revision] = {}
        self.leases: dict[int, Lease] = {}
        self.items: dict[tuple[str, bytes], bytes] = {}
        self.meta: dict[str, Any] = {}
        self.commits = 0

    def commit(self, batch: WriteBatch) -> None:
        for main_sub in batch.deletes:
            self.revisions.pop(tuple(main_sub), None)  # type: ignore[arg-type]
        for r in batch.puts:
            self.revisions[(r.main, r.sub)] = r
        for lease_id in batch.lease_deletes:
            self.leases.pop(lease_id, None)
        for lease in batch.lease_puts:
            self.leases[lease.id] = lease
        for bucket, key in batch.item_deletes:
            self.items.pop((bucket, bytes(key)), None)
        for bucket, key, value in batch.item_puts:
            self.items[(bucket, bytes(key))] = bytes(value)
        self.meta.update(batch.meta)
        if batch.consistent_index is not None:
            self.meta[CONSISTENT_INDEX] = batch.consistent_index
        self.commits += 1

    def commit_all(self, batches: Sequence[WriteBatch]) -> None:
        """A run of batches in order, as one transaction (``Backend.commit_all``): in memory
        nothing can fail half way, so applying them one by one is that transaction."""
        for batch in batches:
            self.commit(batch)

    # -- what a restart reads ----------------------------------------------------------------
    def iter_revisions(self, min_main: int = 0) -> Iterator[Revision]:
        for key in sorted(self.revisions):
            if key[0] >= min_main:
                yield self.revisions[key]

    def iter_leases(self) -> Iterator[Lease]:
        for lease_id in sorted(self.leases):
            yield self.leases[lease_id]

    def iter_items(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        for (b, key) in sorted(k for k in self.items if k[0] == bucket):
            yield key, self.items[(b, key)]

    def get_meta(self, name: str, default: Any = None) -> Any:
        return self.meta.get(name, default)

    def consistent_index(self) -> int:
        return int(self.meta.get(CONSISTENT_INDEX, 0))

    # -- snapshots ---------------------------------------------------------------------------
    def snapshot_bytes(self) -> bytes:
        """A consistent copy (what the leader streams to a lagging follower)."""
        return pickle.dumps((sorted(self.revisions.items()), sorted(self.leases.items()),
                             sorted(self.items.items()), sorted(self.meta.items())), protocol=4)

    @classmethod
    def restore(cls, data: bytes) -> SimBackend:
        backend = cls()
        revisions, leases, items, meta = pickle.loads(data)
        backend.revisions = dict(revisions)
        backend.leases = dict(leases)
        backend.items = dict(items)
        backend.meta = dict(meta)
        return backend


class SimDisk:
    """One member's data dir: WAL and backend."""

    def __init__(self, node: int, log: MemoryStorage, monitor: SafetyMonitor) -> None:
        self.wal = SimWAL(node, log, monitor)
        self.backend = SimBackend()

    @property
    def log(self) -> MemoryStorage:
        return self.wal.log
