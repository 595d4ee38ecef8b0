"""Membership changes, one at a time: voters, learners, promotion, removal, safety."""

from __future__ import annotations

import attrs
import pytest

from raft_testnet import MT, Network
from securekv.raft import (
    ConfChange,
    ConfChangeType,
    ConfState,
    EntryType,
    ProposalDropped,
    Role,
)

ADD, REMOVE, LEARNER, PROMOTE = (ConfChangeType.ADD_NODE, ConfChangeType.REMOVE_NODE,
                                 ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE_LEARNER)


def change(net: Network, leader: int, kind: ConfChangeType, node: int) -> None:
    net.nodes[leader].propose_conf_change(ConfChange(kind, node))
    net.drain()


def test_add_voter_then_new_node_catches_up_from_empty_storage() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"before")
    net.add_node(4)  # empty storage: learns everything, configuration included, from the log
    change(net, 1, ADD, 4)
    net.propose(1, b"after")
    assert net.raft(1).trk.conf_state() == ConfState(voters=[1, 2, 3, 4])
    assert net.raft(4).trk.conf_state() == ConfState(voters=[1, 2, 3, 4])
    assert net.applied_data(4) == [b"before", b"after"]
    # Quorum is now 3 of 4: with two nodes down nothing commits.
    net.isolate(3)
    net.isolate(4)
    commit = net.committed(1)
    net.propose(1, b"stuck")
    assert net.committed(1) == commit


def test_remove_voter_shrinks_quorum() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    change(net, 1, REMOVE, 3)
    assert net.raft(1).trk.conf_state() == ConfState(voters=[1, 2])
    net.isolate(3)
    net.propose(1, b"x")
    assert net.applied_data(1) == [b"x"] and net.applied_data(2) == [b"x"]
    # The removed node never campaigns again.
    net.tick(3, 100)
    assert net.role(3) is Role.FOLLOWER and net.term(3) == 1


def test_removing_a_voter_can_commit_pending_entries() -> None:
    net = Network([1, 2, 3, 4])
    net.elect(1)
    net.isolate(3)
    net.isolate(4)
    net.cut -= {(1, 4), (4, 1)}  # 4 still hears conf change, 3 is gone
    change(net, 1, REMOVE, 3)
    net.cut |= {(1, 4), (4, 1)}
    net.propose(1, b"x")  # only 1 and 2 hold it: 2 of 3 voters, commits
    assert net.applied_data(1) == [b"x"]


def test_leader_removed_steps_down_and_rest_elect_new_leader() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    change(net, 1, REMOVE, 1)
    assert net.role(1) is Role.FOLLOWER
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"x")
    net.tick(1, 100)
    assert net.role(1) is Role.FOLLOWER  # not promotable any more
    for _ in range(100):
        net.tick(2)
        net.tick(3)
        if net.leaders():
            break
    assert len(net.leaders()) == 1 and net.leaders()[0] in (2, 3)
    leader = net.leaders()[0]
    net.propose(leader, b"y")
    assert net.applied_data(2)[-1] == b"y" and net.applied_data(3)[-1] == b"y"


def test_learner_receives_log_but_does_not_count() -> None:
    net = Network([1, 2], learners=[3])
    net.elect(1)
    net.propose(1, b"a")
    assert net.applied_data(3) == [b"a"]
    assert net.raft(3).is_learner
    # With the other voter down, the learner's ack is not enough to commit.
    net.isolate(2)
    commit = net.committed(1)
    net.propose(1, b"b")
    assert net.committed(1) == commit and net.last_index(3) == net.last_index(1)


def test_learner_vote_is_not_counted() -> None:
    net = Network([1, 2, 3], learners=[4])
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].campaign()
    net.drain()
    # 4 may answer, but a learner's grant never makes a quorum.
    assert net.role(1) is Role.CANDIDATE


