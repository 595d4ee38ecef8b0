"""The Raft log: stable entries (in Storage) followed by unstable ones (not yet persisted)."""

from __future__ import annotations

from typing import Sequence

from .errors import CompactedError, RaftError, StorageError, UnavailableError
from .storage import Storage, limit_size
from .types import Entry, Snapshot


class Unstable:
    """Entries and at most one snapshot the application has not persisted yet.

    ``entries[i]`` has index ``offset + i``; ``offset`` may be below the storage's last index
    when a leader's append overwrote a stable suffix.
    """

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        if self.snapshot is not None:
            return self.snapshot.metadata.index + 1
        return None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.metadata.index
        return None

    def maybe_term(self, i: int) -> int | None:
        if i < self.offset:
            if self.snapshot is not None and self.snapshot.metadata.index == i:
                return self.snapshot.metadata.term
            return None
        last = self.maybe_last_index()
        if last is None or i > last:
            return None
        return self.entries[i - self.offset].term

    def stable_to(self, i: int, t: int) -> None:
        gt = self.maybe_term(i)
        if gt is None:
            return
        # Only if the entry is still the one that was persisted (not overwritten since).
        if gt == t and i >= self.offset:
            del self.entries[:i + 1 - self.offset]
            self.offset = i + 1

    def stable_snap_to(self, i: int) -> None:
        if self.snapshot is not None and self.snapshot.metadata.index == i:
            self.snapshot = None

    def restore(self, s: Snapshot) -> None:
        self.offset = s.metadata.index + 1
        self.entries = []
        self.snapshot = s

    def truncate_and_append(self, ents: Sequence[Entry]) -> None:
        after = ents[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(ents)
        elif after <= self.offset:
            self.offset = after
            self.entries = list(ents)
        else:
            del self.entries[after - self.offset:]
            self.entries.extend(ents)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset:hi - self.offset]


class RaftLog:
    """Committed/applied bookkeeping over storage + unstable."""

    def __init__(self, storage: Storage, max_next_ents_size: int | None = None) -> None:
        self.storage = storage
        self.max_next_ents_size = max_next_ents_size
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1

    def __repr__(self) -> str:
        return (f"RaftLog(committed={self.committed}, applied={self.applied}, "
                f"unstable.offset={self.unstable.offset}, unstable={len(self.unstable.entries)})")

    # -- indexes and terms ---------------------------------------------------------------
    def first_index(self) -> int:
        i = self.unstable.maybe_first_index()
        return i if i is not None else self.storage.first_index()

    def last_index(self) -> int:
        i = self.unstable.maybe_last_index()
        return i if i is not None else self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, i: int) -> int:
        """Term at ``i``; raises CompactedError / UnavailableError outside the log."""
        dummy = self.first_index() - 1
        if i < dummy:
            raise CompactedError()
        if i > self.last_index():
            raise UnavailableError()
        t = self.unstable.maybe_term(i)
        if t is not None:
            return t
        return self.storage.term(i)

    def zero_term_on_err(self, i: int) -> int:
        try:
            return self.term(i)
        except StorageError:
            return 0

    def match_term(self, i: int, t: int) -> bool:
        try:
            return self.term(i) == t
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Whether a candidate whose log ends at (``last_index``, ``term``) may get our vote."""
        lt = self.last_term()
        return term > lt or (term == lt and last_index >= self.last_index())

    # -- appending -----------------------------------------------------------------------
    def maybe_append(
        self, index: int, log_term: int, committed: int, ents: Sequence[Entry]
    ) -> tuple[int, bool]:
        """Follower side of AppendEntries: (last new index, accepted)."""
        if not self.match_term(index, log_term):
            return 0, False
        last_new = index + len(ents)
        ci = self.find_conflict(ents)
        if ci:
            if ci <= self.committed:
                raise RaftError(
                    f"entry {ci} conflicts with committed entry [committed({self.committed})]")
            self.append(ents[ci - (index + 1):])
        self.commit_to(min(committed, last_new))
        return last_new, True

    def append(self, ents: Sequence[Entry]) -> int:
        if not ents:
            return self.last_index()
        after = ents[0].index - 1
        if after < self.committed:
            raise RaftError(f"after({after}) is out of range [committed({self.committed})]")
        self.unstable.truncate_and_append(ents)
        return self.last_index()

    def find_conflict(self, ents: Sequence[Entry]) -> int:
        """First index whose entry differs from ours (or is new); 0 if all already present."""
        for e in ents:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``(i, term(i))`` with ``i <= index`` and ``term(i) <= term``: the fast
        backtracking hint that skips a whole conflicting term per round trip."""
        while index > 0:
            try:
                our = self.term(index)
            except StorageError:
                return index, 0
            if our <= term:
                return index, our
            index -= 1
        return 0, 0

    # -- commit / apply ------------------------------------------------------------------
    def maybe_commit(self, max_index: int, term: int) -> bool:
        """Advance the commit index to ``max_index`` — but only if that entry is from ``term``,
        the leader's current term (Raft §5.4.2; counting replicas of an older-term entry is
        the Figure 8 bug)."""
        if max_index > self.committed and self.zero_term_on_err(max_index) == term:
            self.commit_to(max_index)
            return True
        return False

    def commit_to(self, to_commit: int) -> None:
        if self.committed < to_commit:
            if self.last_index() < to_commit:
                raise RaftError(
                    f"tocommit({to_commit}) is out of range [lastIndex({self.last_index()})]")
            self.committed = to_commit

    def applied_to(self, i: int) -> None:
        if i == 0:
            return
        if self.committed < i or i < self.applied:
            raise RaftError(
                f"applied({i}) is out of range [prevApplied({self.applied}), "
                f"committed({self.committed})]")
        self.applied = i

    def has_next_ents(self) -> bool:
        return self.committed + 1 > max(self.applied + 1, self.first_index())

    def next_ents(self) -> list[Entry]:
        off = max(self.applied + 1, self.first_index())
        if self.committed + 1 > off:
            return self.slice(off, self.committed + 1, self.max_next_ents_size)
        return []

    # -- reading -------------------------------------------------------------------------
    def entries(self, i: int, max_size: int | None = None) -> list[Entry]:
        if i > self.last_index():
            return []
        return self.slice(i, self.last_index() + 1, max_size)

    def all_entries(self) -> list[Entry]:
        return self.entries(self.first_index())

    def slice(self, lo: int, hi: int, max_size: int | None = None) -> list[Entry]:
        if lo > hi:
            raise RaftError(f"invalid slice {lo} > {hi}")
        if lo < self.first_index():
            raise CompactedError()
        if hi > self.last_index() + 1:
            raise RaftError(f"slice[{lo},{hi}) out of bound [{self.first_index()},{self.last_index()}]")
        if lo == hi:
            return []
        ents: list[Entry] = []
        off = self.unstable.offset
        if lo < off:
            stored = self.storage.entries(lo, min(hi, off), max_size)
            if len(stored) < min(hi, off) - lo:
                return stored  # size-limited, or storage has fewer entries
            ents = stored
        if hi > off:
            ents = ents + self.unstable.slice(max(lo, off), hi)
        return limit_size(ents, max_size)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def restore(self, s: Snapshot) -> None:
        self.committed = s.metadata.index
        self.unstable.restore(s)

    def stable_to(self, i: int, t: int) -> None:
        self.unstable.stable_to(i, t)

    def stable_snap_to(self, i: int) -> None:
        self.unstable.stable_snap_to(i)
