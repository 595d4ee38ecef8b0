"""Each safety property of the monitor fires on a minimal history that breaks it, and stays
quiet on the legal variant of the same history."""

from __future__ import annotations

import pytest

from securekv.raft import ConfState, Entry, HardState, MemoryStorage, Snapshot, SnapshotMetadata
from securekv.testing.raft_invariants import (
    APPLY_ORDER,
    COMMITTED_ENTRY_LOST,
    ELECTION_SAFETY,
    LEADER_COMPLETENESS,
    LOG_MATCHING,
    STATE_MACHINE_SAFETY,
    InvariantViolation,
    SafetyMonitor,
)


def log_of(*terms: int) -> MemoryStorage:
    st = MemoryStorage.with_peers([1, 2, 3])
    st.append([Entry(t, i, data=f"{i}@{t}".encode()) for i, t in enumerate(terms, start=1)])
    return st


def persist(mon: SafetyMonitor, node: int, st: MemoryStorage, entries: list[Entry]) -> None:
    mon.before_append(node, st, entries)
    st.append(entries)
    mon.after_append(node, st, entries)


def commit(mon: SafetyMonitor, node: int, st: MemoryStorage, index: int) -> None:
    st.set_hard_state(HardState(term=st.term(st.last_index()), commit=index))
    mon.observe_hard_state(node, index, st)


def violated(invariant: str):
    return pytest.raises(InvariantViolation, match=f"^{invariant}:")


def test_election_safety() -> None:
    mon = SafetyMonitor()
    mon.observe_leader(1, 2, log_of(1, 2))
    mon.observe_leader(1, 2, log_of(1, 2))  # the same leader seen again is fine
    mon.observe_leader(2, 3, log_of(1, 2))
    assert mon.elections == 2
    with violated(ELECTION_SAFETY):
        mon.observe_leader(3, 2, log_of(1, 2))


def test_log_matching_content_and_prefix() -> None:
    mon = SafetyMonitor()
    a, b = MemoryStorage.with_peers([1, 2]), MemoryStorage.with_peers([1, 2])
    persist(mon, 1, a, [Entry(1, 1, data=b"x"), Entry(2, 2, data=b"y")])
    persist(mon, 2, b, [Entry(1, 1, data=b"x"), Entry(2, 2, data=b"y")])  # identical: fine
    c = MemoryStorage.with_peers([1, 2])
    with violated(LOG_MATCHING):
        persist(mon, 3, c, [Entry(1, 1, data=b"x"), Entry(2, 2, data=b"DIFFERENT")])
    d = MemoryStorage.with_peers([1, 2])
    with violated(LOG_MATCHING):  # same (index, term) but a different entry before it
        persist(mon, 4, d, [Entry(2, 1, data=b"x"), Entry(2, 2, data=b"y")])


def test_leader_completeness() -> None:
    mon = SafetyMonitor()
    st = log_of(1, 1, 2)
    commit(mon, 1, st, 3)
    mon.observe_leader(1, 3, log_of(1, 1, 2, 3))  # has everything committed
    with violated(LEADER_COMPLETENESS):  # too short
        mon.observe_leader(2, 4, log_of(1, 1))
    with violated(LEADER_COMPLETENESS):  # same length, entry 3 of another term (Figure 8)
        mon.observe_leader(3, 5, log_of(1, 1, 3, 5))


def test_leader_completeness_accepts_compacted_prefix() -> None:
    mon = SafetyMonitor()
    st = log_of(1, 1, 2)
    commit(mon, 1, st, 3)
    leader = log_of(1, 1, 2, 4)
    leader.create_snapshot(3, ConfState(voters=[1, 2, 3]), b"")
    leader.compact(3)
    mon.observe_leader(2, 4, leader)


def test_state_machine_safety() -> None:
    mon = SafetyMonitor()
    mon.observe_applied(1, Entry(1, 1, data=b"a"))
    mon.observe_applied(2, Entry(1, 1, data=b"a"))
    with violated(STATE_MACHINE_SAFETY):
        mon.observe_applied(3, Entry(2, 1, data=b"b"))


def test_state_machine_safety_via_durable_commit() -> None:
    mon = SafetyMonitor()
    commit(mon, 1, log_of(1, 1), 2)
    with violated(STATE_MACHINE_SAFETY):
        commit(mon, 2, log_of(1, 2), 2)


def test_snapshot_must_agree_with_committed_entry() -> None:
    mon = SafetyMonitor()
    commit(mon, 1, log_of(1, 1), 2)
    mon.observe_snapshot(2, 2, 1)
    with violated(STATE_MACHINE_SAFETY):
        mon.observe_snapshot(3, 2, 7)


def test_committed_entry_lost_overwrite() -> None:
    mon = SafetyMonitor()
    st = log_of(1, 1, 1)
    commit(mon, 1, st, 2)
    persist(mon, 1, st, [Entry(2, 3)])  # uncommitted suffix may be replaced
    with violated(COMMITTED_ENTRY_LOST):
        persist(mon, 1, st, [Entry(3, 2)])


def test_committed_entry_lost_commit_regresses() -> None:
    mon = SafetyMonitor()
    st = log_of(1, 1, 1)
    commit(mon, 1, st, 3)
    with violated(COMMITTED_ENTRY_LOST):
        commit(mon, 1, st, 2)
    with violated(COMMITTED_ENTRY_LOST):
        mon.restarted(1, applied=0, commit=1)


def test_commit_beyond_log() -> None:
    mon = SafetyMonitor()
    with violated(COMMITTED_ENTRY_LOST):
        commit(mon, 1, log_of(1), 2)


def test_apply_order() -> None:
    mon = SafetyMonitor()
    mon.observe_applied(1, Entry(1, 1))
    with violated(APPLY_ORDER):
        mon.observe_applied(1, Entry(1, 3))
    mon2 = SafetyMonitor()
    mon2.observe_snapshot(1, 5, 1)  # a snapshot moves the apply position
    mon2.observe_applied(1, Entry(1, 6))
    mon2.restarted(1, applied=3, commit=0)
    mon2.observe_applied(1, Entry(1, 4))


def test_snapshot_storage_helpers_match_raft_types() -> None:
    """The monitor reads MemoryStorage through its protocol only; a snapshot-installed log
    (dummy entry at the snapshot index) is handled at the boundary."""
    mon = SafetyMonitor()
    st = MemoryStorage()
    st.apply_snapshot(Snapshot(SnapshotMetadata(10, 3, ConfState(voters=[1])), b""))
    persist(mon, 1, st, [Entry(3, 11, data=b"a")])
    st.set_hard_state(HardState(term=3, commit=11))
    mon.observe_hard_state(1, 11, st)
    assert mon.max_committed == 11
