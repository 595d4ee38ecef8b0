"""etcd's backend-quota cost of a request (``etcdserver/quota.go``)."""

from __future__ import annotations

from typing import Any

from securekv.proto import rpc_pb2

LEASE_OVERHEAD = 64
KV_OVERHEAD = 256
DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024


def _cost_put(p: Any) -> int:
    return KV_OVERHEAD + len(p.key) + len(p.value)


def _cost_ops(ops: Any) -> int:
    return sum(_cost_put(op.request_put) for op in ops if op.WhichOneof("request") == "request_put")


def request_cost(req: Any) -> int:
    """Bytes a Put, Txn (larger branch, top-level puts only) or LeaseGrant may add; else 0."""
    if isinstance(req, rpc_pb2.PutRequest):
        return _cost_put(req)
    if isinstance(req, rpc_pb2.TxnRequest):
        return max(_cost_ops(req.success), _cost_ops(req.failure))
    if isinstance(req, rpc_pb2.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


def effective_quota(quota_bytes: int) -> int:
    """etcd's --quota-backend-bytes: 0 means the 2 GiB default, negative disables (returns 0)."""
    if quota_bytes < 0:
        return 0
    return quota_bytes or DEFAULT_QUOTA_BYTES
