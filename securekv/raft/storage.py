"""The Storage protocol the core reads its stable log from, and an in-memory implementation.

The core only ever *reads* storage; the application writes to it while handling a Ready
(snapshot, entries, hard state), which is what makes "persisted" a decision of the application.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .errors import CompactedError, SnapshotOutOfDateError, UnavailableError
from .types import (
    ENTRY_OVERHEAD,
    EMPTY_SNAPSHOT,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    SnapshotMetadata,
)


class Storage(Protocol):
    """Stable log access. Indexes are 1-based; index ``first_index() - 1`` is the snapshot's."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The saved hard state and the configuration as of the last applied conf change."""
        ...

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``, stopping once ``max_size`` bytes (``Entry.size``) would be
        exceeded but always at least one. Raises CompactedError / UnavailableError."""
        ...

    def term(self, index: int) -> int:
        """Term of entry ``index``, valid for ``first_index()-1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (may raise SnapshotTemporarilyUnavailable)."""
        ...


def bootstrap_entries(voters: Sequence[int], learners: Sequence[int] = ()) -> list[Entry]:
    """The term-0 conf-change entries describing an initial configuration (see with_peers)."""
    changes = [ConfChange(ConfChangeType.ADD_NODE, v) for v in sorted(set(voters))]
    changes += [ConfChange(ConfChangeType.ADD_LEARNER, v) for v in sorted(set(learners))]
    return [Entry(0, i + 1, EntryType.CONF_CHANGE, cc.encode()) for i, cc in enumerate(changes)]


def limit_size(entries: Sequence[Entry], max_size: int | None) -> list[Entry]:
    """Longest prefix within ``max_size`` bytes, but never empty if ``entries`` is not."""
    if max_size is None or len(entries) <= 1:
        return list(entries)
    total = 0
    n = 0
    for e in entries:
        total += len(e.data) + ENTRY_OVERHEAD  # Entry.size, inlined: this is a hot loop
        if total > max_size and n:
            break
        n += 1
    return list(entries[:n])


class MemoryStorage:
    """In-memory :class:`Storage` for tests, the simulator and benchmarks.

    ``_ents[0]`` is a dummy entry carrying the snapshot's index and term, so ``term()`` works
    at the compaction boundary without special cases.
    """

    def __init__(self, conf_state: ConfState | None = None) -> None:
        self.hard_state = HardState()
        self._snapshot = EMPTY_SNAPSHOT
        if conf_state is not None:
            self._snapshot = Snapshot(SnapshotMetadata(0, 0, conf_state))
        self._ents: list[Entry] = [Entry(0, 0)]

    @classmethod
    def with_peers(cls, voters: Sequence[int], learners: Sequence[int] = ()) -> MemoryStorage:
        """Storage of a founding member of a new cluster.

        The configuration is both the zero snapshot's ``ConfState`` (so the node can act at
        once) and a prefix of term-0 ``CONF_CHANGE`` entries, identical on every founder, so
        that a member added later with an empty log rebuilds the full configuration by
        replaying the leader's log (re-applying them on a founder changes nothing).
        """
        st = cls(ConfState(voters=voters, learners=learners))
        st._ents.extend(bootstrap_entries(voters, learners))
        return st

    # -- Storage protocol ------------------------------------------------------------------
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.metadata.conf_state

    def entries(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError()
        if hi > self.last_index() + 1:
            raise UnavailableError(
                f"entries' hi({hi}) is out of bound lastindex({self.last_index()})"
            )
        return limit_size(self._ents[lo - offset:hi - offset], max_size)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError()
        if index - offset >= len(self._ents):
            raise UnavailableError()
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def snapshot_metadata(self) -> SnapshotMetadata:
        """Index, term and configuration of the current snapshot (never fetches its data)."""
        return self._snapshot.metadata

    # -- writers (called by the application while handling a Ready) ------------------------
    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (a follower installing a leader's snapshot)."""
        if snapshot.metadata.index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError()
        self._snapshot = snapshot
        self._ents = [Entry(snapshot.metadata.term, snapshot.metadata.index)]

    def create_snapshot(
        self, index: int, conf_state: ConfState | None, data: bytes
    ) -> Snapshot:
        """Record a snapshot of the applied state at ``index`` (call :meth:`compact` after)."""
        if index <= self._snapshot.metadata.index:
            raise SnapshotOutOfDateError()
        if index > self.last_index():
            raise UnavailableError(f"snapshot {index} is out of bound lastindex({self.last_index()})")
        offset = self._ents[0].index
        cs = conf_state if conf_state is not None else self._snapshot.metadata.conf_state
        self._snapshot = Snapshot(SnapshotMetadata(index, self._ents[index - offset].term, cs), data)
        return self._snapshot

    def compact(self, compact_index: int) -> None:
        """Discard entries before ``compact_index``; it becomes the dummy entry."""
        offset = self._ents[0].index
        if compact_index <= offset:
            raise CompactedError()
        if compact_index > self.last_index():
            raise UnavailableError(
                f"compact {compact_index} is out of bound lastindex({self.last_index()})"
            )
        i = compact_index - offset
        self._ents = [Entry(self._ents[i].term, self._ents[i].index)] + self._ents[i + 1:]

    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``, truncating any conflicting suffix first."""
        if not entries:
            return
        first = self.first_index()
        last = entries[-1].index
        if last < first:
            return  # all already compacted
        if first > entries[0].index:
            entries = entries[first - entries[0].index:]
        offset = entries[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise UnavailableError(
                f"missing log entry [last: {self.last_index()}, append at: {entries[0].index}]"
            )
        del self._ents[offset:]
        self._ents.extend(entries)
