"""Raft's safety properties, checked incrementally from what a driver observes.

The driver (the simulator) reports every durable write, every leader it sees and every entry it
applies; the monitor raises :class:`InvariantViolation` the moment one of the properties of the
Raft paper (Figure 3) fails, so a failing seed stops at the step that broke it.

The monitor only needs read access to each node's *persisted* log (the simulated disk), which
is the state that survives crashes and therefore the one the properties are about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs

ELECTION_SAFETY = "Election Safety"
LOG_MATCHING = "Log Matching"
LEADER_COMPLETENESS = "Leader Completeness"
STATE_MACHINE_SAFETY = "State Machine Safety"
COMMITTED_ENTRY_LOST = "Committed Entry Lost"
APPLY_ORDER = "Apply Order"
COMMIT_DURABILITY = "Commit Durability"


class InvariantViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class EntryLike(Protocol):
    @property
    def term(self) -> int: ...

    @property
    def index(self) -> int: ...

    @property
    def data(self) -> bytes: ...


class LogView(Protocol):
    """The read side of ``securekv.raft.MemoryStorage`` (the persisted log of one node)."""

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int: ...

    def entries(self, lo: int, hi: int) -> Sequence[EntryLike]: ...


@attrs.frozen(slots=True)
class EntryId:
    """What identifies an entry's content: term plus payload (type is part of the payload)."""

    term: int
    kind: int
    data: bytes

    @classmethod
    def of(cls, entry: EntryLike) -> EntryId:
        return cls(entry.term, int(getattr(entry, "type", 0)), bytes(entry.data))


def _snapshot_index(log: LogView) -> int:
    return log.first_index() - 1


