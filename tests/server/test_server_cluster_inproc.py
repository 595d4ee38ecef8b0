"""Three real Nodes (WAL, backend, MVCC applier, Raft) in one trio run, wired by a loopback
transport: elections, a write proposed on a follower, a linearizable read on another, and
failover when the leader stops."""

from __future__ import annotations

from pathlib import Path

import trio

from securekv.config import resolve
from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.server.node import Node
from securekv.server.persist import to_write_batches
from securekv.server.run import _State, cluster_ids

URLS = {"a": "https://127.0.0.1:1", "b": "https://127.0.0.1:2", "c": "https://127.0.0.1:3"}


class _Hub:
    def notify(self, revision, events) -> None:
        pass

    def compact(self, revision) -> None:
        pass


class Loopback:
    """Delivers each message to the target node unless either side is down."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.down: set[int] = set()

    def send(self, messages) -> None:
        for m in messages:
            if m.frm in self.down or m.to in self.down or m.to not in self.nodes:
                continue
            self.nodes[m.to].deliver(m)

    def peers(self) -> dict:
        return {}

    def add_peer(self, *a) -> None: ...
    def update_peer(self, *a) -> None: ...
    def remove_peer(self, *a) -> None: ...

    def active_since(self, member_id: int):
        return None if member_id in self.down else 0.0


def _node(tmp_path: Path, name: str, net: Loopback) -> tuple[_State, Node]:
    config = resolve({"name": name, "data_dir": str(tmp_path / name),
                      "initial_cluster": ",".join(f"{n}={u}" for n, u in URLS.items()),
                      "initial_advertise_peer_urls": URLS[name], "initial_cluster_token": "t"}, {})
    st = _State(config, *cluster_ids(config), trio.current_time)
    node = Node(wal=st.wal, backend=st.backend, applier=st.applier, hub=_Hub(), member_id=st.member_id,
                max_request_bytes=1 << 20, to_write_batch=to_write_batches, raft_storage=st.raft_storage,
                membership=st.membership, raft_applied=st.raft_applied, election_tick=10, tick_seconds=0.01)
    node.transport = net
    net.nodes[st.member_id] = node
    return st, node


async def _leader(nodes: list[Node]) -> Node:
    with trio.fail_after(20):
        while True:
            leads = {n.leader for n in nodes}
            if len(leads) == 1 and leads <= {n.member_id for n in nodes}:
                return next(n for n in nodes if n.is_leader)
            await trio.sleep(0.01)


def _put(key: bytes, value: bytes) -> raft_internal_pb2.InternalRaftRequest:
    return raft_internal_pb2.InternalRaftRequest(put=rpc_pb2.PutRequest(key=key, value=value))


def _get(st: _State, key: bytes) -> list[bytes]:
    return [kv.value for kv in st.store.range(rpc_pb2.RangeRequest(key=key)).kvs]


def _start_all(nursery: trio.Nursery, nodes: list) -> dict[int, trio.CancelScope]:
    """Run every node's loop in its own cancel scope (cancelling one = killing that member)."""
    scopes = {}
    for node in nodes:
        scope = trio.CancelScope()
        scopes[node.member_id] = scope

        async def run(node=node, scope=scope) -> None:
            with scope:
                await node.run()

        nursery.start_soon(run)
    return scopes


async def test_three_nodes_forward_read_and_fail_over(tmp_path: Path) -> None:
    net = Loopback()
    members = [_node(tmp_path, n, net) for n in URLS]
    states = [s for s, _ in members]
    nodes = [n for _, n in members]
    async with trio.open_nursery() as nursery:
        scopes = _start_all(nursery, nodes)
        leader = await _leader(nodes)
        followers = [n for n in nodes if n is not leader]
        # The founders' membership was applied from the log on every member.
        assert all(sorted(n.membership.members) == sorted(n2.member_id for n2 in nodes) for n in nodes)

        result = await followers[0].propose(_put(b"k", b"v1"))  # forwarded to the leader by Raft
        assert result.revision == 2
        await followers[1].wait_read_index()  # linearizable: applied up to the leader's commit
        other = states[nodes.index(followers[1])]
        assert _get(other, b"k") == [b"v1"]

        # The leader goes away: the other two elect a new one and keep committing.
        net.down.add(leader.member_id)
        scopes[leader.member_id].cancel()
        new = await _leader(followers)
        assert new is not leader and new.term > leader.term
        result = await followers[1].propose(_put(b"k", b"v2"))
        assert result.revision == 3
        await followers[0].wait_read_index()
        assert _get(states[nodes.index(followers[0])], b"k") == [b"v2"]
        nursery.cancel_scope.cancel()
    for st in states:
        st.close()


