"""The transport carrying the real Raft core: 3 RawNodes over mutual TLS elect a leader, commit,
and bring a member that missed compacted entries back with a chunked snapshot."""

from __future__ import annotations

import random

import trio

from securekv.raft import Config, MemoryStorage, RawNode, Role

from peer_helpers import Member, connect_all, make_tls, wait_connected, wait_for


class RaftMember:
    """A minimal node loop: tick on a timer, persist -> send -> apply -> advance on each Ready."""

    def __init__(self, member: Member, storage: MemoryStorage) -> None:
        self.member = member
        self.storage = storage
        self.node = RawNode(Config(id=member.id, storage=storage, rng=random.Random(member.id),
                                   election_tick=30, heartbeat_tick=1))
        self.applied: list[bytes] = []
        self.snapshot_data = b""
        self.wake = trio.Event()
        # the transport's callbacks feed the node, as in the server
        member.on_deliver = self._step
        member.on_unreachable = self.node.report_unreachable
        member.on_snapshot = self.node.report_snapshot

    def _step(self, m) -> None:
        self.node.step(m)
        self.wake.set()

    async def run(self) -> None:
        tick_at = trio.current_time()
        while True:
            with trio.move_on_at(tick_at):
                await self.wake.wait()
            self.wake = trio.Event()
            if trio.current_time() >= tick_at:
                self.node.tick()
                tick_at = trio.current_time() + 0.01
            while self.node.has_ready():
                rd = self.node.ready()
                if rd.snapshot is not None:
                    self.storage.apply_snapshot(rd.snapshot)
                    self.snapshot_data = rd.snapshot.data
                    self.applied = [bytes(x) for x in rd.snapshot.data.split(b",") if x]
                self.storage.append(list(rd.entries))
                if rd.hard_state is not None:
                    self.storage.set_hard_state(rd.hard_state)
                self.member.transport.send(rd.messages)
                for e in rd.committed_entries:
                    if e.data and e.type == 0:
                        self.applied.append(e.data)
                self.node.advance()

    def is_leader(self) -> bool:
        return self.node.status().soft_state.role == Role.LEADER


async def test_raft_cluster_over_tls_with_snapshot_catch_up(peer_certs, nursery) -> None:
    members = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2, 3)]
    for m in members:
        await m.listen()
    connect_all(members)
    nodes = [RaftMember(m, MemoryStorage.with_peers([1, 2, 3])) for m in members]
    for m in members:
        await m.start(nursery)
    await wait_connected(members)
    for n in nodes:
        nursery.start_soon(n.run)
    await wait_for(lambda: any(n.is_leader() for n in nodes), timeout=10, what="a leader")
    leader = next(n for n in nodes if n.is_leader())
    for i in range(50):
        leader.node.propose(b"k%d" % i)
        leader.wake.set()
    want = [b"k%d" % i for i in range(50)]
    await wait_for(lambda: all(n.applied == want for n in nodes), timeout=10, what="all applied")

    # Cut one follower off, commit more, compact the leader's log past what it has, heal:
    # the follower can only catch up from a snapshot (1 MiB+ of data: sent in chunks).
    lagging = next(n for n in nodes if n is not leader)
    await lagging.member.stop()
    for i in range(50, 60):
        leader.node.propose(b"k%d" % i)
        leader.wake.set()
    want = [b"k%d" % i for i in range(60)]
    others = [n for n in nodes if n is not lagging]
    await wait_for(lambda: all(n.applied == want for n in others), timeout=10, what="majority applied")
    applied_index = leader.node.raft.log.applied
    padding = b"," * (2 << 20)  # make the snapshot big enough to be chunked
    leader.storage.create_snapshot(applied_index, leader.node.raft.trk.conf_state(),
                                   b",".join(want) + padding)
    leader.storage.compact(applied_index)
    await lagging.member.restart(nursery)
    await wait_for(lambda: lagging.applied == want, timeout=15, what="lagging member restored from snapshot")
    assert len(lagging.snapshot_data) > 2 << 20
    assert leader.member.transport.stats()["peers"][lagging.member.id]["snapshots_sent"] >= 1
