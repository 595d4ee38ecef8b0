"""Log replication: divergence repair, commit rules, batching, flow control, proposals."""

from __future__ import annotations

import random

import pytest

from raft_testnet import MT, Network
from securekv.raft import (
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    ProposalDropped,
    RawNode,
    Role,
)
from securekv.raft.types import ENTRY_OVERHEAD

# Raft paper, Figure 7: the leader's log and six possible follower logs (terms by index).
LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FOLLOWER_LOGS = {
    "a-missing-one": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b-missing-many": [1, 1, 1, 4],
    "c-extra-same-term": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d-extra-newer-term": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e-missing-and-extra": [1, 1, 1, 4, 4, 4, 4],
    "f-divergent-terms": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    "empty": [],
}


@pytest.mark.parametrize("name", sorted(FOLLOWER_LOGS))
def test_leader_repairs_divergent_follower_log(name: str) -> None:
    follower = FOLLOWER_LOGS[name]
    # Node 3 holds the leader's log too, so 1 can win even when 2's log is "newer".
    net = Network([1, 2, 3], logs={1: LEADER_LOG, 2: follower, 3: LEADER_LOG})
    net.raft(1).term = 8
    net.elect(1)
    net.propose(1, b"new")
    assert net.log(2) == net.log(1)
    assert net.committed(2) == net.committed(1) == len(LEADER_LOG) + 2
    # Fast backtracking: one conflicting *term* per round trip at most, not one entry.
    rejects = [m for m in net.sent if m.type is MT.APP_RESP and m.reject and m.frm == 2]
    assert len(rejects) <= 2, rejects


def test_backtracking_hint_skips_whole_terms() -> None:
    net = Network([1, 2, 3], logs={1: [1] + [2] * 40, 2: [1] + [3] * 40, 3: [1] + [2] * 40})
    net.raft(1).term = 4
    net.elect(1)
    assert net.log(2) == net.log(1)
    rejects = [m for m in net.sent if m.type is MT.APP_RESP and m.reject and m.frm == 2]
    assert len(rejects) == 1


@pytest.mark.parametrize(
    "acked_index,want_commit",
    [
        (1, 0),  # entry of term 1: replicated on a majority but not of our term
        (2, 0),  # entry of term 2: same
        (3, 3),  # our own (empty) entry of term 3 commits, and everything before it
    ],
)
def test_leader_only_commits_entries_of_its_term_by_counting(acked_index: int, want_commit: int) -> None:
    st = MemoryStorage(ConfState(voters=[1, 2, 3]))
    st.append([Entry(1, 1), Entry(2, 2)])
    st.set_hard_state(HardState(term=2))
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0), pre_vote=False))
    node.campaign()
    node.step(Message(MT.VOTE_RESP, to=1, frm=2, term=3))
    assert node.raft.state is Role.LEADER and node.raft.log.last_index() == 3
    node.step(Message(MT.APP_RESP, to=1, frm=2, term=3, index=acked_index))
    assert node.raft.log.committed == want_commit


def test_stale_leader_cannot_commit() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    net.propose(1, b"committed")
    net.partition([1, 2], [3, 4, 5])
    net.elect(3)
    commit_before = net.committed(1)
    net.propose(1, b"lost")  # old leader still accepts, cannot reach a majority
    net.tick(1, 3)
    assert net.committed(1) == commit_before
    assert b"lost" not in net.applied_data(1)
    net.propose(3, b"new-leader")
    net.heal()
    net.tick(3, 1)
    assert net.role(1) is Role.FOLLOWER
    for nid in net.nodes:
        assert b"lost" not in net.applied_data(nid)
        assert net.applied_data(nid) == [b"committed", b"new-leader"]
    assert all(net.log(n) == net.log(3) for n in net.nodes)


def test_follower_commit_follows_leader_and_heartbeats() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.drop_types = {MT.APP_RESP}
    net.propose(1, b"x")
    assert net.committed(1) == net.base + 1  # no acks, no commit
    net.heal()
    net.tick(1, 1)  # heartbeat → response → leader resends, acks, commit
    net.tick(1, 1)  # next heartbeat carries the commit index
    assert [net.committed(n) for n in (1, 2, 3)] == [net.base + 2] * 3


def test_proposals_forwarded_from_follower() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(2, b"via-follower")
    assert all(net.applied_data(n) == [b"via-follower"] for n in net.nodes)


@pytest.mark.parametrize("role", ["follower-no-leader", "candidate", "pre-candidate"])
def test_proposal_dropped_without_leader(role: str) -> None:
    net = Network([1, 2, 3], pre_vote=(role == "pre-candidate"))
    if role != "follower-no-leader":
        net.isolate(1)
        net.nodes[1].campaign()
        net.drain()
    with pytest.raises(ProposalDropped, match="no leader"):
        net.nodes[1].propose(b"x")
    with pytest.raises(ProposalDropped, match="no leader"):
        net.nodes[1].read_index(b"r")


