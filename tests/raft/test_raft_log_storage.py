"""Building blocks: MemoryStorage, the RaftLog, quorum maths, progress, conf changes."""

from __future__ import annotations

import pytest

from securekv.raft import (
    CompactedError,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    MemoryStorage,
    SnapshotOutOfDateError,
    UnavailableError,
)
from securekv.raft.confchange import apply_change
from securekv.raft.errors import RaftError
from securekv.raft.log import RaftLog
from securekv.raft.progress import Inflights, Progress, ProgressState
from securekv.raft.quorum import VoteResult, committed_index, vote_result
from securekv.raft.storage import limit_size
from securekv.raft.types import ENTRY_OVERHEAD, EntryType


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(t, start + i) for i, t in enumerate(terms)]


def storage_with(*terms: int) -> MemoryStorage:
    st = MemoryStorage()
    st.append(ents(*terms))
    return st


# -- MemoryStorage ----------------------------------------------------------------------------

def compacted_storage() -> MemoryStorage:
    """Entries 3..5 with terms 3,4,5; the dummy entry is index 3."""
    st = MemoryStorage()
    st.append([Entry(1, 1), Entry(2, 2), Entry(3, 3), Entry(4, 4), Entry(5, 5)])
    st.compact(3)
    return st


@pytest.mark.parametrize("index,want", [(2, CompactedError), (3, 3), (4, 4), (5, 5), (6, UnavailableError)])
def test_storage_term(index: int, want: object) -> None:
    st = compacted_storage()
    if isinstance(want, type):
        with pytest.raises(want):
            st.term(index)
    else:
        assert st.term(index) == want


@pytest.mark.parametrize(
    "lo,hi,max_size,want",
    [
        (2, 6, None, CompactedError),
        (3, 4, None, CompactedError),
        (4, 5, None, [4]),
        (4, 6, None, [4, 5]),
        (4, 7, None, UnavailableError),
        (4, 6, 0, [4]),  # always at least one entry
        (4, 6, 2 * ENTRY_OVERHEAD, [4, 5]),
        (4, 6, 2 * ENTRY_OVERHEAD - 1, [4]),
    ],
)
def test_storage_entries(lo: int, hi: int, max_size: int | None, want: object) -> None:
    st = compacted_storage()
    if isinstance(want, type):
        with pytest.raises(want):
            st.entries(lo, hi, max_size)
    else:
        assert [e.index for e in st.entries(lo, hi, max_size)] == want


def test_storage_indexes_and_compact_errors() -> None:
    st = compacted_storage()
    assert (st.first_index(), st.last_index()) == (4, 5)
    with pytest.raises(CompactedError):
        st.compact(3)
    with pytest.raises(UnavailableError):
        st.compact(6)
    st.compact(5)
    assert (st.first_index(), st.last_index(), st.term(5)) == (6, 5, 5)


@pytest.mark.parametrize(
    "append,want",
    [
        ([Entry(3, 3), Entry(4, 4), Entry(5, 5)], [(3, 3), (4, 4), (5, 5)]),
        ([Entry(3, 3), Entry(6, 4), Entry(6, 5)], [(3, 3), (6, 4), (6, 5)]),  # truncate + replace
        ([Entry(3, 3), Entry(4, 4), Entry(5, 5), Entry(5, 6)], [(3, 3), (4, 4), (5, 5), (5, 6)]),
        ([Entry(2, 2), Entry(3, 3), Entry(4, 4)], [(3, 3), (4, 4)]),  # compacted prefix ignored
        ([Entry(5, 4)], [(3, 3), (5, 4)]),
        ([Entry(5, 6)], [(3, 3), (4, 4), (5, 5), (5, 6)]),
    ],
)
def test_storage_append(append: list[Entry], want: list[tuple[int, int]]) -> None:
    st = compacted_storage()
    st.append(append)
    assert [(e.term, e.index) for e in st._ents] == want


def test_storage_append_gap_is_refused() -> None:
    st = compacted_storage()
    with pytest.raises(UnavailableError):
        st.append([Entry(6, 7)])


