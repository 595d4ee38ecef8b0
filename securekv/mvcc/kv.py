"""etcd's KV request semantics (Range/Put/DeleteRange/Txn/Compact) over an :class:`MVCCStore`.

Mirrors etcd 3.4's ``applierV3backend``: every check that can fail runs before the first write,
so a failed request changes nothing and a write transaction never has to roll back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from securekv.proto import rpc_pb2
from securekv.rpctypes import (
    ERR_COMPACTED,
    ERR_FUTURE_REV,
    ERR_KEY_NOT_FOUND,
    ERR_LEASE_NOT_FOUND,
    err,
    response_too_large,
)

from .store import Change, KVWriteBatch, MVCCStore, Rec, WriteTxn

RangeRequest = rpc_pb2.RangeRequest
RangeResponse = rpc_pb2.RangeResponse
PutResponse = rpc_pb2.PutResponse
DeleteRangeResponse = rpc_pb2.DeleteRangeResponse
TxnResponse = rpc_pb2.TxnResponse
ResponseOp = rpc_pb2.ResponseOp
ResponseHeader = rpc_pb2.ResponseHeader
CompactionResponse = rpc_pb2.CompactionResponse

_NONE, _ASCEND, _DESCEND = 0, 1, 2
_SORT_KEYS: dict[int, Callable[[Rec], Any]] = {
    1: lambda r: r.version,  # VERSION
    2: lambda r: r.create,  # CREATE
    3: lambda r: r.mod,  # MOD
    4: lambda r: r.value,  # VALUE
}

LeaseExists = Callable[[int], bool]


class ReadView(Protocol):
    def range_keys(self, key: bytes, range_end: bytes, rev: int, limit: int = 0, count_only: bool = False) -> tuple[list[Rec], int, int]: ...

    def get(self, key: bytes) -> Rec | None: ...

    def fill_values(self, recs: Sequence[Rec], cache: bool = True) -> None: ...


#: Records whose values are loaded (and turned into response messages) at a time.
RANGE_PAGE = 512


@attrs.frozen
class KVOutcome:
    """A write request's response, the records it wrote, and the backend rows."""

    response: Any
    changes: tuple[Change, ...] = ()
    batch: KVWriteBatch | None = None


# ---------------------------------------------------------------------------- Range
class ResponseBudget:
    """Bytes one read response may still take (``--max-response-bytes``), checked *before* the
    records become protobuf messages: a range over the whole store is refused without
    materialising it. Each record counts its key and value bytes only, a lower bound of its
    encoded size, so a response the budget refuses is surely larger than the limit; the send
    path checks the exact size of what passes (``server/etcdserver.py``)."""

    __slots__ = ("limit", "spent")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, recs: list[Rec], keys_only: bool) -> None:
        if keys_only:
            self.charge(sum(len(r.key) for r in recs))
        else:
            self.charge(sum(len(r.key) + len(r.value) for r in recs))

    def charge(self, size: int) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise response_too_large(self.spent, self.limit)


def range_response(view: ReadView, r: Any, budget: ResponseBudget | None = None) -> Any:
    """etcd's Range: fetch, filter by min/max revisions, sort, then truncate to ``limit``.

    Values are loaded page by page only for the records returned (never for ``keys_only`` or
    ``count_only``), and ``budget`` is charged page by page, so a response over the limit is
    refused after loading at most one page past it."""
    limit = r.limit
    filtered = r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
    if r.sort_order != _NONE or filtered:
        fetch = 0  # fetch everything; sort and truncate afterwards
    elif limit > 0:
        fetch = limit + 1  # one extra for `more`
    else:
        fetch = 0
    recs, count, cur = view.range_keys(r.key, r.range_end, r.revision, fetch, r.count_only)
    if filtered:
        if r.max_mod_revision:
            recs = [x for x in recs if x.mod <= r.max_mod_revision]
        if r.min_mod_revision:
            recs = [x for x in recs if x.mod >= r.min_mod_revision]
        if r.max_create_revision:
            recs = [x for x in recs if x.create <= r.max_create_revision]
        if r.min_create_revision:
            recs = [x for x in recs if x.create >= r.min_create_revision]
    order, target = r.sort_order, r.sort_target
    if target != 0 and order == _NONE:
        order = _ASCEND  # etcd sorts ASCEND when only a non-KEY target is given
    if order == _DESCEND and target == 0:
        recs = recs[::-1]  # keys are unique and already ascending
    elif order in (_ASCEND, _DESCEND) and target in _SORT_KEYS:
        if target == 4:
            view.fill_values(recs, False)
        # Stable, like Go's insertion sort for small results: ties keep key order.
        recs = sorted(recs, key=_SORT_KEYS[target], reverse=order == _DESCEND)
    more = False
    if limit > 0 and len(recs) > limit:
        recs = recs[:limit]
        more = True
    keys_only = r.keys_only
    resp = RangeResponse(header=ResponseHeader(revision=cur), more=more, count=count)
    add = resp.kvs.add  # built in place: a separate message per kv would be copied once more
    cache = len(recs) <= RANGE_PAGE  # a large scan must not evict the hot values
    for i in range(0, len(recs), RANGE_PAGE):
        page = recs[i : i + RANGE_PAGE]
        if not keys_only:
            view.fill_values(page, cache)
        if budget is not None:
            if keys_only:
                budget.charge(sum(len(x.key) for x in page))
            else:  # a backend row is the marshalled KeyValue itself: a lower bound as well
                budget.charge(sum(len(x.raw) if x.raw is not None else len(x.key) + len(x.value) for x in page))
        if keys_only:
            for x in page:
                add(key=x.key, create_revision=x.create, mod_revision=x.mod, version=x.version, lease=x.lease)
        else:
            for x in page:
                if x.raw is not None:  # the backend row is this very KeyValue: parse it in place
                    add().MergeFromString(x.raw)
                else:
                    add(key=x.key, create_revision=x.create, mod_revision=x.mod, version=x.version, value=x.value,
                        lease=x.lease)
    return resp


