"""Request checks the API layer runs before proposing (etcd's v3rpc ``check*Request``).

They need no store state, so a rejected request never reaches the log and changes nothing.

A txn is checked cheapest first, so a hostile one costs little of the single state thread:
its encoded size (``--max-request-bytes``), then the total number of operations including every
nested txn (``--max-txn-ops``), then etcd's per-level rules, and only then the duplicate-key
rule, in O(n log n) (see :func:`_check_duplicates`; etcd's own check, like this module's former
one, is quadratic in the number of deletes and puts).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from securekv.rpctypes import (
    ERR_DUPLICATE_KEY,
    ERR_EMPTY_KEY,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_PROVIDED,
    ERR_REQUEST_TOO_LARGE,
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


def validate_txn(r: Any, max_txn_ops: int = DEFAULT_MAX_TXN_OPS, max_request_bytes: int | None = None) -> None:
    """Size, total-ops, key and duplicate-key checks of a TxnRequest.

    ``max_request_bytes``: refuse a larger encoded request first (etcd checks the size only at
    proposal time, after the expensive checks). The total-ops cap is ``--max-txn-ops`` extended
    to nesting: the sum over the txn and every nested txn of max(compares, successes, failures)
    — for a flat txn exactly etcd's count.
    """
    if max_request_bytes is not None and r.ByteSize() > max_request_bytes:
        raise err(ERR_REQUEST_TOO_LARGE)
    _check_total_ops(r, max_txn_ops)
    _check_txn(r, max_txn_ops)
    _check_duplicates(r)


def _check_total_ops(r: Any, max_txn_ops: int) -> None:
    """Stops at the first txn that goes over, so a huge request costs no more than the cap."""
    total = 0
    stack = [r]
    while stack:
        t = stack.pop()
        total += max(len(t.compare), len(t.success), len(t.failure))
        if total > max_txn_ops:
            raise err(ERR_TOO_MANY_OPS)
        for ops in (t.success, t.failure):
            for op in ops:
                if op.WhichOneof("request") == "request_txn":
                    stack.append(op.request_txn)


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


# --------------------------------------------------------------------------- duplicate keys
#
# etcd's ``checkIntervals`` (v3rpc/key.go) walks each level: the level's deletes, then each
# nested txn in order (its then- and else-puts may not repeat an earlier sibling's puts nor hit
# the deletes seen so far: the level's own and the earlier siblings'), then the level's puts
# (against everything). Unrolled, a put and a delete (or two puts) of one txn conflict unless
# they sit in the two branches of the same nested txn, or the delete comes from a nested txn
# *after* the one holding the put.
#
# Number the operations in two depth-first orders that list a level's own operations first and
# then its nested txns in order — order 1 visiting each nested txn's success branch before its
# failure branch, order 2 the other way round. Two operations in opposite branches of one
# nested txn are the only pairs the two orders rank differently. Hence:
#   * two puts of the same key conflict  <=>  both orders rank them alike;
#   * a delete d hits a put k at level K  <=>  d covers k, and in both orders d comes before
#     the end of K's subtree.
# The first is a sort per key; the second a sweep over order 1 with a segment tree over the
# (sorted) put keys holding the smallest order-2 position of the deletes covering each key.


class _Level:
    __slots__ = ("ops", "children", "end1", "end2")

    def __init__(self) -> None:
        self.ops: list[int] = []  # operation indices (puts and deletes) of this level
        self.children: list[tuple[_Level, _Level]] = []  # (success, failure) of each nested txn
        self.end1 = 0
        self.end2 = 0


def _build(r: Any) -> tuple[_Level, list[tuple[bytes, bytes | None, _Level]]]:
    """The txn as levels, and its operations: (key, None, level) for a put, (lo, hi, level) for
    a delete. The root level holds no operation; its one nested txn is the request itself, so
    the request's success and failure branches are opposite branches (never checked together,
    as in etcd)."""
    ops: list[tuple[bytes, bytes | None, _Level]] = []
    root = _Level()
    stack: list[tuple[Any, _Level]] = []

    def nest(level: _Level, txn: Any) -> None:
        s, f = _Level(), _Level()
        level.children.append((s, f))
        stack.append((txn.failure, f))
        stack.append((txn.success, s))

    nest(root, r)
    while stack:
        reqs, level = stack.pop()
        for op in reqs:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                ops.append((op.request_put.key, None, level))
                level.ops.append(len(ops) - 1)
            elif kind == "request_delete_range":
                d = op.request_delete_range
                # etcd: an interval from the raw range_end, or the single key [key, key+"\0")
                ops.append((d.key, d.range_end if d.range_end else d.key + b"\0", level))
                level.ops.append(len(ops) - 1)
            elif kind == "request_txn":
                nest(level, op.request_txn)
    return root, ops


def _number(root: _Level, n_ops: int, success_first: bool) -> list[int]:
    """Depth-first positions of every operation; sets each level's end (one past its last)."""
    pos = [0] * n_ops
    counter = 0
    stack: list[tuple[_Level, bool]] = [(root, False)]
    while stack:
        level, done = stack.pop()
        if done:
            if success_first:
                level.end1 = counter
            else:
                level.end2 = counter
            continue
        for i in level.ops:
            pos[i] = counter
            counter += 1
        stack.append((level, True))
        for s, f in reversed(level.children):
            first, second = (s, f) if success_first else (f, s)
            stack.append((second, False))
            stack.append((first, False))
    return pos


def _check_duplicates(r: Any) -> None:
    root, ops = _build(r)
    if not ops:
        return
    pos1 = _number(root, len(ops), True)
    pos2 = _number(root, len(ops), False)

    # puts against puts
    by_key: dict[bytes, list[int]] = {}
    for i, (key, hi, _level) in enumerate(ops):
        if hi is None:
            by_key.setdefault(key, []).append(i)
    for same in by_key.values():
        if len(same) < 2:
            continue
        same.sort(key=pos1.__getitem__)
        for a, b in zip(same, same[1:]):
            if pos2[a] < pos2[b]:  # both orders agree: not opposite branches of one txn
                raise err(ERR_DUPLICATE_KEY)

    # deletes against puts
    keys = sorted(by_key)
    if not keys:
        return
    deletes = []
    for i, (lo, hi, _level) in enumerate(ops):
        if hi is None or hi <= lo:  # a put, or an empty interval (etcd's from-key "\0" quirk)
            continue
        a, b = bisect_left(keys, lo), bisect_left(keys, hi)
        if a < b:
            deletes.append((pos1[i], pos2[i], a, b))
    if not deletes:
        return
    deletes.sort()
    queries = sorted((ops[i][2].end1, ops[i][2].end2, bisect_left(keys, ops[i][0]))
                     for same in by_key.values() for i in same)
    size = 1
    while size < len(keys):
        size *= 2
    inf = len(ops) + 1
    tree = [inf] * (2 * size)  # range "min-assign", point query: the minimum along the path
    d = 0
    for end1, end2, k in queries:
        while d < len(deletes) and deletes[d][0] < end1:
            _p1, p2, lo, hi = deletes[d]
            d += 1
            lo += size
            hi += size
            while lo < hi:
                if lo & 1:
                    if p2 < tree[lo]:
                        tree[lo] = p2
                    lo += 1
                if hi & 1:
                    hi -= 1
                    if p2 < tree[hi]:
                        tree[hi] = p2
                lo >>= 1
                hi >>= 1
        i = k + size
        best = inf
        while i:
            if tree[i] < best:
                best = tree[i]
            i >>= 1
        if best < end2:
            raise err(ERR_DUPLICATE_KEY)