def test_storage_snapshots() -> None:
    st = compacted_storage()
    cs = ConfState(voters=[1, 2, 3])
    snap = st.create_snapshot(4, cs, b"data")
    assert (snap.metadata.index, snap.metadata.term, snap.data) == (4, 4, b"data")
    with pytest.raises(SnapshotOutOfDateError):
        st.create_snapshot(4, cs, b"again")
    with pytest.raises(UnavailableError):
        st.create_snapshot(9, cs, b"")
    other = MemoryStorage()
    other.apply_snapshot(snap)
    assert (other.first_index(), other.last_index(), other.term(4)) == (5, 4, 4)
    assert other.initial_state()[1] == cs
    with pytest.raises(SnapshotOutOfDateError):
        other.apply_snapshot(snap)


def test_limit_size_table() -> None:
    es = [Entry(1, i, data=b"x" * 10) for i in range(1, 6)]
    per = 10 + ENTRY_OVERHEAD
    assert len(limit_size(es, None)) == 5
    assert len(limit_size(es, 0)) == 1
    assert len(limit_size(es, per * 3)) == 3
    assert len(limit_size(es, per * 3 + per - 1)) == 3
    assert limit_size([], 10) == []


# -- RaftLog ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "new,want_conflict",
    [
        ([], 0),
        (ents(1, 2, 3), 0),
        (ents(2, 3, start=2), 0),
        (ents(3, start=3), 0),
        (ents(1, 2, 3, 4, 4), 4),
        (ents(3, 4, 4, start=3), 4),
        (ents(4, 4, start=1), 1),
        (ents(1, 4, 4, start=2), 2),
        (ents(1, 2, 4, 4), 3),
    ],
)
def test_find_conflict(new: list[Entry], want_conflict: int) -> None:
    log = RaftLog(storage_with(1, 2, 3))
    assert log.find_conflict(new) == want_conflict


@pytest.mark.parametrize(
    "terms,index,term,want",
    [
        # Follower/leader log 1 1 2 2 3 3 (index 1..6).
        ((1, 1, 2, 2, 3, 3), 6, 3, (6, 3)),
        ((1, 1, 2, 2, 3, 3), 6, 2, (4, 2)),  # skips the whole of term 3 in one step
        ((1, 1, 2, 2, 3, 3), 6, 1, (2, 1)),
        ((1, 1, 2, 2, 3, 3), 6, 0, (0, 0)),
        ((1, 1, 2, 2, 3, 3), 3, 5, (3, 2)),
        ((4, 4, 4), 3, 2, (0, 0)),
    ],
)
def test_find_conflict_by_term(terms: tuple[int, ...], index: int, term: int, want: tuple[int, int]) -> None:
    assert RaftLog(storage_with(*terms)).find_conflict_by_term(index, term) == want


def test_find_conflict_by_term_stops_at_compaction() -> None:
    st = storage_with(1, 1, 2, 2, 3, 3)
    st.compact(3)
    assert RaftLog(st).find_conflict_by_term(6, 1) == (2, 0)


@pytest.mark.parametrize(
    "last_index,term,want",
    [(2, 4, True), (3, 4, True), (4, 4, True), (2, 2, False), (3, 3, True), (4, 3, True),
     (2, 3, False), (1, 1, False)],
)
def test_is_up_to_date(last_index: int, term: int, want: bool) -> None:
    assert RaftLog(storage_with(1, 2, 3)).is_up_to_date(last_index, term) is want


@pytest.mark.parametrize(
    "index,log_term,committed,new,want_last,want_ok,want_commit,want_log",
    [
        # Previous entry does not match: rejected, nothing changes.
        (3, 2, 3, ents(4, start=4), 0, False, 1, [1, 2, 3]),
        (4, 4, 3, ents(4, start=5), 0, False, 1, [1, 2, 3]),
        # Plain appends (commit follows the leader but never past the last new entry).
        (3, 3, 3, [], 3, True, 3, [1, 2, 3]),
        (3, 3, 4, [], 3, True, 3, [1, 2, 3]),
        (3, 3, 2, [], 3, True, 2, [1, 2, 3]),
        (3, 3, 5, ents(4, start=4), 4, True, 4, [1, 2, 3, 4]),
        (3, 3, 4, ents(4, 4, start=4), 5, True, 4, [1, 2, 3, 4, 4]),
        # Entries already present are not rewritten.
        (2, 2, 3, ents(3, start=3), 3, True, 3, [1, 2, 3]),
        # A conflicting suffix is replaced.
        (1, 1, 2, ents(4, 4, start=2), 3, True, 2, [1, 4, 4]),
        (2, 2, 3, ents(4, start=3), 3, True, 3, [1, 2, 4]),
    ],
)
def test_maybe_append(index: int, log_term: int, committed: int, new: list[Entry], want_last: int,
                      want_ok: bool, want_commit: int, want_log: list[int]) -> None:
    log = RaftLog(storage_with(1, 2, 3))
    log.commit_to(1)
    assert log.maybe_append(index, log_term, committed, new) == (want_last, want_ok)
    assert log.committed == want_commit
    assert [e.term for e in log.all_entries()] == want_log