def test_batching_catch_up_in_one_message_and_size_limit() -> None:
    size = 100
    net = Network([1, 2, 3], max_size_per_msg=3 * (size + ENTRY_OVERHEAD))
    net.elect(1)
    net.isolate(3)
    for i in range(9):
        net.propose(1, bytes([i]) * size)
    net.heal()
    net.sent.clear()
    net.tick(1, 1)
    apps = [m for m in net.sent if m.type is MT.APP and m.to == 3 and m.entries]
    assert apps and all(len(m.entries) <= 3 for m in apps)
    assert max(len(m.entries) for m in apps) == 3
    assert net.log(3) == net.log(1)


@pytest.mark.parametrize(
    "max_entries,max_size,want_max",
    [
        (0, 1 << 20, 12),  # no count cap: the whole backlog in one message
        (1, 1 << 20, 1),
        (5, 1 << 20, 5),
        (5, 2 * (1 + ENTRY_OVERHEAD), 2),  # the tighter of the two limits wins
        (100, 1 << 20, 12),
    ],
)
def test_entry_count_limit_per_message(max_entries: int, max_size: int, want_max: int) -> None:
    net = Network([1, 2, 3], max_entries_per_msg=max_entries, max_size_per_msg=max_size)
    net.elect(1)
    net.isolate(3)
    for i in range(12):
        net.propose(1, bytes([i]))
    net.heal()
    net.sent.clear()
    net.tick(1, 1)
    apps = [m for m in net.sent if m.type is MT.APP and m.to == 3 and m.entries]
    assert max(len(m.entries) for m in apps) == want_max
    assert net.log(3) == net.log(1)
    assert net.applied_data(3) == [bytes([i]) for i in range(12)]


def test_propose_many_is_one_append_per_follower() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.sent.clear()
    net.nodes[1].propose_many([b"a", b"b", b"c", b"d"])
    net.drain()
    apps = [m for m in net.sent if m.type is MT.APP and m.entries]
    assert sorted(m.to for m in apps) == [2, 3]
    assert all(len(m.entries) == 4 for m in apps)
    assert net.applied_data(3) == [b"a", b"b", b"c", b"d"]


def test_pipelining_bounded_by_inflight_window() -> None:
    net = Network([1, 2, 3], max_inflight_msgs=3)
    net.elect(1)  # both followers are in the replicate state now
    net.drop_types = {MT.APP_RESP}
    net.sent.clear()
    for i in range(10):
        net.nodes[1].propose(b"%d" % i)
        net.drain()
    apps = [m for m in net.sent if m.type is MT.APP and m.to == 2 and m.entries]
    assert len(apps) == 3  # the window is full: no more appends until acks come back
    net.heal()
    net.tick(1, 1)
    net.tick(1, 1)
    assert net.applied_data(2) == [b"%d" % i for i in range(10)]


def test_probe_state_sends_one_append_per_heartbeat() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(2)
    net.tick(1, 1)
    pr = net.raft(1).trk.progress[2]
    net.raft(1).trk.progress[2].become_probe()
    net.sent.clear()
    for i in range(5):
        net.propose(1, b"%d" % i)
    apps = [m for m in net.sent if m.type is MT.APP and m.to == 2]
    assert len(apps) == 1 and pr.probe_sent


def test_max_uncommitted_size_drops_proposals() -> None:
    net = Network([1, 2, 3], max_uncommitted_entries_size=100)
    net.elect(1)
    net.isolate(1)
    net.propose(1, b"x" * 60)
    net.propose(1, b"x" * 40)
    with pytest.raises(ProposalDropped, match="max_uncommitted"):
        net.nodes[1].propose(b"x")
    net.heal()
    net.tick(1, 2)
    net.propose(1, b"y")  # committed entries release the budget
    assert net.applied_data(2)[-1] == b"y"


def test_committed_entries_per_ready_size_limit() -> None:
    net = Network([1], max_committed_size_per_ready=2 * (ENTRY_OVERHEAD + 1))
    net.elect(1)
    net.nodes[1].propose_many([b"a", b"b", b"c", b"d", b"e"])
    sizes = []
    while net.nodes[1].has_ready():
        rd = net.nodes[1].ready()
        net.storage[1].append(rd.entries)
        if rd.hard_state:
            net.storage[1].set_hard_state(rd.hard_state)
        sizes.append(len(rd.committed_entries))
        net.nodes[1].advance()
    assert max(sizes) <= 2 and sum(sizes) == 5


def test_follower_restart_keeps_log_and_term() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.propose(1, b"b")
    before = net.log(2)
    net.restart(2)
    assert net.log(2) == before and net.term(2) == 1
    assert net.committed(2) == net.base + 3 and net.raft(2).log.applied == 0
    net.propose(1, b"c")
    assert net.log(2) == net.log(1)


def _broken_maybe_commit(self, max_index: int, term: int) -> bool:  # type: ignore[no-untyped-def]
    """The Figure 8 bug: commit by counting replicas whatever the entry's term."""
    if max_index > self.committed:
        self.commit_to(max_index)
        return True
    return False


def _campaign_until_leader(net: Network, nid: int) -> None:
    for _ in range(3):
        net.nodes[nid].campaign()
        try:
            net.drain(max_rounds=500)
        except AssertionError:
            pass  # with the bug, diverged "committed" logs make leader and follower livelock
        if net.role(nid) is Role.LEADER:
            return
    raise AssertionError(f"{nid} could not win an election")


