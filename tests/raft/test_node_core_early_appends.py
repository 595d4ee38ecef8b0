"""NodeCore(leader_appends_early=True): a leader's appends leave before its own Persist (the
followers write in parallel), and acknowledgements received meanwhile count only once the
leader's copy is durable."""

from __future__ import annotations

import random

from raft_testnet import Network, RecordingMachine

from securekv.node import NodeCore
from securekv.node import effects as fx
from securekv.raft import Config, MessageType as MT


def _early_core(net: Network, nid: int) -> NodeCore:
    old = net.cores[nid]
    core = NodeCore(Config(id=nid, storage=net.storage[nid], rng=random.Random(nid), applied=old.raw.raft.log.applied,
                           **net.cfg),  # type: ignore[arg-type]
                    RecordingMachine(net.applied[nid], old.raw.raft.log.applied), clock=lambda: 0.0,
                    snapshot_count=0, leader_appends_early=True)
    net.cores[nid] = core
    net.nodes[nid] = core.raw
    return core


def test_a_leaders_appends_leave_before_its_persist_and_acks_wait_for_it() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.drain()
    leader = _early_core(net, 1)  # same durable state, now sending appends early
    leader.campaign()
    net.drain()
    assert net.role(1).name == "LEADER"
    leader.propose_raw(b"x")
    effects = leader.poll()
    kinds = [type(e) for e in effects]
    assert fx.SendMessages in kinds and fx.Persist in kinds
    assert kinds.index(fx.SendMessages) < kinds.index(fx.Persist)  # appends first
    apps = [m for e in effects if isinstance(e, fx.SendMessages) for m in e.messages]
    assert {m.to for m in apps if m.type == MT.APP} == {2, 3}
    index = max(m.entries[-1].index for m in apps if m.entries)
    # Both followers persist and answer while the leader's own fsync is still running.
    acks = []
    for nid in (2, 3):
        net.deliver([m for m in apps if m.to == nid])
        acks += [m for m in net.handle_ready(nid) if m.type == MT.APP_RESP and m.to == 1]
    for m in acks:
        leader.receive(m)
    assert leader.commit_index < index  # held: nothing commits before the leader's copy is durable
    leader.persisted()
    assert leader.commit_index >= index  # stepped once the Ready was persisted
