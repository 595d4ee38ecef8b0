"""Request checks the API layer runs before proposing (etcd's v3rpc ``check*Request``).

They need no store state, so a rejected request never reaches the log and changes nothing.
"""

from __future__ import annotations

from typing import Any

from securekv.rpctypes import (
    ERR_DUPLICATE_KEY,
    ERR_EMPTY_KEY,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_PROVIDED,
    ERR_TOO_MANY_OPS,
    ERR_VALUE_PROVIDED,
    err,
)

DEFAULT_MAX_TXN_OPS = 128


def validate_range(r: Any) -> None:
    if not r.key:
        raise err(ERR_EMPTY_KEY)


def validate_put(r: Any) -> None:
    if not r.key:
        raise err(ERR_EMPTY_KEY)
    if r.ignore_value and r.value:
        raise err(ERR_VALUE_PROVIDED)
    if r.ignore_lease and r.lease != 0:
        raise err(ERR_LEASE_PROVIDED)


def validate_delete_range(r: Any) -> None:
    if not r.key:
        raise err(ERR_EMPTY_KEY)


def validate_compaction(r: Any) -> None:
    """Compaction has no request-only checks (revisions are checked at apply time)."""


def validate_txn(r: Any, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """Size, key and duplicate-key checks of a TxnRequest, in etcd's order."""
    _check_txn(r, max_txn_ops)
    _intervals(r.success)
    _intervals(r.failure)


def _check_txn(r: Any, max_txn_ops: int) -> None:
    opc = max(len(r.compare), len(r.success), len(r.failure))
    if opc > max_txn_ops:
        raise err(ERR_TOO_MANY_OPS)
    for c in r.compare:
        if not c.key:
            raise err(ERR_EMPTY_KEY)
    for op in r.success:
        _check_op(op, max_txn_ops - opc)
    for op in r.failure:
        _check_op(op, max_txn_ops - opc)


def _check_op(op: Any, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        validate_range(op.request_range)
    elif kind == "request_put":
        validate_put(op.request_put)
    elif kind == "request_delete_range":
        validate_delete_range(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn(op.request_txn, max_txn_ops)
    else:
        raise err(ERR_KEY_NOT_FOUND)  # an empty RequestOp, as etcd answers it


class _Dels:
    """The delete ranges of one txn level; a tiny stand-in for etcd's interval tree."""

    def __init__(self) -> None:
        self.points: set[bytes] = set()
        self.ranges: list[tuple[bytes, bytes | None]] = []

    def add(self, key: bytes, range_end: bytes) -> None:
        if not range_end:
            self.points.add(key)
        else:
            # etcd builds the interval from the raw range_end, so a from-key delete ("\0")
            # is the empty interval [key, "\0") and conflicts with no put: kept as etcd has it.
            self.ranges.append((key, range_end))

    def union(self, other: _Dels) -> None:
        self.points |= other.points
        self.ranges.extend(other.ranges)

    def hits(self, k: bytes) -> bool:
        if k in self.points:
            return True
        return any(lo <= k < hi for lo, hi in self.ranges)  # type: ignore[operator]


def _intervals(reqs: Any) -> tuple[set[bytes], _Dels]:
    """etcd's ``checkIntervals``: puts of one branch may not overlap each other or a delete."""
    dels = _Dels()
    for op in reqs:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            dels.add(d.key, d.range_end)
    puts: set[bytes] = set()
    for op in reqs:
        if op.WhichOneof("request") != "request_txn":
            continue
        t = op.request_txn
        puts_then, dels_then = _intervals(t.success)
        puts_else, dels_else = _intervals(t.failure)
        for k in puts_then:
            if k in puts or dels.hits(k):
                raise err(ERR_DUPLICATE_KEY)
            puts.add(k)
        for k in puts_else:
            if k in puts and k not in puts_then:
                raise err(ERR_DUPLICATE_KEY)
            if dels.hits(k):
                raise err(ERR_DUPLICATE_KEY)
            puts.add(k)
        dels.union(dels_then)
        dels.union(dels_else)
    for op in reqs:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or dels.hits(k):
            raise err(ERR_DUPLICATE_KEY)
        puts.add(k)
    return puts, dels