def test_maybe_append_refuses_to_overwrite_committed() -> None:
    log = RaftLog(storage_with(1, 2, 3))
    log.commit_to(3)
    with pytest.raises(RaftError):
        log.maybe_append(1, 1, 3, ents(9, 9, start=2))


@pytest.mark.parametrize(
    "max_index,term,want_commit",
    [(3, 3, 3), (3, 2, 0), (2, 2, 2), (2, 3, 0), (1, 1, 1), (4, 3, 0)],
)
def test_maybe_commit_only_of_given_term(max_index: int, term: int, want_commit: int) -> None:
    log = RaftLog(storage_with(1, 2, 3))
    log.maybe_commit(max_index, term)
    assert log.committed == want_commit


def test_unstable_then_stable_and_next_ents() -> None:
    st = storage_with(1, 1)
    log = RaftLog(st)
    log.append(ents(2, 2, start=3))
    assert [e.index for e in log.unstable_entries()] == [3, 4]
    log.commit_to(3)
    assert [e.index for e in log.next_ents()] == [1, 2, 3]
    log.applied_to(2)
    assert [e.index for e in log.next_ents()] == [3]
    st.append(log.unstable_entries())
    log.stable_to(4, 2)
    assert log.unstable_entries() == []
    log.stable_to(4, 1)  # a stale acknowledgement is ignored
    assert log.last_index() == 4
    with pytest.raises(RaftError):
        log.applied_to(4)  # beyond commit


def test_stable_to_ignores_overwritten_entries() -> None:
    log = RaftLog(MemoryStorage())
    log.append(ents(1, 1))
    log.append([Entry(2, 2)])  # overwrites index 2 before it was persisted
    log.stable_to(2, 1)
    assert [(e.index, e.term) for e in log.unstable_entries()] == [(1, 1), (2, 2)]


def test_slice_across_storage_and_unstable_with_size_limit() -> None:
    log = RaftLog(storage_with(1, 1, 1))
    log.append(ents(2, 2, start=4))
    assert [e.index for e in log.slice(2, 6)] == [2, 3, 4, 5]
    assert [e.index for e in log.slice(2, 6, 3 * ENTRY_OVERHEAD)] == [2, 3, 4]
    assert [e.index for e in log.slice(2, 6, 0)] == [2]


# -- quorum -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "voters,match,want",
    [
        ([1], {1: 5}, 5),
        ([1, 2, 3], {1: 5, 2: 4, 3: 1}, 4),
        ([1, 2, 3], {1: 5}, 0),
        ([1, 2, 3, 4], {1: 9, 2: 8, 3: 7, 4: 6}, 7),
        ([1, 2, 3, 4, 5], {1: 9, 2: 1, 3: 7, 4: 2, 5: 6}, 6),
        ([], {}, 0),
    ],
)
def test_committed_index(voters: list[int], match: dict[int, int], want: int) -> None:
    assert committed_index(voters, match) == want


@pytest.mark.parametrize(
    "voters,votes,want",
    [
        ([1], {1: True}, VoteResult.WON),
        ([1, 2, 3], {1: True}, VoteResult.PENDING),
        ([1, 2, 3], {1: True, 2: True}, VoteResult.WON),
        ([1, 2, 3], {1: True, 2: False}, VoteResult.PENDING),
        ([1, 2, 3], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3, 4], {1: True, 2: True}, VoteResult.PENDING),
        ([1, 2, 3, 4], {1: True, 2: False, 3: False}, VoteResult.LOST),
        ([1, 2, 3], {1: True, 9: True}, VoteResult.PENDING),  # non-voters never count
    ],
)
def test_vote_result(voters: list[int], votes: dict[int, bool], want: VoteResult) -> None:
    assert vote_result(voters, votes) is want


