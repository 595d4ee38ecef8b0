"""The deterministic applier: one committed ``InternalRaftRequest`` -> response + effects.

Every member applies the same entries in the same order and reaches the same state: nothing
here reads a clock or draws random numbers (lease IDs are chosen by the proposer and travel
in the entry). ``now`` only feeds the lessor's local expiry bookkeeping, which is not
replicated state (etcd's lessor uses its local clock the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from securekv.auth import check as auth_check
from securekv.auth.check import AuthInfo
from securekv.auth.ranges import KeyRange
from securekv.auth.store import AUTH_KINDS, AuthStore, Row
from securekv.lease import LeaseRow
from securekv.mvcc import kv
from securekv.mvcc.quota import effective_quota, request_cost
from securekv.mvcc.store import Change, KVWriteBatch, MVCCStore
from securekv.proto import kv_pb2, rpc_pb2
from securekv.rpctypes import ERR_CORRUPT, ERR_LEASE_NOT_FOUND, ERR_NO_SPACE, ERR_PERMISSION_DENIED, EtcdError, err

from .alarms import CORRUPT, NONE, NOSPACE, AlarmSet
from .jointokens import JoinTokens

_GET, _ACTIVATE, _DEACTIVATE = 0, 1, 2


@attrs.frozen
class ApplyResult:
    """What applying one log entry did. ``error`` set means the request changed nothing."""

    index: int
    revision: int
    response: Any = None
    error: EtcdError | None = None
    events: tuple[kv_pb2.Event, ...] = ()
    kv: KVWriteBatch | None = None
    lease_puts: tuple[LeaseRow, ...] = ()
    lease_deletes: tuple[int, ...] = ()
    alarms: tuple[rpc_pb2.AlarmMember, ...] | None = None
    skipped: bool = False
    auth_rows: tuple[Row, ...] = ()  # (bucket, key, value or None = delete) for the backend


def _header(rev: int) -> rpc_pb2.ResponseHeader:
    return rpc_pb2.ResponseHeader(revision=rev)


def _events(changes: Iterable[Change]) -> tuple[kv_pb2.Event, ...]:
    return tuple(ch.event() for ch in changes)


class Applier:
    """etcd's applier chain (corrupt / capped / quota / backend) over an MVCCStore and a Lessor."""

    def __init__(self, store: MVCCStore, lessor: Any, *, quota_bytes: int = 0, applied_index: int = 0,
                 alarms: Iterable[tuple[int, int]] = (), auth: AuthStore | None = None,
                 join_tokens: JoinTokens | None = None) -> None:
        self.store = store
        self.join_tokens = join_tokens if join_tokens is not None else JoinTokens()
        self.lessor = lessor
        self.auth = auth if auth is not None else AuthStore()
        self._quota = effective_quota(quota_bytes)
        self._applied = applied_index
        self.alarms = AlarmSet(alarms)
        self._handlers: dict[str, Callable[[int, Any, Any, float], ApplyResult]] = {
            "range": self._range,
            "put": self._put,
            "delete_range": self._delete_range,
            "txn": self._txn,
            "compaction": self._compaction,
            "lease_grant": self._lease_grant,
            "lease_revoke": self._lease_revoke,
            "lease_checkpoint": self._lease_checkpoint,
            "alarm": self._alarm,
            "join_token_create": self._join_token,
            "join_token_revoke": self._join_token,
            "join_token_consume": self._join_token,
        }
        for kind in AUTH_KINDS:
            self._handlers[kind] = self._auth_request
        # Apply-time authorisation of every kind of entry (etcd's authApplierV3), against the
        # identity and auth revision the entry carries. A kind without a check is refused.
        self._checks: dict[str, Callable[[AuthInfo, Any], None]] = {
            "range": self._check_range,
            "put": self._check_put,
            "delete_range": self._check_delete,
            "txn": self._check_txn,
            "compaction": self._check_admin,
            "lease_grant": self._check_any_role,
            "lease_revoke": self._check_lease_revoke,
            "lease_checkpoint": self._check_internal,
            "alarm": self._check_alarm,
            # Creating a join token is issuing certificates: root only when auth is on.
            "join_token_create": self._check_admin,
            "join_token_revoke": self._check_admin,
            # Proposed by the member that checked the join request, never by a client.
            "join_token_consume": self._check_internal,
        }
        for kind in AUTH_KINDS:
            self._checks[kind] = self._check_admin

    # ------------------------------------------------------------------ public
    @property
    def applied_index(self) -> int:
        """The consistent index: store it in the same backend transaction as the rows."""
        return self._applied

    def apply(self, index: int, req: Any, *, now: float = 0.0) -> ApplyResult:
        """Apply entry ``index``. Entries at or below the applied index are skipped (replay)."""
        if index <= self._applied:
            return ApplyResult(index=index, revision=self.store.current_revision, skipped=True)
        kind = req.WhichOneof("request")
        self._applied = index
        if kind is None:
            # An entry without a request (e.g. a conf change or the leader's empty entry)
            # only moves the consistent index.
            return ApplyResult(index=index, revision=self.store.current_revision)
        body = getattr(req, kind)
        try:
            handler = self._handlers.get(kind)
            check = self._checks.get(kind)
            if handler is None or check is None:
                raise err(ERR_PERMISSION_DENIED)  # deny by default: an entry kind nobody checks
            header = req.header
            check(AuthInfo(header.username, header.auth_revision, header.internal), body)
            return handler(index, body, req, now)
        except EtcdError as e:
            return ApplyResult(index=index, revision=self.store.current_revision, error=e)

    def quota_ok(self, req: Any) -> bool:
        """Pre-proposal check of a Put/Txn/LeaseGrant against the quota and the NOSPACE alarm."""
        cost = request_cost(req)
        if cost == 0:
            return True
        if self.alarms.nospace:
            return False
        return self._fits(cost)

    def restore_alarms(self, members: Iterable[Any]) -> None:
        """Re-load persisted alarms (AlarmMember messages or (member_id, alarm) pairs)."""
        pairs = [(m.memberID, m.alarm) if hasattr(m, "memberID") else tuple(m) for m in members]
        self.alarms = AlarmSet(pairs)  # type: ignore[arg-type]

    def restore_lease_attachments(self) -> None:
        """After ``lessor.restore``: attach every live leased key, as etcd does on start."""
        lessor = self.lessor
        for key, lease in self.store.leased_keys():
            if lease in lessor:
                lessor.attach(lease, key)

    # ------------------------------------------------------------------ authorisation
    def lease_keys(self, lease_id: int) -> frozenset[bytes]:
        lease = self.lessor.lookup(lease_id) if lease_id else None
        return lease.keys if lease is not None else frozenset()

    def _check_range(self, info: AuthInfo, r: Any) -> None:
        auth_check.check_keys(self.auth.state, info, reads=[KeyRange.of(r.key, r.range_end)])

    def _check_put(self, info: AuthInfo, p: Any) -> None:
        state = self.auth.state
        if auth_check.exempt(state, info):
            return
        reads, writes = auth_check.put_ranges(p, self.lease_keys(p.lease))
        auth_check.check_keys(state, info, reads, writes)

    def _check_delete(self, info: AuthInfo, d: Any) -> None:
        state = self.auth.state
        if auth_check.exempt(state, info):
            return
        reads, writes = auth_check.delete_ranges(d)
        auth_check.check_keys(state, info, reads, writes)

    def _check_txn(self, info: AuthInfo, t: Any) -> None:
        state = self.auth.state
        if auth_check.exempt(state, info):
            return
        auth_check.check_any_role(state, info)
        reads, writes = auth_check.txn_ranges(t, self.lease_keys)
        auth_check.check_keys(state, info, reads, writes)

    def _check_admin(self, info: AuthInfo, body: Any) -> None:
        auth_check.check_admin(self.auth.state, info)

    def _check_any_role(self, info: AuthInfo, body: Any) -> None:
        auth_check.check_any_role(self.auth.state, info)

    def _check_lease_revoke(self, info: AuthInfo, r: Any) -> None:
        state = self.auth.state
        if auth_check.exempt(state, info):
            return
        auth_check.check_any_role(state, info)
        auth_check.check_keys(state, info, writes=[KeyRange.of(k) for k in self.lease_keys(r.ID)])

    def _check_alarm(self, info: AuthInfo, a: Any) -> None:
        if a.action == _GET:
            auth_check.check_any_role(self.auth.state, info)
        else:
            auth_check.check_admin(self.auth.state, info)

    def _check_internal(self, info: AuthInfo, body: Any) -> None:
        if self.auth.state.enabled and not info.internal:
            raise err(ERR_PERMISSION_DENIED)  # only the server itself proposes these

    # ------------------------------------------------------------------ helpers
    def _fits(self, cost: int) -> bool:
        return self._quota == 0 or self.store.size_bytes + cost < self._quota

    def _gate(self, req: Any, outer: Any, index: int) -> ApplyResult | None:
        """Corrupt, capped and quota rules in etcd's order; a result means "refused"."""
        if self.alarms.corrupt:
            raise err(ERR_CORRUPT)
        cost = request_cost(req)
        if cost == 0:
            return None
        if self.alarms.nospace:
            raise err(ERR_NO_SPACE)
        if not self._fits(cost):
            # Deterministic on every member (logical size is replicated state): raise NOSPACE
            # for the proposer and refuse the write instead of applying it.
            self.alarms.activate(outer.header.member_id, NOSPACE)
            return ApplyResult(index=index, revision=self.store.current_revision,
                               error=err(ERR_NO_SPACE), alarms=tuple(self.alarms.list()))
        return None

    def _attach(self, changes: Iterable[Change]) -> None:
        lessor = self.lessor
        for ch in changes:
            prev = ch.prev
            if prev is not None and prev.lease and prev.lease in lessor:
                lessor.detach(prev.lease, prev.key)
            rec = ch.rec
            if rec.version and rec.lease and rec.lease in lessor:
                lessor.attach(rec.lease, rec.key)

    def _kv_result(self, index: int, out: kv.KVOutcome) -> ApplyResult:
        self._attach(out.changes)
        return ApplyResult(index=index, revision=self.store.current_revision, response=out.response,
                           events=_events(out.changes), kv=out.batch)

    # ------------------------------------------------------------------ handlers
    def _range(self, index: int, r: Any, outer: Any, now: float) -> ApplyResult:
        if self.alarms.corrupt:
            raise err(ERR_CORRUPT)
        return ApplyResult(index=index, revision=self.store.current_revision, response=self.store.range(r))

    def _put(self, index: int, p: Any, outer: Any, now: float) -> ApplyResult:
        refused = self._gate(p, outer, index)
        if refused is not None:
            return refused
        return self._kv_result(index, kv.put(self.store, p, self.lessor.__contains__))

    def _delete_range(self, index: int, d: Any, outer: Any, now: float) -> ApplyResult:
        if self.alarms.corrupt:
            raise err(ERR_CORRUPT)
        return self._kv_result(index, kv.delete_range(self.store, d))

    def _txn(self, index: int, t: Any, outer: Any, now: float) -> ApplyResult:
        refused = self._gate(t, outer, index)
        if refused is not None:
            return refused
        return self._kv_result(index, kv.txn(self.store, t, self.lessor.__contains__))

    def _compaction(self, index: int, c: Any, outer: Any, now: float) -> ApplyResult:
        if self.alarms.corrupt:
            raise err(ERR_CORRUPT)
        out = kv.compact(self.store, c)
        return ApplyResult(index=index, revision=self.store.current_revision, response=out.response, kv=out.batch)

    def _lease_grant(self, index: int, g: Any, outer: Any, now: float) -> ApplyResult:
        refused = self._gate(g, outer, index)
        if refused is not None:
            return refused
        lease = self.lessor.grant(g.ID, g.TTL, now)
        rev = self.store.current_revision
        resp = rpc_pb2.LeaseGrantResponse(header=_header(rev), ID=lease.id, TTL=lease.ttl)
        return ApplyResult(index=index, revision=rev, response=resp,
                           lease_puts=(LeaseRow(lease.id, lease.ttl, 0),))

    def _lease_revoke(self, index: int, r: Any, outer: Any, now: float) -> ApplyResult:
        if self.alarms.corrupt:
            raise err(ERR_CORRUPT)
        lease = self.lessor.lookup(r.ID)
        if lease is None:
            raise err(ERR_LEASE_NOT_FOUND)
        # All attached keys go in ONE revision, in key order (etcd sorts them).
        tw = self.store.write()
        try:
            for key in sorted(lease.keys):
                tw.delete_range(key, b"")
        finally:
            batch = tw.end()
        changes = tuple(tw.changes)
        for ch in changes:
            prev = ch.prev
            if prev is not None and prev.lease and prev.lease != r.ID and prev.lease in self.lessor:
                self.lessor.detach(prev.lease, prev.key)
        self.lessor.revoke(r.ID)
        rev = self.store.current_revision
        return ApplyResult(index=index, revision=rev, response=rpc_pb2.LeaseRevokeResponse(header=_header(rev)),
                           events=_events(changes), kv=batch, lease_deletes=(r.ID,))

    def _lease_checkpoint(self, index: int, c: Any, outer: Any, now: float) -> ApplyResult:
        ids = []
        for cp in c.checkpoints:
            self.lessor.checkpoint(cp.ID, cp.remaining_TTL)
            ids.append(cp.ID)
        wanted = set(ids)
        rows = tuple(row for row in self.lessor.rows() if row.id in wanted)
        rev = self.store.current_revision
        return ApplyResult(index=index, revision=rev, response=rpc_pb2.LeaseCheckpointResponse(header=_header(rev)),
                           lease_puts=rows)

    def _auth_request(self, index: int, body: Any, outer: Any, now: float) -> ApplyResult:
        change = self.auth.apply(outer.WhichOneof("request"), body)
        rev = self.store.current_revision
        change.response.header.revision = rev
        return ApplyResult(index=index, revision=rev, response=change.response, auth_rows=change.rows)

    def _join_token(self, index: int, body: Any, outer: Any, now: float) -> ApplyResult:
        kind = outer.WhichOneof("request")
        tokens = self.join_tokens
        handler = {"join_token_create": tokens.create, "join_token_revoke": tokens.revoke,
                   "join_token_consume": tokens.consume}[kind]
        response, rows = handler(body)
        rev = self.store.current_revision
        response.header.revision = rev
        return ApplyResult(index=index, revision=rev, response=response, auth_rows=rows)

    def _alarm(self, index: int, a: Any, outer: Any, now: float) -> ApplyResult:
        rev = self.store.current_revision
        resp = rpc_pb2.AlarmResponse(header=_header(rev))
        changed = False
        if a.action == _GET:
            resp.alarms.extend(self.alarms.list(a.alarm))
        elif a.action == _ACTIVATE:
            # etcd 3.4 crashes on ACTIVATE of alarm NONE; we ignore it and change nothing.
            if a.alarm != NONE:
                changed = self.alarms.activate(a.memberID, a.alarm)
                resp.alarms.add(memberID=a.memberID, alarm=a.alarm)
        elif a.action == _DEACTIVATE:
            if self.alarms.deactivate(a.memberID, a.alarm):
                changed = True
                resp.alarms.add(memberID=a.memberID, alarm=a.alarm)
        return ApplyResult(index=index, revision=rev, response=resp,
                           alarms=tuple(self.alarms.list()) if changed else None)


__all__ = ["Applier", "ApplyResult", "CORRUPT", "NOSPACE"]