async def test_member_apis_follow_etcds_rules(tmp_path: Path) -> None:
    import pytest

    from securekv.rpctypes import EtcdError
    from securekv.server.etcdserver import EtcdServer

    net = Loopback()
    members = [_node(tmp_path, n, net) for n in URLS]
    nodes = [n for _, n in members]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        leader = await _leader(nodes)
        st = members[nodes.index(leader)][0]
        etcd = EtcdServer(node=leader, store=st.store, lessor=st.lessor, applier=st.applier, hub=_Hub(),
                          backend=st.backend, cluster_id=st.cluster_id, member_id=st.member_id, name="x",
                          peer_urls=[], client_urls=[], max_txn_ops=128)
        etcd.transport = net
        etcd.cluster_token = "t"

        async def code(coro) -> str:
            with pytest.raises(EtcdError) as info:
                await coro
            return info.value.message

        assert await code(etcd.member_remove(rpc_pb2.MemberRemoveRequest(ID=12345), None)) == \
            "etcdserver: member not found"
        assert await code(etcd.member_add(rpc_pb2.MemberAddRequest(peerURLs=[URLS["b"]]), None)) == \
            "etcdserver: Peer URLs already exists"
        resp = await etcd.member_add(rpc_pb2.MemberAddRequest(peerURLs=["https://127.0.0.1:4"], isLearner=True), None)
        learner = resp.member.ID
        assert resp.member.isLearner and learner in leader.conf_state().learners
        for node in nodes:  # applied everywhere from the log
            with trio.fail_after(10):
                while learner not in node.membership.members:
                    await node.wait_applied()
        # The learner never started: it is not in sync, so it cannot be promoted.
        assert await code(etcd.member_promote(rpc_pb2.MemberPromoteRequest(ID=learner), None)) == \
            "etcdserver: can only promote a learner member which is in sync with leader"
        await etcd.member_remove(rpc_pb2.MemberRemoveRequest(ID=learner), None)
        assert learner in leader.membership.removed
        # Strict reconfiguration (etcd's mayAddMember): all three voters started (published), but
        # one is unreachable: a passing state, etcd's retryable "unhealthy cluster" — never the
        # lasting "not enough started members".
        other = next(n for n in nodes if n is not leader)
        net.down.add(other.member_id)
        assert await code(etcd.member_add(rpc_pb2.MemberAddRequest(peerURLs=["https://127.0.0.1:5"]), None)) == \
            "etcdserver: unhealthy cluster"
        nursery.cancel_scope.cancel()
    for st, _ in members:
        st.close()


class _PeerView:
    """One member's side of the loopback: Raft messages plus request/response calls."""

    def __init__(self, net: Loopback, me: int) -> None:
        self.net, self.me = net, me
        self.handlers: dict[str, object] = {}

    def send(self, messages) -> None:
        self.net.send(messages)

    def register_call(self, kind, handler) -> None:
        self.handlers[kind] = handler

    async def call(self, to_id, kind, payload, timeout=5.0) -> bytes:
        from securekv.errors import PeerError

        if to_id in self.net.down or self.me in self.net.down:
            raise PeerError("down")
        return await self.net.views[to_id].handlers[kind](self.me, payload)

    def peers(self) -> dict:
        return {}

    def add_peer(self, *a) -> None: ...
    def update_peer(self, *a) -> None: ...
    def remove_peer(self, *a) -> None: ...

    def active_since(self, member_id: int):
        return self.net.active_since(member_id)


async def test_leases_live_on_the_leader_and_survive_a_leader_change(tmp_path: Path) -> None:
    from securekv.server.etcdserver import EtcdServer

    net = Loopback()
    net.views = {}
    members = [_node(tmp_path, n, net) for n in URLS]
    servers = {}
    for st, node in members:
        view = _PeerView(net, node.member_id)
        net.views[node.member_id] = view
        node.transport = view
        etcd = EtcdServer(node=node, store=st.store, lessor=st.lessor, applier=st.applier, hub=_Hub(),
                          backend=st.backend, cluster_id=st.cluster_id, member_id=st.member_id, name="x",
                          peer_urls=[], client_urls=[], max_txn_ops=128)
        etcd.transport = view
        etcd.election_timeout = 0.1
        etcd.register_peer_calls(view)
        node.on_leader_change = etcd.on_leader_change
        servers[node.member_id] = etcd
    nodes = [n for _, n in members]
    async with trio.open_nursery() as nursery:
        scopes = _start_all(nursery, nodes)
        leader = await _leader(nodes)
        follower = next(n for n in nodes if n is not leader)
        fs = servers[follower.member_id]
        grant = await fs.lease_grant(rpc_pb2.LeaseGrantRequest(ID=77, TTL=30), _Caller())
        assert grant.ID == 77
        assert servers[leader.member_id].lessor.is_primary and not fs.lessor.is_primary
        # Keepalive and TimeToLive on a follower are answered by the leader's lessor.
        assert (await fs.keepalive_async(77)).TTL == 30
        ttl = await fs.lease_time_to_live(rpc_pb2.LeaseTimeToLiveRequest(ID=77), _Caller())
        assert 0 < ttl.TTL <= 30 and ttl.grantedTTL == 30
        # The leader goes away: the new one promotes its lessor, the lease is still alive.
        net.down.add(leader.member_id)
        scopes[leader.member_id].cancel()
        rest = [n for n in nodes if n is not leader]
        new = await _leader(rest)
        assert servers[new.member_id].lessor.is_primary
        other = next(n for n in rest if n is not new)
        assert (await servers[other.member_id].keepalive_async(77)).TTL == 30
        nursery.cancel_scope.cancel()
    for st, _ in members:
        st.close()


class _Caller:
    from securekv.api.identity import Identity

    username = ""
    auth_revision = 1
    identity = Identity(remote="127.0.0.1:1")  # whose leases these are (--max-leases-per-identity)
