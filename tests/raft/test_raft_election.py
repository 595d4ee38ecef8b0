"""Elections: timeouts, vote rules, Pre-Vote and CheckQuorum."""

from __future__ import annotations

import random

import pytest

from raft_testnet import MT, Network
from securekv.raft import (
    NONE,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    RawNode,
    Role,
)


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize(
    "ids,down,want_role,want_term",
    [
        ([1, 2, 3], [], Role.LEADER, 1),
        ([1, 2, 3], [3], Role.LEADER, 1),
        ([1, 2, 3], [2, 3], Role.CANDIDATE, 1),
        ([1, 2, 3, 4], [3, 4], Role.CANDIDATE, 1),
        ([1, 2, 3, 4, 5], [4, 5], Role.LEADER, 1),
        ([1, 2, 3, 4, 5], [3, 4, 5], Role.CANDIDATE, 1),
    ],
)
def test_leader_election(pre_vote: bool, ids: list[int], down: list[int], want_role: Role,
                         want_term: int) -> None:
    net = Network(ids, pre_vote=pre_vote)
    for d in down:
        net.isolate(d)
    net.nodes[1].campaign()
    net.drain()
    if pre_vote and want_role is Role.CANDIDATE:
        # A pre-candidate that cannot win never bumps its term.
        assert (net.role(1), net.term(1)) == (Role.PRE_CANDIDATE, 0)
    else:
        assert (net.role(1), net.term(1)) == (want_role, want_term)


@pytest.mark.parametrize("seed", range(5))
def test_randomized_election_timeout_range(seed: int) -> None:
    net = Network([1, 2, 3], seed=seed, election_tick=10)
    r = net.raft(1)
    seen = set()
    for _ in range(200):
        r._reset_randomized_election_timeout()
        seen.add(r.randomized_election_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_follower_campaigns_only_after_timeout() -> None:
    net = Network([1], election_tick=10)
    timeout = net.raft(1).randomized_election_timeout
    net.tick(1, timeout - 1)
    assert net.role(1) is Role.FOLLOWER
    net.tick(1, 1)
    assert net.role(1) is Role.LEADER


@pytest.mark.parametrize("pre_vote,check_quorum", [(False, False), (True, False), (True, True), (False, True)])
def test_cluster_elects_exactly_one_leader_by_ticking(pre_vote: bool, check_quorum: bool) -> None:
    for seed in range(10):
        net = Network([1, 2, 3, 4, 5], pre_vote=pre_vote, check_quorum=check_quorum, seed=seed)
        for _ in range(100):
            net.tick()
            if net.leaders():
                break
        assert len(net.leaders()) == 1
        lead = net.leaders()[0]
        assert all(net.leader_of(n) == lead for n in net.nodes)


@pytest.mark.parametrize(
    "log_terms,msg_index,msg_log_term,want_reject",
    [
        # Candidate log is at least as up to date: granted.
        ([], 0, 0, False),
        ([1], 1, 1, False),
        ([1], 2, 1, False),
        ([1], 1, 2, False),
        ([1, 1], 1, 2, False),
        # Candidate log is behind: rejected.
        ([1, 1], 1, 1, True),
        ([1, 2], 2, 1, True),
        ([1, 2], 5, 1, True),
        ([2], 1, 1, True),
    ],
)
@pytest.mark.parametrize("kind", [MT.VOTE, MT.PRE_VOTE])
def test_voter_checks_log_up_to_date(log_terms: list[int], msg_index: int, msg_log_term: int,
                                     want_reject: bool, kind: MT) -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    st.append([Entry(t, i + 1) for i, t in enumerate(log_terms)])
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0), pre_vote=False,
                          check_quorum=False))
    node.step(Message(kind, to=1, frm=2, term=3, index=msg_index, log_term=msg_log_term))
    resp = node.ready().messages
    assert len(resp) == 1
    assert resp[0].type is (MT.VOTE_RESP if kind is MT.VOTE else MT.PRE_VOTE_RESP)
    assert resp[0].reject is want_reject