# -- progress ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "state,match,next_,rejected,hint,want_ok,want_next",
    [
        (ProgressState.REPLICATE, 5, 10, 5, 5, False, 10),  # stale: already matched
        (ProgressState.REPLICATE, 5, 10, 4, 4, False, 10),
        (ProgressState.REPLICATE, 5, 10, 9, 9, True, 6),  # back to match+1
        (ProgressState.PROBE, 0, 0 + 1, 0, 0, True, 1),
        (ProgressState.PROBE, 0, 10, 5, 5, False, 10),  # stale: not the probe in flight
        (ProgressState.PROBE, 0, 10, 9, 9, True, 9),
        (ProgressState.PROBE, 0, 10, 9, 2, True, 3),  # follower hint jumps back
        (ProgressState.PROBE, 1, 10, 9, 0, True, 2),  # never below match+1
    ],
)
def test_maybe_decr_to(state: ProgressState, match: int, next_: int, rejected: int, hint: int,
                       want_ok: bool, want_next: int) -> None:
    pr = Progress(next_, 10)
    pr.match = match
    pr.state = state
    pr.next = next_
    assert pr.maybe_decr_to(rejected, hint) is want_ok
    assert pr.next == want_next


def test_progress_pausing() -> None:
    pr = Progress(1, 2)
    assert not pr.is_paused()
    pr.probe_sent = True
    assert pr.is_paused()
    pr.maybe_update(3)
    assert not pr.is_paused() and pr.next == 4
    pr.become_replicate()
    pr.inflights.add(5)
    pr.inflights.add(6)
    assert pr.is_paused()
    pr.inflights.free_le(5)
    assert not pr.is_paused()
    pr.become_snapshot(20)
    assert pr.is_paused()
    pr.become_probe()
    assert pr.next == 21


def test_inflights_window() -> None:
    inf = Inflights(3)
    for i in (1, 2, 3):
        inf.add(i)
    assert inf.full()
    with pytest.raises(AssertionError):
        inf.add(4)
    inf.free_le(2)
    assert inf.count() == 1
    inf.free_first_one()
    assert inf.count() == 0


# -- conf changes -----------------------------------------------------------------------------
A, N, L, P, R = (ConfChangeType.ADD_NODE, None, ConfChangeType.ADD_LEARNER,
                 ConfChangeType.PROMOTE_LEARNER, ConfChangeType.REMOVE_NODE)


@pytest.mark.parametrize(
    "voters,learners,kind,node,want",
    [
        ([1], [], A, 2, ([1, 2], [])),
        ([1, 2], [], A, 2, None),  # already a voter
        ([1], [2], A, 2, ([1, 2], [])),  # ADD_NODE on a learner promotes
        ([1], [2], P, 2, ([1, 2], [])),
        ([1], [], P, 2, None),  # promoting a non-learner
        ([1], [], L, 2, ([1], [2])),
        ([1], [2], L, 2, None),
        ([1, 2], [], L, 2, ([1], [2])),  # demotion
        ([1], [], L, 1, None),  # demoting the last voter
        ([1, 2, 3], [], R, 3, ([1, 2], [])),
        ([1], [2], R, 2, ([1], [])),
        ([1, 2], [], R, 9, None),
        ([1], [], R, 1, None),  # removing the last voter
        ([1], [], A, 0, None),
    ],
)
def test_apply_change(voters: list[int], learners: list[int], kind: ConfChangeType, node: int,
                      want: tuple[list[int], list[int]] | None) -> None:
    got = apply_change(ConfState(voters=voters, learners=learners), ConfChange(kind, node))
    if want is None:
        assert got is None
    else:
        assert got == ConfState(voters=want[0], learners=want[1])


def test_conf_change_roundtrip_and_garbage() -> None:
    cc = ConfChange(ConfChangeType.ADD_LEARNER, 2**40 + 7, b"https://10.0.0.1:2380")
    assert ConfChange.decode(cc.encode()) == cc
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x00\x01")
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x09" + b"\x00" * 8)


def test_entry_defaults() -> None:
    e = Entry(1, 2)
    assert e.type is EntryType.NORMAL and e.data == b"" and e.size == ENTRY_OVERHEAD
    assert ConfState(voters=[3, 1, 3]).voters == (1, 3)