def test_add_learner_then_promote() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.add_node(4)
    change(net, 1, LEARNER, 4)
    net.tick(1, 1)  # the next heartbeat finds the new member and starts replicating to it
    assert net.raft(4).is_learner and net.applied_data(4) == [b"a"]
    net.tick(4, 50)
    assert net.role(4) is Role.FOLLOWER
    change(net, 1, PROMOTE, 4)
    assert net.raft(1).trk.conf_state() == ConfState(voters=[1, 2, 3, 4])
    assert not net.raft(4).is_learner
    # Now 4 can become leader.
    net.elect(4)


def test_add_node_on_learner_promotes() -> None:
    net = Network([1], learners=[2])
    net.elect(1)
    change(net, 1, ADD, 2)
    assert net.raft(2).trk.conf_state() == ConfState(voters=[1, 2])


def test_only_one_conf_change_pending() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(2)
    net.isolate(3)
    net.nodes[1].propose_conf_change(ConfChange(REMOVE, 3))
    net.drain()
    with pytest.raises(ProposalDropped, match="conf change is already pending"):
        net.nodes[1].propose_conf_change(ConfChange(REMOVE, 2))
    net.heal()
    net.tick(1, 2)
    net.nodes[1].propose_conf_change(ConfChange(REMOVE, 2))  # applied now: accepted
    net.drain()
    assert net.raft(1).trk.conf_state() == ConfState(voters=[1])


def test_new_leader_waits_for_conf_changes_of_previous_terms() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.drop_types = {MT.APP_RESP}
    net.nodes[1].propose_conf_change(ConfChange(REMOVE, 3))
    net.drain()
    net.heal()
    net.isolate(1)
    net.drop_types = {MT.APP_RESP}
    net.elect(2)  # its log holds the uncommitted conf change, and it cannot commit yet
    with pytest.raises(ProposalDropped, match="pending"):
        net.nodes[2].propose_conf_change(ConfChange(ADD, 9))
    net.drop_types = set()
    net.tick(2, 1)
    assert net.raft(2).trk.conf_state() == ConfState(voters=[1, 2])
    net.nodes[2].propose_conf_change(ConfChange(ADD, 9))  # applied after commit: accepted


def test_node_with_unapplied_conf_change_does_not_campaign() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    change(net, 1, REMOVE, 3)
    r2 = net.raft(2)
    # Pretend 2 has not applied the committed conf change yet.
    r2.log.applied = r2.log.committed - 1
    assert any(e.type is EntryType.CONF_CHANGE
               for e in r2.log.slice(r2.log.applied + 1, r2.log.committed + 1))
    net.isolate(1)
    net.nodes[2].campaign()
    net.drain()
    assert net.role(2) is Role.FOLLOWER


@pytest.mark.parametrize(
    "kind,node",
    [(REMOVE, 1), (LEARNER, 1), (PROMOTE, 2), (REMOVE, 7)],
)
def test_invalid_conf_change_is_a_deterministic_noop(kind: ConfChangeType, node: int) -> None:
    net = Network([1])
    net.elect(1)
    change(net, 1, kind, node)
    assert net.raft(1).trk.conf_state() == ConfState(voters=[1])
    assert net.role(1) is Role.LEADER


def test_garbage_conf_change_proposal_refused() -> None:
    from securekv.raft import Entry, Message

    net = Network([1])
    net.elect(1)
    bad = Message(MT.PROP, frm=1, entries=(Entry(0, 0, EntryType.CONF_CHANGE, b"x"),))
    with pytest.raises(ProposalDropped, match="bad conf change"):
        net.raft(1).step(bad)
    last = net.last_index(1)
    net.nodes[1].step(attrs.evolve(bad, frm=2, to=1))  # forwarded by a peer: dropped quietly
    assert net.last_index(1) == last


def test_leader_demoted_to_learner_steps_down() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    change(net, 1, LEARNER, 1)
    assert net.role(1) is Role.FOLLOWER and net.raft(1).is_learner
    net.tick(1, 100)
    assert net.role(1) is Role.FOLLOWER
    net.elect(2)
    net.propose(2, b"x")
    assert net.applied_data(1) == [b"x"]  # still receives the log as a learner
