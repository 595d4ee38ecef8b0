"""ReadIndex linearizable reads and leadership transfer."""

from __future__ import annotations

import pytest

from raft_testnet import MT, Network
from securekv.raft import NONE, Message, ProposalDropped, ReadState, Role


# -- ReadIndex --------------------------------------------------------------------------------

@pytest.mark.parametrize("asker", [1, 2, 3])
def test_read_index_returns_commit_index_after_heartbeat_quorum(asker: int) -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.sent.clear()
    net.nodes[asker].read_index(b"ctx-%d" % asker)
    net.drain()
    assert net.read_states[asker] == [ReadState(net.committed(1), b"ctx-%d" % asker)]
    # The leader confirmed its leadership with a heartbeat round carrying the context.
    assert any(m.type is MT.HEARTBEAT and m.context == b"ctx-%d" % asker for m in net.sent)


def test_read_index_needs_quorum_of_heartbeat_acks() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    net.partition([1, 2], [3, 4, 5])  # a deposed-but-unaware leader
    net.nodes[1].read_index(b"stale?")
    net.drain()
    assert net.read_states[1] == []
    net.heal()
    net.tick(1, 1)  # the next heartbeat carries the pending context: quorum reached
    assert [rs.request_ctx for rs in net.read_states[1]] == [b"stale?"]


def test_read_index_on_isolated_leader_after_new_election_never_answers() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.nodes[1].read_index(b"r")
    net.drain()
    net.elect(2)
    net.propose(2, b"newer write")
    net.heal()
    net.tick(1, 1)  # its heartbeats (term 1) are ignored: no quorum confirms the read
    net.tick(2, 1)  # 1 learns of term 2 and steps down; its read is never answered
    assert net.read_states[1] == [] and net.role(1) is Role.FOLLOWER


def test_read_index_single_node_answers_immediately() -> None:
    net = Network([1])
    net.elect(1)
    net.propose(1, b"x")
    net.sent.clear()
    net.nodes[1].read_index(b"solo")
    rd = net.nodes[1].ready()
    assert rd.read_states == (ReadState(net.committed(1), b"solo"),)
    assert rd.messages == ()
    net.nodes[1].advance()


def test_read_index_waits_for_commit_in_leader_term() -> None:
    net = Network([1, 2, 3])
    net.drop_types = {MT.APP_RESP}
    net.elect(1)  # its empty entry of term 1 is not committed yet
    assert net.committed(1) < net.last_index(1)
    net.nodes[1].read_index(b"early")
    net.drain()
    assert net.read_states[1] == []
    net.drop_types = set()
    net.tick(1, 1)
    net.tick(1, 1)
    assert net.read_states[1] == [ReadState(net.last_index(1), b"early")]


def test_read_index_batches_confirm_earlier_requests() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.drop_types = {MT.HEARTBEAT_RESP}
    for ctx in (b"r1", b"r2", b"r3"):
        net.nodes[1].read_index(ctx)
        net.drain()
    net.drop_types = set()
    net.tick(1, 1)  # one heartbeat with the last context confirms all three
    assert [rs.request_ctx for rs in net.read_states[1]] == [b"r1", b"r2", b"r3"]


def test_follower_read_without_leader_is_refused() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(ProposalDropped, match="read index dropped: no leader"):
        net.nodes[2].read_index(b"x")


def test_learner_can_read_through_leader() -> None:
    net = Network([1, 2], learners=[3])
    net.elect(1)
    net.propose(1, b"v")
    net.nodes[3].read_index(b"learner-read")
    net.drain()
    assert net.read_states[3] == [ReadState(net.committed(1), b"learner-read")]


# -- leadership transfer ----------------------------------------------------------------------

def test_transfer_to_up_to_date_follower() -> None:
    net = Network([1, 2, 3], check_quorum=True, pre_vote=True)
    net.elect(1)
    net.propose(1, b"a")
    net.nodes[1].transfer_leader(2)
    net.drain()
    assert net.leaders() == [2] and net.term(2) == 2
    assert any(m.type is MT.TIMEOUT_NOW and m.to == 2 for m in net.sent)
    net.propose(2, b"b")
    assert all(net.applied_data(n) == [b"a", b"b"] for n in net.nodes)


def test_transfer_to_lagging_follower_catches_it_up_first() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for i in range(5):
        net.propose(1, b"%d" % i)
    net.heal()
    net.nodes[1].transfer_leader(3)
    net.drain()
    assert net.leaders() == [3]
    assert net.log(3) == net.log(1)


def test_transfer_requested_on_follower_is_forwarded() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.nodes[3].transfer_leader(3)
    net.drain()
    assert net.leaders() == [3]


def test_proposals_dropped_during_transfer_and_timeout_aborts() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    net.nodes[1].transfer_leader(3)
    net.drain()
    assert net.raft(1).lead_transferee == 3
    with pytest.raises(ProposalDropped, match="leadership transfer in progress"):
        net.nodes[1].propose(b"x")
    net.tick(1, 10)  # one election timeout: the transfer is abandoned
    assert net.raft(1).lead_transferee == NONE and net.role(1) is Role.LEADER
    net.propose(1, b"x")
    assert net.applied_data(2) == [b"x"]


@pytest.mark.parametrize("target", [1, 9])
def test_transfer_to_self_or_unknown_is_ignored(target: int) -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.nodes[1].transfer_leader(target)
    net.drain()
    assert net.leaders() == [1] and net.raft(1).lead_transferee == NONE


def test_transfer_to_learner_is_ignored() -> None:
    net = Network([1, 2], learners=[3])
    net.elect(1)
    net.nodes[1].transfer_leader(3)
    net.drain()
    assert net.leaders() == [1] and net.raft(1).lead_transferee == NONE


def test_transfer_bypasses_check_quorum_lease() -> None:
    net = Network([1, 2, 3], check_quorum=True)
    net.elect(1)
    net.nodes[1].transfer_leader(3)
    net.drain()
    # 2 had a live leader (lease) but still voted: the vote carried the transfer context.
    assert net.leaders() == [3]


def test_second_transfer_to_other_target_replaces_first() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    net.nodes[1].transfer_leader(3)
    net.drain()
    net.heal()
    net.nodes[1].transfer_leader(2)
    net.drain()
    assert net.leaders() == [2]


def test_timeout_now_ignored_by_learner() -> None:
    net = Network([1, 2], learners=[3])
    net.elect(1)
    net.send(Message(MT.TIMEOUT_NOW, to=3, frm=1, term=1))
    assert net.role(3) is Role.FOLLOWER and net.leaders() == [1]