# ---------------------------------------------------------------------------- Put / Delete
def _put(tw: WriteTxn, p: Any) -> Any:
    prev = None
    ignore_value, ignore_lease = p.ignore_value, p.ignore_lease
    if ignore_value or ignore_lease or p.prev_kv:
        prev = tw.get(p.key)
        if (ignore_value or ignore_lease) and prev is None:
            raise err(ERR_KEY_NOT_FOUND)
    value = prev.value if ignore_value else p.value  # type: ignore[union-attr]
    lease = prev.lease if ignore_lease else p.lease  # type: ignore[union-attr]
    tw.put(p.key, value, lease)
    resp = PutResponse(header=ResponseHeader(revision=tw.begin + 1))
    if p.prev_kv and prev is not None:
        resp.prev_kv.CopyFrom(prev.to_pb())
    return resp


def _delete_range(tw: WriteTxn, dr: Any) -> Any:
    resp = DeleteRangeResponse()
    changes = tw.delete_range(dr.key, dr.range_end)
    if dr.prev_kv:
        resp.prev_kvs.extend(ch.prev.to_pb() for ch in changes)  # type: ignore[union-attr]
    resp.deleted = len(changes)
    resp.header.revision = tw.revision
    return resp


def put(store: MVCCStore, p: Any, lease_exists: LeaseExists) -> KVOutcome:
    """A top-level Put (validated with ``validate_put`` by the proposer)."""
    if p.lease and not lease_exists(p.lease):
        raise err(ERR_LEASE_NOT_FOUND)
    tw = store.write()
    try:
        resp = _put(tw, p)
    finally:
        batch = tw.end()
    return KVOutcome(resp, tuple(tw.changes), batch)


def delete_range(store: MVCCStore, dr: Any) -> KVOutcome:
    tw = store.write()
    try:
        resp = _delete_range(tw, dr)
    finally:
        batch = tw.end()
    return KVOutcome(resp, tuple(tw.changes), batch)


def compact(store: MVCCStore, c: Any) -> KVOutcome:
    batch = store.compact(c.revision)
    return KVOutcome(CompactionResponse(header=ResponseHeader(revision=store.current_revision)), (), batch)


# ---------------------------------------------------------------------------- Txn
def is_txn_readonly(rt: Any) -> bool:
    """etcd's rule: only top-level Range ops (a nested txn counts as a write)."""
    for op in rt.success:
        if op.WhichOneof("request") != "request_range":
            return False
    for op in rt.failure:
        if op.WhichOneof("request") != "request_range":
            return False
    return True


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _compare_kv(c: Any, rec: Rec | None) -> bool:
    t = c.target
    if t == 3:  # VALUE
        result = _cmp(rec.value if rec is not None else b"", c.value)
    elif t == 1:  # CREATE
        result = _cmp(rec.create if rec is not None else 0, c.create_revision)
    elif t == 2:  # MOD
        result = _cmp(rec.mod if rec is not None else 0, c.mod_revision)
    elif t == 0:  # VERSION
        result = _cmp(rec.version if rec is not None else 0, c.version)
    elif t == 4:  # LEASE
        result = _cmp(rec.lease if rec is not None else 0, c.lease)
    else:
        result = 0
    op = c.result
    if op == 0:
        return result == 0
    if op == 3:
        return result != 0
    if op == 1:
        return result > 0
    if op == 2:
        return result < 0
    return True


