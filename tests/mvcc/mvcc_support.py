"""Request builders and a small driver for the MVCC/applier unit tests: every write goes through
``Applier.apply`` with a real ``Lessor``, exactly as the server feeds committed entries."""

from __future__ import annotations

from typing import Any

import pytest

from securekv.apply import Applier, ApplyResult
from securekv.lease import Lessor
from securekv.mvcc import MVCCStore, prefix_end
from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.rpctypes import EtcdError

IRR = raft_internal_pb2.InternalRaftRequest
SORT = {"KEY": 0, "VERSION": 1, "CREATE": 2, "MOD": 3, "VALUE": 4}
ORDER = {"NONE": 0, "ASCEND": 1, "DESCEND": 2}
TARGET = {"version": 0, "create": 1, "mod": 2, "value": 3, "lease": 4}
RESULT = {"=": 0, ">": 1, "<": 2, "!=": 3}


def b(x: bytes | str) -> bytes:
    return x.encode() if isinstance(x, str) else x


def range_req(key: bytes | str, end: bytes | str = b"", *, prefix: bool = False, **kw: Any) -> rpc_pb2.RangeRequest:
    k = b(key)
    e = prefix_end(k) if prefix else b(end)
    for name, table in (("sort_target", SORT), ("sort_order", ORDER)):
        if isinstance(kw.get(name), str):
            kw[name] = table[kw[name]]
    return rpc_pb2.RangeRequest(key=k, range_end=e, **kw)


def put_req(key: bytes | str, value: bytes | str = b"", **kw: Any) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(key=b(key), value=b(value), **kw)


def del_req(key: bytes | str, end: bytes | str = b"", *, prefix: bool = False, **kw: Any) -> rpc_pb2.DeleteRangeRequest:
    k = b(key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=prefix_end(k) if prefix else b(end), **kw)


def cmp(target: str, key: bytes | str, op: str, value: Any, range_end: bytes | str = b"") -> rpc_pb2.Compare:
    c = rpc_pb2.Compare(target=TARGET[target], result=RESULT[op], key=b(key), range_end=b(range_end))
    if target == "value":
        c.value = b(value)
    else:
        setattr(c, {"version": "version", "create": "create_revision", "mod": "mod_revision",
                    "lease": "lease"}[target], value)
    return c


def op(req: Any) -> rpc_pb2.RequestOp:
    if isinstance(req, rpc_pb2.RangeRequest):
        return rpc_pb2.RequestOp(request_range=req)
    if isinstance(req, rpc_pb2.PutRequest):
        return rpc_pb2.RequestOp(request_put=req)
    if isinstance(req, rpc_pb2.DeleteRangeRequest):
        return rpc_pb2.RequestOp(request_delete_range=req)
    return rpc_pb2.RequestOp(request_txn=req)


def txn_req(compare=(), success=(), failure=()) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(compare=list(compare), success=[op(r) for r in success],
                              failure=[op(r) for r in failure])


def entry(req: Any, member_id: int = 0x1234) -> Any:
    """Wrap a request into an InternalRaftRequest, the log entry payload."""
    field = {
        rpc_pb2.RangeRequest: "range", rpc_pb2.PutRequest: "put", rpc_pb2.DeleteRangeRequest: "delete_range",
        rpc_pb2.TxnRequest: "txn", rpc_pb2.CompactionRequest: "compaction",
        rpc_pb2.LeaseGrantRequest: "lease_grant", rpc_pb2.LeaseRevokeRequest: "lease_revoke",
        rpc_pb2.AlarmRequest: "alarm", rpc_pb2.LeaseCheckpointRequest: "lease_checkpoint",
    }[type(req)]
    e = IRR(header=raft_internal_pb2.RequestHeader(ID=1, member_id=member_id))
    getattr(e, field).CopyFrom(req)
    return e


class Node:
    """One member's state machine: an MVCCStore, a Lessor and the Applier over them."""

    def __init__(self, quota_bytes: int = 0) -> None:
        self.store = MVCCStore()
        self.lessor = Lessor(min_ttl=1)
        self.applier = Applier(self.store, self.lessor, quota_bytes=quota_bytes)
        self.index = 0
        self.results: list[ApplyResult] = []

    def apply(self, req: Any) -> ApplyResult:
        self.index += 1
        r = self.applier.apply(self.index, entry(req))
        self.results.append(r)
        return r

    def ok(self, req: Any) -> Any:
        r = self.apply(req)
        assert r.error is None, r.error
        return r.response

    def fails(self, req: Any) -> EtcdError:
        before = (self.store.current_revision, self.store.hash_kv()[0], len(self.store))
        r = self.apply(req)
        assert r.error is not None, f"expected an error, got {r.response}"
        assert r.kv is None and r.events == ()
        assert (self.store.current_revision, self.store.hash_kv()[0], len(self.store)) == before
        return r.error

    def put(self, key: bytes | str, value: bytes | str = b"", **kw: Any) -> rpc_pb2.PutResponse:
        return self.ok(put_req(key, value, **kw))

    def delete(self, key: bytes | str, end: bytes | str = b"", **kw: Any) -> rpc_pb2.DeleteRangeResponse:
        return self.ok(del_req(key, end, **kw))

    def txn(self, compare=(), success=(), failure=()) -> rpc_pb2.TxnResponse:
        return self.ok(txn_req(compare, success, failure))

    def grant(self, lease_id: int, ttl: int = 60) -> rpc_pb2.LeaseGrantResponse:
        return self.ok(rpc_pb2.LeaseGrantRequest(ID=lease_id, TTL=ttl))

    def revoke(self, lease_id: int) -> ApplyResult:
        r = self.apply(rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        assert r.error is None, r.error
        return r

    def compact(self, rev: int) -> ApplyResult:
        return self.apply(rpc_pb2.CompactionRequest(revision=rev))

    def get(self, key: bytes | str, end: bytes | str = b"", **kw: Any) -> rpc_pb2.RangeResponse:
        return self.store.range(range_req(key, end, **kw))

    def value(self, key: bytes | str, rev: int = 0) -> bytes | None:
        kvs = self.get(key, revision=rev).kvs
        return kvs[0].value if kvs else None

    def keys(self, key: bytes | str = b"\0", end: bytes | str = b"\0", **kw: Any) -> list[bytes]:
        return [kv.key for kv in self.get(key, end, **kw).kvs]


def raises(message_part: str):
    """pytest.raises for an EtcdError whose message contains ``message_part``."""
    return pytest.raises(EtcdError, match=message_part)
