"""The node loop with the real WAL, backend, MVCC store and applier (in-process, trio)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from securekv.api.auth_gate import AuthGate
from securekv.api.identity import Identity
from securekv.config import resolve
from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.rpctypes import EtcdError
from securekv.server.node import Node
from securekv.server.persist import to_write_batches
from securekv.server.run import _State


class _Hub:
    def __init__(self) -> None:
        self.notified: list[int] = []

    def notify(self, revision, events) -> None:
        self.notified.append(revision)

    def compact(self, revision) -> None:
        pass


def _state(tmp_path: Path) -> _State:
    config = resolve({"data_dir": str(tmp_path / "d")}, {})
    return _State(config, 1, 2, lambda: 0.0)


def _put(key: bytes, user: str = "") -> raft_internal_pb2.InternalRaftRequest:
    req = raft_internal_pb2.InternalRaftRequest(put=rpc_pb2.PutRequest(key=key, value=b"v"))
    req.header.username = user
    return req


async def test_group_commit_batches_concurrent_proposals(tmp_path: Path) -> None:
    state = _state(tmp_path)
    hub = _Hub()
    node = Node(wal=state.wal, backend=state.backend, applier=state.applier, hub=hub, term=state.term,
                member_id=1, max_request_bytes=1 << 20, to_write_batch=to_write_batches)
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)

        async def one(i: int) -> None:
            result = await node.propose(_put(b"k%03d" % i, "alice"))
            results.append(result.revision)

        async with trio.open_nursery() as clients:
            for i in range(64):
                clients.start_soon(one, i)
        await node.wait_committed(node.last_index)
        nursery.cancel_scope.cancel()
    assert sorted(results) == list(range(2, 66))  # one revision per put, all acknowledged
    assert node.stats.entries == 64 and node.stats.batches < 64  # fewer fsyncs than entries
    assert hub.notified == sorted(hub.notified) and len(hub.notified) == 64
    state.close()
    # Restart: everything is in the backend; nothing to replay, data intact.
    again = _state(tmp_path)
    assert again.store.current_revision == 65
    assert again.term == state.term + 1
    again.close()


async def test_too_large_proposal_is_refused_before_the_log(tmp_path: Path) -> None:
    state = _state(tmp_path)
    node = Node(wal=state.wal, backend=state.backend, applier=state.applier, hub=_Hub(), term=state.term,
                member_id=1, max_request_bytes=100, to_write_batch=to_write_batches)
    before = state.wal.last_index  # the founders' conf-change entries of a new member
    with pytest.raises(EtcdError) as info:
        node.encode(raft_internal_pb2.InternalRaftRequest(put=rpc_pb2.PutRequest(key=b"k", value=b"x" * 200)))
    assert info.value.message == "etcdserver: request is too large"
    assert state.wal.last_index == before
    state.close()


def test_auth_gate_identity() -> None:
    gate = AuthGate()
    identity = Identity(common_name="root", remote="127.0.0.1:1", serial="0A")
    assert gate.identify(identity, ()).username == "root"
    with_token = gate.identify(identity, (("token", "abc"),))
    assert with_token.username == "" and with_token.token == "abc"  # a token wins over the CN
    assert gate.identify(identity, (("authorization", "xyz"),)).token == "xyz"  # the gateway's header
    assert gate.identify(Identity(remote="127.0.0.1:2", tls=False), ()).username == ""