@pytest.mark.parametrize(
    "vote,lead,candidate,want_grant",
    [
        (NONE, NONE, 2, True),
        (2, NONE, 2, True),  # repeated request from the one we voted for
        (3, NONE, 2, False),  # already voted for someone else this term
        (NONE, 3, 2, False),  # we know a leader in this term
    ],
)
def test_one_vote_per_term(vote: int, lead: int, candidate: int, want_grant: bool) -> None:
    st = MemoryStorage(ConfState(voters=[1, 2, 3]))
    st.set_hard_state(HardState(term=5, vote=vote))
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0), check_quorum=False,
                          pre_vote=False))
    node.raft.lead = lead
    node.step(Message(MT.VOTE, to=1, frm=candidate, term=5))
    (resp,) = node.ready().messages
    assert resp.reject is (not want_grant)
    assert node.raft.vote == (candidate if want_grant else vote)


def test_vote_persisted_before_response_leaves() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2, 3]))
    node = RawNode(Config(id=1, storage=st, rng=random.Random(0)))
    node.step(Message(MT.VOTE, to=1, frm=2, term=4))
    rd = node.ready()
    assert rd.hard_state == HardState(term=4, vote=2, commit=0)
    assert rd.must_sync
    assert [m.type for m in rd.messages] == [MT.VOTE_RESP]


def test_candidate_steps_down_on_leader_of_same_term() -> None:
    net = Network([1, 2, 3])
    net.isolate(1)
    net.nodes[1].campaign()
    net.drain()
    assert net.role(1) is Role.CANDIDATE and net.term(1) == 1
    net.heal()
    net.send(Message(MT.APP, to=1, frm=2, term=1, index=0, log_term=0))
    assert (net.role(1), net.leader_of(1)) == (Role.FOLLOWER, 2)


def test_leader_steps_down_on_higher_term() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.elect(2)
    assert net.role(1) is Role.LEADER  # does not know yet
    net.heal()
    net.tick(2, 1)  # heartbeat of term 2 reaches 1
    assert (net.role(1), net.term(1), net.leader_of(1)) == (Role.FOLLOWER, 2, 2)


def test_single_node_becomes_leader_and_commits_immediately() -> None:
    net = Network([1])
    net.elect(1)
    net.propose(1, b"a")
    assert net.committed(1) == net.base + 2 and net.applied_data(1) == [b"a"]


def test_candidate_with_stale_log_cannot_win() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"x")
    net.isolate(3)
    net.propose(1, b"y")  # 3 misses it
    net.heal()
    net.isolate(1)
    net.nodes[3].campaign()
    net.drain()
    assert net.role(3) is not Role.LEADER
    net.elect(2)


# -- Pre-Vote ---------------------------------------------------------------------------------

def test_prevote_partitioned_node_does_not_disrupt_on_return() -> None:
    net = Network([1, 2, 3], pre_vote=True, check_quorum=True)
    net.elect(1)
    net.propose(1, b"a")
    net.isolate(3)
    net.tick(3, 100)  # 3 keeps timing out, but Pre-Vote never bumps its term
    assert net.term(3) == 1 and net.role(3) is Role.PRE_CANDIDATE
    net.heal()
    net.tick(n=5)
    assert net.role(1) is Role.LEADER and net.term(1) == 1
    assert net.leader_of(3) == 1 and net.term(3) == 1


def test_without_prevote_partitioned_node_disrupts_on_return() -> None:
    """The contrast case: the rejoining node's higher term deposes a healthy leader."""
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    net.tick(3, 100)
    assert net.term(3) > 1
    net.heal()
    net.tick(3, 30)  # 3 campaigns again with its inflated term
    assert net.role(1) is Role.FOLLOWER and net.term(1) > 1


def test_prevote_does_not_change_voter_state() -> None:
    net = Network([1, 2, 3], pre_vote=True)
    net.drop_types = {MT.VOTE}
    net.nodes[1].campaign()
    net.drain()
    # Pre-election won, real election messages dropped: peers untouched by the pre-vote.
    assert net.term(1) == 1 and net.role(1) is Role.CANDIDATE
    assert (net.term(2), net.raft(2).vote, net.term(3), net.raft(3).vote) == (0, NONE, 0, NONE)


