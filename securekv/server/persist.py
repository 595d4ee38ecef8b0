"""Translate between the applier's results and the storage backend's rows (both directions)."""

from __future__ import annotations

import struct
from typing import Any, Iterable, Sequence

from securekv.mvcc.checkpoint import DROPPED_BUCKET, dropped_key, encode_keys
from securekv.proto import rpc_pb2

_REMAINING = struct.Struct("<q")


def encode_lease_data(remaining_ttl: int) -> bytes:
    return _REMAINING.pack(remaining_ttl)


def decode_lease_data(data: bytes) -> int:
    if len(data) != _REMAINING.size:
        return 0
    return _REMAINING.unpack(data)[0]


def encode_alarms(alarms: Iterable[Any]) -> bytes:
    resp = rpc_pb2.AlarmResponse()
    for a in alarms:
        resp.alarms.add(memberID=a.memberID, alarm=a.alarm)
    return resp.SerializeToString()


def decode_alarms(data: bytes | None) -> list[Any]:
    if not data:
        return []
    resp = rpc_pb2.AlarmResponse()
    resp.ParseFromString(bytes(data))
    return list(resp.alarms)


class _Acc:
    def __init__(self) -> None:
        self.puts: list[Any] = []
        self.deletes: Sequence[tuple[int, int]] = []
        self.leases: dict[int, Any] = {}  # id -> LeaseRow | None (deleted)
        self.meta: dict[str, Any] = {}
        self.items: dict[tuple[str, bytes], bytes | None] = {}  # auth rows, dropped-key records; None = delete
        self.index = 0

    def empty(self) -> bool:
        return not (self.puts or self.deletes or self.leases or self.meta or self.items)


def to_write_batches(results: list[Any], last_index: int) -> list[Any]:
    """One WriteBatch for a whole node batch, split only around compactions.

    A compaction's row deletions may hit rows put earlier in the same batch, so whatever came
    before it is committed first; every batch carries the applied index it reaches.
    """
    from securekv.storage import Lease, Revision, WriteBatch

    if len(results) == 1:
        # A lone write (one request per Raft Ready: a sequential client): only MVCC rows, the
        # batch the general path below builds, without its accumulator and six comprehensions.
        r = results[0]
        kv = getattr(r, "kv", None)
        if (kv is not None and not kv.deletes and kv.compact_revision is None
                and not getattr(kv, "index_dropped", ()) and not getattr(r, "lease_puts", ())
                and not getattr(r, "lease_deletes", ()) and not getattr(r, "auth_rows", ())
                and getattr(r, "alarms", None) is None):
            return [WriteBatch(puts=[Revision(*p) for p in kv.puts], consistent_index=last_index)]

    out: list[Any] = []
    acc = _Acc()

    def flush(index: int) -> None:
        nonlocal acc
        out.append(
            WriteBatch(
                puts=[Revision(*r) for r in acc.puts],
                deletes=acc.deletes,
                lease_puts=[Lease(r.id, r.ttl, data=encode_lease_data(r.remaining_ttl))
                            for r in acc.leases.values() if r is not None],
                lease_deletes=[i for i, r in acc.leases.items() if r is None],
                item_puts=[(b, k, v) for (b, k), v in acc.items.items() if v is not None],
                item_deletes=[(b, k) for (b, k), v in acc.items.items() if v is None],
                meta=dict(acc.meta),
                consistent_index=index,
            )
        )
        acc = _Acc()

    for r in results:
        kv = getattr(r, "kv", None)
        compacting = kv is not None and bool(kv.deletes)
        if compacting and not acc.empty():
            flush(r.index - 1)
        if kv is not None:
            acc.puts.extend(kv.puts)
            if compacting:
                acc.deletes = kv.deletes  # alone in its batch: kept packed, never copied
            if kv.compact_revision is not None:
                acc.meta["compact_revision"] = kv.compact_revision
            if getattr(kv, "index_dropped", ()):
                acc.items[(DROPPED_BUCKET, dropped_key(kv.compact_revision))] = encode_keys(kv.index_dropped)
        for row in getattr(r, "lease_puts", ()) or ():
            acc.leases[row.id] = row
        for lease_id in getattr(r, "lease_deletes", ()) or ():
            acc.leases[lease_id] = None
        for bucket, key, value in getattr(r, "auth_rows", ()) or ():
            acc.items[(bucket, key)] = value
        alarms = getattr(r, "alarms", None)
        if alarms is not None:
            acc.meta["alarms"] = encode_alarms(alarms)
        if compacting:
            flush(r.index)
    if not acc.empty() or not out or out[-1].consistent_index != last_index:
        flush(last_index)
    return out


def auth_store(backend: Any, tokens: Any = None) -> Any:
    """The replicated auth state as the backend holds it (etcd's auth buckets)."""
    from securekv.auth import AuthStore
    from securekv.auth.state import BUCKET_AUTH, BUCKET_ROLES, BUCKET_USERS

    return AuthStore.from_rows(backend.iter_items(BUCKET_AUTH), backend.iter_items(BUCKET_USERS),
                               backend.iter_items(BUCKET_ROLES), tokens)


def join_tokens(backend: Any) -> Any:
    """The replicated join tokens (hashes only) as the backend holds them (bucket ``join_tokens``)."""
    from securekv.apply.jointokens import BUCKET, JoinTokens

    return JoinTokens.from_rows(backend.iter_items(BUCKET))


def restore_machine(backend: Any, store: Any, *, min_ttl: int, quota_bytes: int, now: float,
                    tokens: Any = None) -> tuple[Any, Any, Any]:
    """(lessor, applier, membership) rebuilt from what the backend holds, around ``store``
    (the MVCC store already restored from it): at start, after a leader's snapshot was
    installed, and for every simulated member (``securekv/sim``), so all three restore the
    same way. The applier resumes after the backend's consistent index."""
    from securekv.apply import Applier
    from securekv.lease import LeaseRow, Lessor
    from securekv.node.membership import META_KEY, Membership

    lessor = Lessor(min_ttl, primary=False)
    lessor.restore([LeaseRow(lease.id, lease.ttl, decode_lease_data(lease.data)) for lease in backend.iter_leases()],
                   now)
    applier = Applier(store, lessor, quota_bytes=quota_bytes, applied_index=backend.consistent_index(),
                      auth=auth_store(backend, tokens), join_tokens=join_tokens(backend))
    applier.restore_lease_attachments()
    applier.restore_alarms(decode_alarms(backend.get_meta("alarms")))
    return lessor, applier, Membership.decode(backend.get_meta(META_KEY))
