"""Log compaction, snapshot transfer to lagging followers and snapshot install."""

from __future__ import annotations

import random

import pytest

from raft_testnet import MT, Network
from securekv.raft import (
    ConfChange,
    ConfChangeType,
    Config,
    ConfState,
    Entry,
    MemoryStorage,
    Message,
    RawNode,
    Snapshot,
    SnapshotMetadata,
    SnapshotTemporarilyUnavailable,
)
from securekv.raft.progress import ProgressState


def lagging_cluster(n_entries: int = 10) -> Network:
    """Node 3 missed ``n_entries`` that the leader has compacted away."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"first")
    net.isolate(3)
    for i in range(n_entries):
        net.propose(1, b"e%d" % i)
    net.compact(1)
    return net


def test_lagging_follower_receives_and_installs_snapshot() -> None:
    net = lagging_cluster()
    net.heal()
    net.tick(1, 1)
    snaps = [m for m in net.sent if m.type is MT.SNAP]
    assert [m.to for m in snaps] == [3]
    assert net.storage[3].snapshot().metadata.index == net.storage[1].snapshot().metadata.index
    assert net.applied_data(3) == net.applied_data(1)
    net.propose(1, b"after")
    assert net.applied_data(3)[-1] == b"after"
    assert net.log(3) == net.log(1)
    assert net.raft(1).trk.progress[3].state is ProgressState.REPLICATE


def test_lost_snapshot_is_resent_after_election_timeout() -> None:
    net = lagging_cluster()
    net.heal()
    net.drop_types = {MT.SNAP}
    net.tick(1, 1)
    assert net.raft(1).trk.progress[3].state is ProgressState.SNAPSHOT
    net.drop_types = set()
    net.tick(1, 25)
    assert net.applied_data(3) == net.applied_data(1)


def test_report_snapshot_failure_retries() -> None:
    net = lagging_cluster()
    net.heal()
    net.drop_types = {MT.SNAP}
    net.tick(1, 1)
    net.drop_types = set()
    net.nodes[1].report_snapshot(3, failed=True)
    assert net.raft(1).trk.progress[3].state is ProgressState.PROBE
    net.tick(1, 1)  # heartbeat response unpauses the probe: snapshot sent again
    assert net.applied_data(3) == net.applied_data(1)


def test_unreachable_report_moves_replicating_peer_to_probe() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    assert net.raft(1).trk.progress[2].state is ProgressState.REPLICATE
    net.nodes[1].report_unreachable(2)
    assert net.raft(1).trk.progress[2].state is ProgressState.PROBE


def test_stale_snapshot_is_ignored() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    for i in range(3):
        net.propose(1, b"%d" % i)
    committed = net.committed(2)
    old = Snapshot(SnapshotMetadata(2, 1, ConfState(voters=[1, 2, 3])), b"[]")
    net.sent.clear()
    net.send(Message(MT.SNAP, to=2, frm=1, term=1, snapshot=old))
    (resp,) = [m for m in net.sent if m.frm == 2]
    assert (resp.type, resp.index, resp.reject) == (MT.APP_RESP, committed, False)
    assert net.storage[2].snapshot().metadata.index == 0


def test_snapshot_of_entries_we_hold_fast_forwards_commit() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    st.append([Entry(1, 1), Entry(1, 2), Entry(1, 3)])
    node = RawNode(Config(id=2, storage=st, rng=random.Random(0)))
    snap = Snapshot(SnapshotMetadata(2, 1, ConfState(voters=[1, 2])), b"")
    node.step(Message(MT.SNAP, to=2, frm=1, term=1, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None and node.raft.log.committed == 2
    assert [e.index for e in rd.committed_entries] == [1, 2]


def test_snapshot_install_replaces_conflicting_log_and_config() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2, 3]))
    st.append([Entry(1, 1), Entry(1, 2)])
    node = RawNode(Config(id=2, storage=st, rng=random.Random(0)))
    snap = Snapshot(SnapshotMetadata(11, 2, ConfState(voters=[1, 2], learners=[5])), b"sm")
    node.step(Message(MT.SNAP, to=2, frm=1, term=2, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap and rd.committed_entries == ()
    assert rd.hard_state is not None and rd.hard_state.commit == 11
    assert [m.index for m in rd.messages if m.type is MT.APP_RESP] == [11]
    st.apply_snapshot(snap)
    node.advance()
    assert node.raft.trk.conf_state() == ConfState(voters=[1, 2], learners=[5])
    assert node.raft.log.applied == 11 and node.raft.log.last_index() == 11
    assert node.raft.promotable()


def test_snapshot_without_us_in_the_config_is_ignored() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    node = RawNode(Config(id=2, storage=st, rng=random.Random(0)))
    snap = Snapshot(SnapshotMetadata(5, 1, ConfState(voters=[1, 3])), b"")
    node.step(Message(MT.SNAP, to=2, frm=1, term=1, snapshot=snap))
    assert node.ready().snapshot is None


def test_node_with_pending_snapshot_does_not_campaign() -> None:
    st = MemoryStorage(ConfState(voters=[1, 2]))
    node = RawNode(Config(id=2, storage=st, rng=random.Random(0)))
    snap = Snapshot(SnapshotMetadata(5, 1, ConfState(voters=[1, 2])), b"")
    node.step(Message(MT.SNAP, to=2, frm=1, term=1, snapshot=snap))
    assert not node.raft.promotable()


def test_new_member_after_compaction_gets_config_from_snapshot() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.propose(1, b"a")
    net.compact(1)
    net.add_node(4)
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_NODE, 4))
    net.drain()
    net.tick(1, 2)
    assert net.raft(4).trk.conf_state() == ConfState(voters=[1, 2, 3, 4])
    assert net.applied_data(4) == [b"a"]
    net.propose(1, b"b")
    assert net.applied_data(4) == [b"a", b"b"]


def test_restart_from_snapshot_and_log() -> None:
    net = lagging_cluster(5)
    net.heal()
    net.tick(1, 1)
    net.propose(1, b"tail")
    net.restart(3)
    net.drain()
    assert net.applied_data(3) == net.applied_data(1)
    assert net.raft(3).trk.conf_state() == ConfState(voters=[1, 2, 3])
    net.isolate(1)
    for _ in range(60):
        net.tick(2)
        net.tick(3)
    assert [n for n in net.leaders() if n != 1] in ([2], [3])


class FlakySnapshotStorage(MemoryStorage):
    """A storage that cannot produce a snapshot the first ``failures`` times."""

    failures = 1

    def snapshot(self) -> Snapshot:
        if self.failures > 0:
            self.failures -= 1
            raise SnapshotTemporarilyUnavailable()
        return super().snapshot()


def test_snapshot_temporarily_unavailable_is_retried() -> None:
    net = Network([1, 2, 3])
    flaky = FlakySnapshotStorage.with_peers([1, 2, 3])
    net.add_node(1, flaky)
    net.elect(1)
    net.propose(1, b"a")
    net.isolate(3)
    net.propose(1, b"b")
    net.compact(1)
    net.heal()
    net.tick(1, 1)
    assert flaky.failures == 0
    net.tick(1, 2)
    assert net.applied_data(3) == [b"a", b"b"]


@pytest.mark.parametrize("crash_point", ["before-persist", "after-persist"])
def test_unpersisted_entries_are_not_acknowledged(crash_point: str) -> None:
    """Messages of a Ready leave only after persisting: a crash before persisting loses the
    entries but nobody was told they were stored."""
    net = Network([1, 2, 3])
    net.elect(1)
    net.nodes[1].propose(b"x")
    net.drain()
    # Deliver the leader's append to 2 but crash 2 before/after it handles its Ready.
    net.nodes[1].propose(b"y")
    msgs = net.handle_ready(1)
    net.deliver([m for m in msgs if m.to == 2])
    if crash_point == "after-persist":
        msgs2 = net.handle_ready(2)
        assert any(m.type is MT.APP_RESP and not m.reject for m in msgs2)
    net.restart(2)
    stored = [e.data for e in net.storage[2].entries(1, net.storage[2].last_index() + 1)]
    assert (b"y" in stored) is (crash_point == "after-persist")