class SafetyMonitor:
    """Checks Election Safety, Log Matching, Leader Completeness, State Machine Safety and that
    no node ever loses an entry it durably knew to be committed."""

    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.committed: dict[int, EntryId] = {}  # index -> the entry committed there
        self.max_committed = 0
        # (index, term) -> (previous entry's term, content): Log Matching by induction.
        self._seen: dict[tuple[int, int], tuple[int, EntryId]] = {}
        self._durable_commit: dict[int, int] = {}
        self._applied: dict[int, int] = {}
        self.elections = 0
        self.membership_changed = False

    # -- leaders ---------------------------------------------------------------------------
    def observe_leader(self, node: int, term: int, log: LogView) -> None:
        """``node`` acts as leader of ``term``; ``log`` is its persisted log (which, after the
        Ready that announced the role, holds every entry the new leader has)."""
        other = self.leaders.get(term)
        if other is not None and other != node:
            raise InvariantViolation(
                ELECTION_SAFETY, f"term {term} has two leaders: n{other} and n{node}")
        if other is None:
            self.leaders[term] = node
            self.elections += 1
            self._check_complete(node, term, log)

    def _check_complete(self, node: int, term: int, log: LogView) -> None:
        snap = _snapshot_index(log)
        last = log.last_index()
        for index in range(max(snap, 1), self.max_committed + 1):
            want = self.committed.get(index)
            if want is None:
                continue
            if index > last:
                raise InvariantViolation(
                    LEADER_COMPLETENESS,
                    f"n{node} leads term {term} but its log ends at {last}, before committed "
                    f"entry {index} (term {want.term})")
            have = log.term(index)
            if have != want.term:
                raise InvariantViolation(
                    LEADER_COMPLETENESS,
                    f"n{node} leads term {term} with entry {index} of term {have}, but the "
                    f"committed entry {index} has term {want.term}")

    # -- persistence -----------------------------------------------------------------------
    def before_append(self, node: int, log: LogView, entries: list[EntryLike]) -> None:
        """About to persist ``entries`` (which may overwrite a suffix) into ``log``."""
        commit = self._durable_commit.get(node, 0)
        first, last = log.first_index(), log.last_index()
        for e in entries:
            if e.index > commit or e.index > last:
                break
            if e.index >= first and log.term(e.index) != e.term:
                raise InvariantViolation(
                    COMMITTED_ENTRY_LOST,
                    f"n{node} overwrites entry {e.index} (term {log.term(e.index)}) with term "
                    f"{e.term} although its persisted commit index is {commit}")

    def after_append(self, node: int, log: LogView, entries: list[EntryLike]) -> None:
        """``entries`` are now persisted in ``log``: record them for Log Matching."""
        for e in entries:
            if int(getattr(e, "type", 0)) != 0:
                self.membership_changed = True
            if e.index < log.first_index():
                continue
            prev = e.index - 1
            prev_term = log.term(prev) if prev >= log.first_index() - 1 else -1
            fact = (prev_term, EntryId.of(e))
            known = self._seen.setdefault((e.index, e.term), fact)
            if known != fact:
                what = "previous term" if known[0] != fact[0] else "content"
                raise InvariantViolation(
                    LOG_MATCHING,
                    f"two logs hold entry {e.index} of term {e.term} with different {what}: "
                    f"{known} vs {fact} (n{node})")

    def observe_snapshot(self, node: int, index: int, term: int) -> None:
        """``node`` persisted a snapshot covering the log up to ``index``."""
        want = self.committed.get(index)
        if want is not None and want.term != term:
            raise InvariantViolation(
                STATE_MACHINE_SAFETY,
                f"n{node} installs a snapshot at {index} of term {term}, but the committed "
                f"entry there has term {want.term}")
        self._applied[node] = index

    def observe_hard_state(self, node: int, commit: int, log: LogView) -> None:
        """``node`` persisted a hard state with ``commit``: entries up to it are committed."""
        before = self._durable_commit.get(node, 0)
        if commit < before:
            raise InvariantViolation(
                COMMITTED_ENTRY_LOST,
                f"n{node} persisted commit index {commit} after having persisted {before}")
        self._durable_commit[node] = commit
        lo = max(before + 1, log.first_index())
        hi = min(commit, log.last_index())
        if commit > log.last_index():
            raise InvariantViolation(
                COMMITTED_ENTRY_LOST,
                f"n{node} persisted commit index {commit} beyond its last entry {log.last_index()}")
        entries = log.entries(lo, hi + 1) if lo <= hi else []
        for e in entries:
            self._record_committed(node, e, STATE_MACHINE_SAFETY)

    def restarted(self, node: int, applied: int, commit: int) -> None:
        """``node`` (re)started from its persisted state; its volatile state machine was
        rebuilt from its latest snapshot, so applying resumes after ``applied``."""
        self._applied[node] = applied
        if commit < self._durable_commit.get(node, 0):
            raise InvariantViolation(
                COMMITTED_ENTRY_LOST,
                f"n{node} restarted with commit {commit} < persisted {self._durable_commit[node]}")

    # -- applying --------------------------------------------------------------------------
    def observe_applied(self, node: int, entry: EntryLike) -> None:
        last = self._applied.get(node, 0)
        if entry.index != last + 1:
            raise InvariantViolation(
                APPLY_ORDER, f"n{node} applies entry {entry.index} right after {last}")
        self._applied[node] = entry.index
        self._record_committed(node, entry, STATE_MACHINE_SAFETY)

    def _record_committed(self, node: int, entry: EntryLike, invariant: str) -> None:
        eid = EntryId.of(entry)
        known = self.committed.setdefault(entry.index, eid)
        if known != eid:
            raise InvariantViolation(
                invariant,
                f"n{node} commits entry {entry.index} as term {eid.term} {eid.data[:60]!r}, but "
                f"term {known.term} {known.data[:60]!r} was committed there before")
        if entry.index > self.max_committed:
            self.max_committed = entry.index

    # -- the inductive core of Leader Completeness --------------------------------------------
    def check_electability(self, logs: Mapping[int, LogView], voters: Sequence[int]) -> None:
        """No voter lacking the latest committed entry could win an election right now.

        In Raft a committed entry sits, durably, on a majority whose last log term is at least
        the term that committed it, so the up-to-date check makes every node without it
        unelectable. Checking that directly catches an unsafe commit the moment it happens,
        without waiting for the unlucky election that would overwrite it (Raft Figure 8).
        Only sound for a fixed configuration: callers stop once membership changed.
        """
        index = self.max_committed
        if index == 0 or self.membership_changed:
            return
        want = self.committed[index]
        last = {v: _last(logs[v]) for v in voters if v in logs}
        for u in voters:
            log = logs.get(u)
            if log is None or _holds(log, index, want.term):
                continue
            grant = sorted(v for v in last if last[u] >= last[v])
            if 2 * len(grant) > len(voters):
                raise InvariantViolation(
                    COMMIT_DURABILITY,
                    f"n{u} (log ends {last[u][1]}@t{last[u][0]}) lacks committed entry "
                    f"{index}@t{want.term} yet could win an election: votes from "
                    f"{', '.join(f'n{v}' for v in grant)} of voters {list(voters)}")


def _last(log: LogView) -> tuple[int, int]:
    li = log.last_index()
    return log.term(li), li


def _holds(log: LogView, index: int, term: int) -> bool:
    if index <= _snapshot_index(log):
        return True  # compacted into a snapshot, which only ever covers committed entries
    return index <= log.last_index() and log.term(index) == term