def test_prevote_rejected_with_higher_term_makes_precandidate_follow() -> None:
    node = RawNode(Config(id=1, storage=MemoryStorage(ConfState(voters=[1, 2, 3])),
                          rng=random.Random(0), pre_vote=True))
    node.campaign()
    assert node.raft.state is Role.PRE_CANDIDATE and node.raft.term == 0
    node.step(Message(MT.PRE_VOTE_RESP, to=1, frm=2, term=5, reject=True))
    assert (node.raft.state, node.raft.term) == (Role.FOLLOWER, 5)


def test_prevote_granted_with_future_term_does_not_bump_term_until_won() -> None:
    node = RawNode(Config(id=1, storage=MemoryStorage(ConfState(voters=[1, 2, 3, 4, 5])),
                          rng=random.Random(0), pre_vote=True))
    node.campaign()
    node.step(Message(MT.PRE_VOTE_RESP, to=1, frm=2, term=1))
    assert (node.raft.state, node.raft.term) == (Role.PRE_CANDIDATE, 0)
    node.step(Message(MT.PRE_VOTE_RESP, to=1, frm=3, term=1))
    assert (node.raft.state, node.raft.term) == (Role.CANDIDATE, 1)


def test_prevote_with_stale_log_cannot_win_but_others_can() -> None:
    net = Network([1, 2, 3], pre_vote=True, check_quorum=True)
    net.elect(1)
    net.isolate(3)
    net.propose(1, b"a")
    net.heal()
    net.isolate(1)  # leader dies
    net.nodes[3].campaign()
    net.drain()
    assert net.role(3) is not Role.LEADER and net.term(3) == 1
    net.tick(2, 30)
    assert net.role(2) is Role.LEADER and net.term(2) == 2


# -- CheckQuorum ------------------------------------------------------------------------------

def test_check_quorum_leader_steps_down_without_quorum() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.isolate(1)
    for _ in range(2 * 10 + 1):
        net.tick(1)
    assert net.role(1) is Role.FOLLOWER and net.leader_of(1) == NONE
    # A proposal on the deposed leader is refused instead of silently stalling.
    from securekv.raft import ProposalDropped

    with pytest.raises(ProposalDropped, match="no leader"):
        net.nodes[1].propose(b"x")


def test_check_quorum_leader_with_quorum_stays() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.isolate(3)
    net.tick(1, 50)
    assert net.role(1) is Role.LEADER


def test_check_quorum_lease_ignores_votes() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    # 3 campaigns on its own (e.g. it briefly lost the leader) with a higher term.
    net.nodes[3].campaign()
    net.drain()
    # 1 and 2 heard from the leader within the lease and ignored the vote.
    assert net.term(1) == 1 and net.term(2) == 1 and net.role(1) is Role.LEADER
    assert net.role(3) is Role.CANDIDATE and net.term(3) == 2


def test_check_quorum_votes_granted_once_lease_expired() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.isolate(1)
    net.tick(2, 10)  # 2's election_elapsed reaches the election timeout: lease over
    net.tick(3, 10)
    net.nodes[3].campaign()
    net.drain()
    assert net.role(3) is Role.LEADER


def test_stale_leader_rejoins_with_check_quorum() -> None:
    """A leader partitioned away with CheckQuorum must be told about the higher term."""
    net = Network([1, 2, 3], check_quorum=True, pre_vote=True)
    net.elect(1)
    net.isolate(1)
    net.tick(2, 40)
    net.tick(3, 40)
    new = net.leaders()
    assert set(new) - {1}, new
    net.heal()
    net.tick(1, 1)
    net.tick(n=3)
    assert net.leaders() == [l for l in new if l != 1]
    assert net.role(1) is Role.FOLLOWER


def test_learner_never_campaigns() -> None:
    net = Network([1], learners=[2])
    net.tick(2, 100)
    assert net.role(2) is Role.FOLLOWER
    net.nodes[2].campaign()
    net.drain()
    assert net.role(2) is Role.FOLLOWER and net.term(2) == 0