@pytest.mark.parametrize("broken", [False, True], ids=["current-term-rule", "figure8-bug"])
def test_figure8_scenario(broken: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raft paper Figure 8, step by step. With the current-term rule no two nodes ever apply
    different entries at one index; with the bug (counting old-term replicas) they do — which
    also shows this test would catch the bug."""
    if broken:
        from securekv.raft.log import RaftLog

        monkeypatch.setattr(RaftLog, "maybe_commit", _broken_maybe_commit)
    net = Network([1, 2, 3, 4, 5], max_size_per_msg=0)  # one entry per append message
    net.elect(1)
    x = net.base + 2
    # (a) S1 leads and gets X (its term) to S2 only.
    net.partition([1, 2], [3, 4, 5])
    net.propose(1, b"X")
    assert net.committed(1) == x - 1
    # (b) S1 down; S5 wins with S3 and S4, appends at index x, replicates nothing.
    net.heal()
    net.isolate(1)
    net.drop_types = {MT.APP}
    _campaign_until_leader(net, 5)
    assert net.raft(5).log.term(x) > net.raft(1).log.term(x)
    # (c) S5 down; S1 back and leader of a later term. X (old term) reaches S3, but S1's own
    # new-term entry does not reach a majority.
    net.heal()
    net.isolate(5)
    net.restart(1)
    net.filter = lambda m: (m.type is MT.APP and m.to in (3, 4)
                            and any(e.term == net.term(1) for e in m.entries)
                            and net.raft(m.to).log.match_term(m.index, m.log_term))
    _campaign_until_leader(net, 1)
    net.tick(1, 1)
    assert [e.data for e in net.raft(3).log.all_entries() if e.index == x] == [b"X"]
    assert (net.committed(1) >= x) is broken
    # (d) S1 down; S5 back, wins with S3 and S4 and overwrites index x.
    net.heal()
    net.isolate(1)
    net.restart(5)
    _campaign_until_leader(net, 5)
    applied_at_x = {nid: [(e.term, e.data) for e in net.applied[nid] if e.index == x]
                    for nid in net.nodes}
    distinct = {tuple(v) for v in applied_at_x.values() if v}
    assert applied_at_x[5], applied_at_x  # the index was committed and applied
    assert (len(distinct) > 1) is broken, applied_at_x


@pytest.mark.parametrize(
    "log_term,index,commit,entries,want_index,want_commit,want_reject",
    [
        # The previous entry does not match: rejected.
        (3, 2, 3, [], 2, 0, True),
        (3, 3, 3, [], 2, 0, True),
        # Matches: accepted, commit follows the leader up to the last new entry.
        (1, 1, 1, [], 2, 1, False),
        (0, 0, 1, [(1, 2)], 1, 1, False),
        (2, 2, 3, [(3, 2), (4, 2)], 4, 3, False),
        (2, 2, 4, [(3, 2)], 3, 3, False),
        (1, 1, 4, [(2, 2)], 2, 2, False),
        (1, 1, 3, [], 2, 1, False),
        (1, 1, 3, [(2, 2)], 2, 2, False),
        (2, 2, 2, [], 2, 2, False),
        (2, 2, 4, [], 2, 2, False),
    ],
)
def test_follower_handles_append(log_term: int, index: int, commit: int,
                                 entries: list[tuple[int, int]], want_index: int,
                                 want_commit: int, want_reject: bool) -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    st.append([Entry(1, 1), Entry(2, 2)])
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0)))
    node.step(Message(MT.APP, to=1, frm=2, term=2, log_term=log_term, index=index, commit=commit,
                      entries=tuple(Entry(t, i) for i, t in entries)))
    assert node.raft.log.last_index() == want_index
    assert node.raft.log.committed == want_commit
    (resp,) = node.ready().messages
    assert (resp.type, resp.reject) == (MT.APP_RESP, want_reject)


@pytest.mark.parametrize("leader_commit,want", [(3, 3), (1, 2)])
def test_follower_handles_heartbeat_commit(leader_commit: int, want: int) -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    st.append([Entry(1, 1), Entry(2, 2), Entry(3, 3)])
    st.set_hard_state(HardState(term=3, commit=2))
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0)))
    node.step(Message(MT.HEARTBEAT, to=1, frm=2, term=3, commit=leader_commit, context=b"c"))
    assert node.raft.log.committed == want  # never moves backwards
    (resp,) = node.ready().messages
    assert (resp.type, resp.context, resp.to) == (MT.HEARTBEAT_RESP, b"c", 2)


def test_stale_term_append_gets_current_term_answer_with_check_quorum() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2, 3]))
    st.set_hard_state(HardState(term=5))
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0), check_quorum=True))
    node.step(Message(MT.APP, to=1, frm=2, term=3, index=0, log_term=0))
    (resp,) = node.ready().messages
    assert (resp.type, resp.term, resp.to) == (MT.APP_RESP, 5, 2)
    assert node.raft.term == 5 and node.raft.lead == 0
