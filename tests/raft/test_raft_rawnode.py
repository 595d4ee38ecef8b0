"""The RawNode contract: Ready batches, advance, restarts, config validation, determinism."""

from __future__ import annotations

import random

import pytest

from raft_testnet import MT, Network
from securekv.errors import UsageError
from securekv.raft import (
    LOCAL_MESSAGES,
    Config,
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    RawNode,
    Role,
    SoftState,
    StepLocalMessage,
)


def node(nid: int = 1, voters: tuple[int, ...] = (1, 2, 3), **kw: object) -> tuple[RawNode, MemoryStorage]:
    st = MemoryStorage(ConfState(voters=voters))
    return RawNode(Config(id=nid, storage=st, rng=random.Random(7), **kw)), st  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(LOCAL_MESSAGES))
def test_step_refuses_local_messages(kind: MT) -> None:
    n, _ = node()
    with pytest.raises(StepLocalMessage):
        n.step(Message(kind, to=1, frm=2, term=1))


def test_fresh_node_has_no_ready() -> None:
    n, _ = node()
    assert not n.has_ready()
    n2 = RawNode(Config(id=1, storage=MemoryStorage.with_peers([1, 2]), rng=random.Random(1)))
    assert not n2.has_ready()


def test_ready_must_be_advanced_before_next() -> None:
    n, _ = node()
    n.campaign()
    n.ready()
    assert not n.has_ready()
    with pytest.raises(UsageError):
        n.ready()
    n.advance()
    with pytest.raises(UsageError):
        n.advance()


@pytest.mark.parametrize(
    "pre_vote,want_role,want_hard,want_msg",
    [
        (False, Role.CANDIDATE, HardState(term=1, vote=1, commit=0), MT.VOTE),
        (True, Role.PRE_CANDIDATE, None, MT.PRE_VOTE),
    ],
)
def test_campaign_ready(pre_vote: bool, want_role: Role, want_hard: HardState | None, want_msg: MT) -> None:
    n, _ = node(pre_vote=pre_vote)
    n.campaign()
    rd = n.ready()
    assert rd.soft_state == SoftState(0, want_role)
    assert rd.hard_state == want_hard
    assert rd.must_sync is (want_hard is not None)
    assert sorted(m.to for m in rd.messages) == [2, 3]
    assert all(m.type is want_msg and m.term == 1 for m in rd.messages)


def test_leader_ready_carries_entries_messages_then_committed() -> None:
    n, st = node(voters=(1, 2), pre_vote=False)
    n.campaign()
    n.ready()
    n.advance()
    n.step(Message(MT.VOTE_RESP, to=1, frm=2, term=1))
    rd = n.ready()
    assert rd.soft_state == SoftState(1, Role.LEADER)
    assert rd.entries == (Entry(1, 1),)  # the new leader's empty entry, to persist
    assert [m.type for m in rd.messages] == [MT.APP]
    assert rd.committed_entries == ()
    assert rd.must_sync
    st.append(rd.entries)
    n.advance()
    n.propose(b"hello")
    rd = n.ready()
    assert [e.data for e in rd.entries] == [b"hello"]
    st.append(rd.entries)
    n.advance()
    n.step(Message(MT.APP_RESP, to=1, frm=2, term=1, index=2))
    rd = n.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=2)
    assert [e.index for e in rd.committed_entries] == [1, 2]
    assert rd.entries == () and not rd.must_sync  # a commit change alone needs no fsync
    n.advance()
    assert n.raft.log.applied == 2


def test_restart_restores_hard_state_and_redelivers_unapplied() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    for i in range(3):
        net.propose(1, b"%d" % i)
    st = net.storage[2]
    hs = st.hard_state
    applied = net.base + 2
    n = RawNode(Config(id=2, storage=st, rng=random.Random(0), applied=applied))
    assert (n.raft.term, n.raft.vote, n.raft.log.committed) == (hs.term, hs.vote, hs.commit)
    rd = n.ready()
    assert [e.index for e in rd.committed_entries] == list(range(applied + 1, hs.commit + 1))
    assert rd.hard_state is None and rd.messages == ()


