"""Server-side v3lock / v3election services over gRPC (the same calls against etcd)."""

from __future__ import annotations

import threading

import grpc
import pytest

from securekv.proto import rpc_pb2, rpc_pb2_grpc, v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc


def _channel(member) -> grpc.Channel:
    c = member.certs
    creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.client_key.read_bytes(), c.client_cert.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{member.port}", creds)


def test_lock_unlock_and_election(server) -> None:
    with _channel(server) as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        election = v3election_pb2_grpc.ElectionStub(ch)
        l1 = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)).ID
        l2 = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)).ID
        held = lock.Lock(v3lock_pb2.LockRequest(name=b"mtx", lease=l1), timeout=10)
        assert held.key == b"mtx/%x" % l1 and held.header.revision > 0
        second: dict = {}

        def wait_second() -> None:
            second["resp"] = lock.Lock(v3lock_pb2.LockRequest(name=b"mtx", lease=l2), timeout=20)

        t = threading.Thread(target=wait_second)
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive()  # blocked while mtx is held
        lock.Unlock(v3lock_pb2.UnlockRequest(key=held.key), timeout=10)
        t.join(timeout=20)
        assert second["resp"].key == b"mtx/%x" % l2

        c1 = election.Campaign(v3election_pb2.CampaignRequest(name=b"el", lease=l1, value=b"one"), timeout=10)
        assert c1.leader.key == b"el/%x" % l1 and c1.leader.lease == l1
        assert election.Leader(v3election_pb2.LeaderRequest(name=b"el"), timeout=10).kv.value == b"one"
        observe = election.Observe(v3election_pb2.LeaderRequest(name=b"el"), timeout=20)
        assert next(observe).kv.value == b"one"
        election.Proclaim(v3election_pb2.ProclaimRequest(leader=c1.leader, value=b"uno"), timeout=10)
        assert next(observe).kv.value == b"uno"
        observe.cancel()
        election.Resign(v3election_pb2.ResignRequest(leader=c1.leader), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            election.Leader(v3election_pb2.LeaderRequest(name=b"el"), timeout=10)
        assert info.value.details() == "election: no leader"
        stale = v3election_pb2.LeaderKey(name=b"el", key=c1.leader.key, rev=c1.leader.rev, lease=l1)
        with pytest.raises(grpc.RpcError) as info:
            election.Proclaim(v3election_pb2.ProclaimRequest(leader=stale, value=b"x"), timeout=10)
        assert info.value.details() == "election: not leader"
        assert kv.Range(rpc_pb2.RangeRequest(key=b"el/", range_end=b"el0")).count == 0


def test_lock_waiter_that_gives_up_leaves_the_queue(member) -> None:
    with _channel(member) as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch)
        kv = rpc_pb2_grpc.KVStub(ch)
        l1 = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)).ID
        l2 = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=30)).ID
        lock.Lock(v3lock_pb2.LockRequest(name=b"q", lease=l1), timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            lock.Lock(v3lock_pb2.LockRequest(name=b"q", lease=l2), timeout=1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        import time

        deadline = time.monotonic() + 10
        while kv.Range(rpc_pb2.RangeRequest(key=b"q/", range_end=b"q0")).count != 1:
            assert time.monotonic() < deadline, "the abandoned waiter's key was not removed"
            time.sleep(0.05)