def _apply_compare(view: ReadView, c: Any) -> bool:
    recs, _, _ = view.range_keys(c.key, c.range_end, 0)
    if not recs:
        if c.target == 3:
            return False  # a missing key has no value to compare: always false
        return _compare_kv(c, None)
    return all(_compare_kv(c, rec) for rec in recs)


# The chosen path through a txn: (succeeded, paths of the nested txns of the chosen branch).
_Path = tuple[bool, list[Any]]


def _compare_to_path(view: ReadView, rt: Any) -> _Path:
    ok = all(_apply_compare(view, c) for c in rt.compare)
    nested = [
        _compare_to_path(view, op.request_txn)
        for op in (rt.success if ok else rt.failure)
        if op.WhichOneof("request") == "request_txn"
    ]
    return ok, nested


def _check(view: ReadView, rt: Any, path: _Path, f: Callable[[ReadView, Any], None]) -> None:
    ok, nested = path
    it = iter(nested)
    for op in rt.success if ok else rt.failure:
        if op.WhichOneof("request") == "request_txn":
            _check(view, op.request_txn, next(it), f)
        else:
            f(view, op)


def _check_put(lease_exists: LeaseExists) -> Callable[[ReadView, Any], None]:
    def check(view: ReadView, op: Any) -> None:
        if op.WhichOneof("request") != "request_put":
            return
        p = op.request_put
        if (p.ignore_value or p.ignore_lease) and view.get(p.key) is None:
            raise err(ERR_KEY_NOT_FOUND)
        if p.lease and not lease_exists(p.lease):
            raise err(ERR_LEASE_NOT_FOUND)

    return check


def _check_range(store: MVCCStore) -> Callable[[ReadView, Any], None]:
    def check(view: ReadView, op: Any) -> None:
        if op.WhichOneof("request") != "request_range":
            return
        rev = op.request_range.revision
        if rev == 0:
            return
        if rev > store.current_revision:
            raise err(ERR_FUTURE_REV)
        if rev < store.compact_revision:
            raise err(ERR_COMPACTED)

    return check


def _exec(tw: ReadView, rt: Any, path: _Path, budget: ResponseBudget | None = None) -> Any:
    ok, nested = path
    it = iter(nested)
    resps = []
    for op in rt.success if ok else rt.failure:
        kind = op.WhichOneof("request")
        if kind == "request_range":
            resps.append(ResponseOp(response_range=range_response(tw, op.request_range, budget)))
        elif kind == "request_put":
            resps.append(ResponseOp(response_put=_put(tw, op.request_put)))  # type: ignore[arg-type]
        elif kind == "request_delete_range":
            resps.append(ResponseOp(response_delete_range=_delete_range(tw, op.request_delete_range)))  # type: ignore[arg-type]
        elif kind == "request_txn":
            resps.append(ResponseOp(response_txn=_exec(tw, op.request_txn, next(it), budget)))
        else:
            resps.append(ResponseOp())  # empty union (rejected by validate_txn)
    # Nested txn responses carry an empty header, exactly as etcd's.
    return TxnResponse(header=ResponseHeader(), succeeded=ok, responses=resps)


def txn(store: MVCCStore, rt: Any, lease_exists: LeaseExists) -> KVOutcome:
    """A Txn through the log. Compares and checks see the state before the txn."""
    path = _compare_to_path(store, rt)
    if not is_txn_readonly(rt):
        _check(store, rt, path, _check_put(lease_exists))
    _check(store, rt, path, _check_range(store))
    tw = store.write()
    try:
        resp = _exec(tw, rt, path)
    finally:
        batch = tw.end()
    resp.header.revision = tw.revision
    return KVOutcome(resp, tuple(tw.changes), batch)


def txn_readonly(store: MVCCStore, rt: Any, budget: ResponseBudget | None = None) -> Any:
    """A read-only Txn (``is_txn_readonly``) served locally, without a log entry; all its
    ranges share one ``budget``."""
    path = _compare_to_path(store, rt)
    _check(store, rt, path, _check_range(store))
    resp = _exec(store, rt, path, budget)
    resp.header.revision = store.current_revision
    return resp