def test_restart_with_commit_beyond_log_is_refused() -> None:
    from securekv.raft import RaftError

    st = MemoryStorage(ConfState(voters=[1]))
    st.set_hard_state(HardState(term=1, commit=5))
    with pytest.raises(RaftError, match="out of range"):
        RawNode(Config(id=1, storage=st, rng=random.Random(0)))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(id=0), "id must be > 0"),
        (dict(election_tick=2, heartbeat_tick=2), "election_tick must be greater"),
        (dict(election_tick=0), "election_tick must be > 0"),
        (dict(max_inflight_msgs=0), "max_inflight_msgs must be > 0"),
        (dict(max_entries_per_msg=-1), "max_entries_per_msg must be >= 0"),
    ],
)
def test_config_validation(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(id=1, storage=MemoryStorage(), rng=random.Random(0))
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        Config(**args)  # type: ignore[arg-type]


def test_responses_from_unknown_peers_are_ignored() -> None:
    n, _ = node(voters=(1, 2), pre_vote=False)
    n.campaign()
    n.ready()
    n.advance()
    n.step(Message(MT.VOTE_RESP, to=1, frm=9, term=1))
    n.step(Message(MT.VOTE_RESP, to=1, frm=8, term=1))
    assert n.raft.state is Role.CANDIDATE


def test_forwarded_proposal_without_leader_is_dropped_quietly() -> None:
    n, _ = node()
    n.step(Message(MT.PROP, to=1, frm=2, entries=(Entry(0, 0, data=b"x"),)))
    assert not n.has_ready()


def test_status() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    s = net.nodes[1].status()
    assert s.soft_state == SoftState(1, Role.LEADER) and s.conf_state.voters == (1, 2, 3)
    assert sorted(s.progress) == [1, 2, 3]
    assert s.progress[2].state == "replicate" and s.progress[2].match == net.last_index(1)
    assert net.nodes[2].status().progress == {}


def _trace(seed: int) -> list[tuple[object, ...]]:
    net = Network([1, 2, 3, 4, 5], seed=seed, pre_vote=True, check_quorum=True)
    for i in range(60):
        net.tick()
        if i == 30 and net.leaders():
            net.propose(net.leaders()[0], b"w")
    return [(m.type, m.frm, m.to, m.term, m.index) for m in net.sent]


def test_same_seed_same_history() -> None:
    assert _trace(3) == _trace(3)
    assert any(_trace(s) != _trace(3) for s in (4, 5, 6))


def test_ready_messages_are_frozen() -> None:
    import attrs

    n, _ = node()
    n.campaign()
    m = n.ready().messages[0]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        m.term = 5  # type: ignore[misc]


# --------------------------------------------------------------- which messages must wait


def _drain_ready(n: RawNode, st: MemoryStorage) -> None:
    rd = n.ready()
    st.append(rd.entries)
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)
    n.advance()


def _candidate() -> tuple[RawNode, MemoryStorage]:
    n, st = node(pre_vote=False)
    n.campaign()
    return n, st


def _pre_candidate() -> tuple[RawNode, MemoryStorage]:
    n, st = node(pre_vote=True)
    n.campaign()
    return n, st


def _voter() -> tuple[RawNode, MemoryStorage]:
    n, st = node(pre_vote=False)
    n.step(Message(MT.VOTE, to=1, frm=2, term=3))
    return n, st


def _heartbeat_of_new_term() -> tuple[RawNode, MemoryStorage]:
    n, st = node()
    n.step(Message(MT.HEARTBEAT, to=1, frm=2, term=3, context=b"read-1"))
    return n, st


def _follower_appends_and_forwards() -> tuple[RawNode, MemoryStorage]:
    n, st = node()
    n.step(Message(MT.APP, to=1, frm=2, term=2, entries=(Entry(2, 1, data=b"a"),)))
    n.propose(b"forwarded")
    n.read_index(b"read-2")
    return n, st


def _leader_proposes() -> tuple[RawNode, MemoryStorage]:
    n, st = node(voters=(1, 2), pre_vote=False)
    n.campaign()
    _drain_ready(n, st)
    n.step(Message(MT.VOTE_RESP, to=1, frm=2, term=1))
    _drain_ready(n, st)
    n.step(Message(MT.APP_RESP, to=1, frm=2, term=1, index=1))  # 2 replicates from now on
    _drain_ready(n, st)
    n.propose(b"x")
    return n, st


def _leader_commits() -> tuple[RawNode, MemoryStorage]:
    n, st = _leader_proposes()
    _drain_ready(n, st)
    n.step(Message(MT.APP_RESP, to=1, frm=2, term=1, index=2))
    return n, st


@pytest.mark.parametrize(
    "scenario,must_sync,early,late",
    [
        (_candidate, True, [], [MT.VOTE, MT.VOTE]),  # our own vote must be durable first
        (_pre_candidate, False, [MT.PRE_VOTE, MT.PRE_VOTE], []),  # nothing to persist
        (_voter, True, [], [MT.VOTE_RESP]),
        (_heartbeat_of_new_term, True, [MT.HEARTBEAT_RESP], []),
        (_follower_appends_and_forwards, True, [MT.PROP, MT.READ_INDEX], [MT.APP_RESP]),
        (_leader_proposes, True, [], [MT.APP]),  # the leader counts its own unpersisted entry
        (_leader_commits, False, [MT.APP], []),  # a commit-index change alone risks nothing
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_ready_marks_messages_that_must_wait_for_persistence(
    scenario, must_sync: bool, early: list[MT], late: list[MT]
) -> None:
    n, _ = scenario()
    rd = n.ready()
    assert rd.must_sync is must_sync
    assert len(rd.after_persist) == len(rd.messages)
    assert [m.type for m in rd.messages_before_persist()] == early
    assert [m.type for m in rd.messages_after_persist()] == late
    assert sorted(rd.messages_before_persist() + rd.messages_after_persist(),
                  key=rd.messages.index) == list(rd.messages)


def test_hand_built_ready_keeps_every_message_until_persisted() -> None:
    from securekv.raft import Ready

    m = Message(MT.HEARTBEAT, to=2, frm=1, term=1)
    rd = Ready(messages=(m,))
    assert rd.messages_before_persist() == () and rd.messages_after_persist() == (m,)


def test_early_types_exclude_every_promise_about_durable_state() -> None:
    from securekv.raft import SEND_BEFORE_PERSIST

    assert not SEND_BEFORE_PERSIST & {MT.APP, MT.APP_RESP, MT.VOTE, MT.VOTE_RESP,
                                      MT.READ_INDEX_RESP}
    assert not SEND_BEFORE_PERSIST & LOCAL_MESSAGES
