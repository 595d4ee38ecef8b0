"""The member's request handling on the trio side: etcd's v3 semantics over the node.

Each public coroutine takes a request message and the authenticated Caller and returns the
response message (or raises EtcdError). Reads are served from the in-memory store in the trio
thread: every acknowledged write was applied before it was acknowledged, so a read here sees
all of them (linearizable on one member; the cluster issue adds ReadIndex). Writes are proposed
to the node as InternalRaftRequest entries carrying the caller's identity.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import random
import secrets
import shutil
from pathlib import Path
from typing import Any

import attrs
import trio

from securekv.api.auth_gate import SERVER_CALLER, AuthGate, Caller
from securekv.api.status import go_status_string
from securekv.auth.rules import PEER
# (module level, not per call: a hot callback's import statement cost ≈ 0.3 µs per request)
from securekv.mvcc import is_txn_readonly, validate_delete_range, validate_put, validate_range, validate_txn
from securekv.mvcc.quota import request_cost
from securekv.proto import raft_internal_pb2, rpc_pb2, v3election_pb2, v3lock_pb2
from securekv.rpctypes import (ERR_AUTH_OLD_REVISION, ERR_BAD_LEADER_TRANSFEREE, ERR_LEARNER_NOT_SUPPORTED,
                               ERR_NO_LEADER, ERR_NO_SPACE, ERR_NOT_LEADER, EtcdError, err, response_too_large)
from securekv.server.authserver import AuthHandlers
from securekv.server.etcdsnap import export_snapshot
from securekv.server.node import Prepared

log = logging.getLogger(__name__)

VERSION = "3.4.23"
CLUSTER_VERSION = "3.4.0"
SNAPSHOT_CHUNK = 32 * 1024
#: Snapshot RPCs served at once: each keeps a sqlite copy and a bbolt file of the whole store
#: in the data dir while it streams, so unbounded concurrency could fill the disk and stop
#: the member. More are refused at once (RESOURCE_EXHAUSTED), never queued.
MAX_CONCURRENT_SNAPSHOTS = 2
#: A snapshot needs about this many times the backend's size on disk (copy + bbolt file) ...
SNAPSHOT_SPACE_FACTOR = 3
#: ... and leaves free on the data dir's file system, for the WAL and the backend, at least 5 %
#: of its size, capped at 64 MiB (a small test disk still takes snapshots; a big one keeps 64 MiB).
SNAPSHOT_FREE_RESERVE = 64 << 20
SNAPSHOT_FREE_FRACTION = 0.05


def snapshot_free_reserve(total_bytes: int) -> int:
    """Bytes a snapshot must leave free on a file system of ``total_bytes``."""
    return min(SNAPSHOT_FREE_RESERVE, int(total_bytes * SNAPSHOT_FREE_FRACTION))
LOCK_SESSION_TTL = 60
ERR_ELECTION_NOT_LEADER = EtcdError("UNKNOWN", "election: not leader")
#: A LeaseGrant above --max-leases-per-identity (etcd has no such cap; RESOURCE_EXHAUSTED as
#: securekv's other per-identity caps).
ERR_TOO_MANY_LEASES_REASON = "securekv: too many leases for this client identity"
ERR_ELECTION_NO_LEADER = EtcdError("UNKNOWN", "election: no leader")


# The RPC whose rule re-authorises a retried proposal of each kind (see _propose).
KIND_METHOD = {
    "put": "Put", "delete_range": "DeleteRange", "txn": "Txn", "compaction": "Compact", "lease_grant": "LeaseGrant",
    "lease_revoke": "LeaseRevoke", "alarm": "Alarm", "auth_enable": "AuthEnable", "auth_disable": "AuthDisable",
    "auth_user_add": "UserAdd", "auth_user_delete": "UserDelete", "auth_user_change_password": "UserChangePassword",
    "auth_user_grant_role": "UserGrantRole", "auth_user_revoke_role": "UserRevokeRole", "auth_role_add": "RoleAdd",
    "auth_role_delete": "RoleDelete", "auth_role_grant_permission": "RoleGrantPermission",
    "auth_role_revoke_permission": "RoleRevokePermission",
}
WATCH_METHOD = "/etcdserverpb.Watch/Watch"
KEEPALIVE_METHOD = "/etcdserverpb.Lease/LeaseKeepAlive"


def go_status(exc: EtcdError) -> str:
    """grpc-go's status text (``rpc error: code = PermissionDenied desc = ...``): how etcd
    words a watch's cancel_reason, which clientv3 matches on (the one error mapper's form)."""
    return go_status_string(exc.code, exc.message)


def prefix_end(key: bytes) -> bytes:
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class EtcdServer(AuthHandlers):
    def __init__(
        self,
        *,
        node: Any,
        store: Any,
        lessor: Any,
        applier: Any,
        hub: Any,
        backend: Any,
        cluster_id: int,
        member_id: int,
        name: str,
        peer_urls: list[str],
        client_urls: list[str],
        max_txn_ops: int,
        snapshot_dir: str = ".",
        clock: Any = trio.current_time,
    ) -> None:
        self.node = node
        self.store = store
        self.lessor = lessor
        self.applier = applier
        self.hub = hub
        self.backend = backend
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.name = name
        self.peer_urls = peer_urls
        self.client_urls = client_urls
        self.max_txn_ops = max_txn_ops
        self.snapshot_dir = snapshot_dir
        self._snapshots = 0
        self._snapshot_slots = trio.Semaphore(MAX_CONCURRENT_SNAPSHOTS)
        self.clock = clock
        self.rng = random.SystemRandom()
        self._changed = trio.Event()  # set (and replaced) whenever the store's revision moves
        # Leases granted through this member, by identity (--max-leases-per-identity).
        self._lease_grants: dict[str, set[int]] = {}
        self._lease_grants_full: dict[str, int] = {}  # identity -> lessor.removals when last found full
        self._watch_wakeups: dict[int, "WatchSession"] = {}
        self._watch_owners: dict[str, set["WatchSession"]] = {}  # identity -> its watch streams
        self.transport: Any = None
        self.published = False
        self.published_event = trio.Event()
        self.cluster_token = "etcd-cluster"
        # The one authorisation gate (set by run.py; a default one for in-process tests).
        self.gate: AuthGate = AuthGate()
        self.gate.bind(self)
        self.strict_reconfig_check = True  # --strict-reconfig-check
        self.metrics: Any = None  # ServerMetrics (server/metrics.py), set by run.py
        self.defragmenting = False
        self.db_sizes = (0, 0)  # (size, in use) of the backend, refreshed by run.py for /metrics

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def term(self) -> int:
        return self.node.term

    def header(self, header: rpc_pb2.ResponseHeader, revision: int | None = None) -> None:
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.term
        if revision is not None:
            header.revision = revision

    # Largest response this member sends (--max-response-bytes; 0 = no limit); set by the runtime.
    max_response_bytes = 0
    # Most leases one identity may hold through this member (--max-leases-per-identity).
    max_leases_per_identity = 100_000

    def check_response_size(self, size: int) -> None:
        """The send path's exact check (gRPC and the gateway), after the read path's early one."""
        if 0 < self.max_response_bytes < size:
            raise response_too_large(size, self.max_response_bytes)

    def fill(self, response: Any, revision: int | None = None) -> Any:
        """Top-level header fields; keeps the store's revision unless one is given."""
        rev = revision if revision is not None else (response.header.revision or self.store.current_revision)
        self.header(response.header, rev)
        return response

    def on_applied(self) -> None:
        """Called by the node after each batch: wake revision waiters (lock, election)."""
        self._changed.set()
        self._changed = trio.Event()

    def watch_wakeup(self, stream_id: int) -> None:
        session = self._watch_wakeups.get(stream_id)
        if session is not None:
            session.wakeup.set()

    def _request(self, caller: Caller, **fields: Any) -> raft_internal_pb2.InternalRaftRequest:
        """The log entry for a request: it carries who asked and the auth revision they were
        authorised at, and is checked again when applied (etcd's RequestHeader)."""
        req = raft_internal_pb2.InternalRaftRequest(**fields)
        req.header.username = caller.username
        req.header.auth_revision = caller.auth_revision
        if caller is SERVER_CALLER:
            req.header.internal = True
        return req

    def _reauthorize(self, caller: Caller, field: str, body: Any) -> Caller:
        """After ``revision of auth store is old`` at apply: the same caller, authorised again
        against the new auth state (raises when the change took the permission away)."""
        method = KIND_METHOD.get(field)
        if method is None or caller is SERVER_CALLER:
            raise err(ERR_AUTH_OLD_REVISION)
        return self.gate.refresh(caller, method, body)

    # Set by the server: etcd's --quota-backend-bytes (effective value, 0 = none).
    quota_bytes = 0
    _nospace_proposed = -1.0

    def _check_quota(self, req: raft_internal_pb2.InternalRaftRequest) -> None:
        """etcd's quota check before a write reaches the log.

        With NOSPACE raised, the node core's check (which the simulator runs too) refuses
        every write with a cost. Otherwise, as etcd's quotaKVServer: when the backend *file*
        plus the request's cost would reach the quota, this member proposes the NOSPACE alarm
        for itself and refuses the write. The file does not shrink when a compaction frees
        pages, only after a defragment, exactly as etcd's bbolt file. The applier also refuses
        writes over the quota by the store's logical size, deterministically on every member,
        for writes already in flight.
        """
        self.node.core.check_quota(req)
        kind = req.WhichOneof("request")
        if kind is None or not self.quota_bytes or self.applier.alarms.nospace:
            return
        cost = request_cost(getattr(req, kind))
        if cost and self.node.backend_size + cost >= self.quota_bytes:
            now = self.clock()
            if now - self._nospace_proposed >= 1.0:  # one alarm proposal per second at most
                self._nospace_proposed = now
                alarm = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id,
                                             alarm=rpc_pb2.NOSPACE)
                self.node.propose_nowait(self._request(SERVER_CALLER, alarm=alarm))  # the member's own
            raise err(ERR_NO_SPACE)

    async def _propose(self, caller: Caller, **fields: Any) -> Any:
        self._refuse_learner()
        return await self._propose_unchecked(caller, quota=True, **fields)

    async def _propose_unchecked(self, caller: Caller, quota: bool = False, **fields: Any) -> Any:
        """Propose one request (no learner check) and wait for its result."""
        for attempt in (1, 2):
            req = self._request(caller, **fields)
            if quota:
                self._check_quota(req)
            try:
                return await self.node.propose(req)
            except EtcdError as exc:
                # Auth changed between authorising and applying: once more, against the new
                # state (etcd makes the client do this; the result is the same).
                if exc != ERR_AUTH_OLD_REVISION or attempt == 2 or len(fields) != 1:
                    raise
                (field, body), = fields.items()
                caller = self._reauthorize(caller, field, body)
        raise AssertionError("unreachable")

    # -- KV: hot-path callbacks (run in the trio thread without spawning a task) -----------

    def _refuse_learner(self) -> None:
        if self.node.is_listed_learner():
            raise err(ERR_LEARNER_NOT_SUPPORTED)

    def needs_read_index(self, serializable: bool) -> bool:
        """Linearizable reads need a ReadIndex round unless this member is the only voter and
        leads (the node core decides; a learner serves serializable reads only)."""
        return self.node.core.needs_read_index(serializable)

    def range_cb(self, req: rpc_pb2.RangeRequest, caller: Caller, reply: Any) -> None:
        validate_range(req)
        if self.needs_read_index(req.serializable):
            def ready(error: BaseException | None) -> None:
                if error is not None:
                    reply(None, error)
                    return
                try:
                    self.gate.refresh(caller, "Range", req)  # auth may have changed meanwhile
                    reply(self.fill(self.store.range(req, self.max_response_bytes), self.store.current_revision), None)
                except BaseException as exc:
                    reply(None, exc)

            self.node.read_index(ready)
            return
        reply(self.fill(self.store.range(req, self.max_response_bytes), self.store.current_revision), None)

    def prepare(self, field: str, payload: bytes, caller: Caller) -> Prepared:
        """A hot write received as bytes, made into its log entry and decoded once (the
        dispatcher calls this for API rows with an ``entry``; ``api/table.py``). The entry
        carries the caller's user name and the auth revision it was identified at."""
        return self.node.prepare(field, payload, caller.username, caller.auth_revision)

    def _write_cb(self, entry: Prepared, caller: Caller, reply: Any, retry: bool = True) -> None:
        self._refuse_learner()
        self._check_quota(entry.request)

        def done(result: Any, error: BaseException | None) -> None:
            if error is None and result.error is not None:
                error = result.error
            if retry and error == ERR_AUTH_OLD_REVISION:
                # Auth changed between authorising and applying: once more, against the new
                # state, as a new entry (same request bytes, the new revision in its header).
                try:
                    fresh = self._reauthorize(caller, entry.field, entry.body)
                    self._write_cb(self.prepare(entry.field, entry.payload, fresh), fresh, reply, retry=False)
                    return
                except BaseException as exc:
                    error = exc
            reply(None if error is not None else self.fill(result.response), error)

        self.node.submit_prepared(entry, done)

    def put_cb(self, entry: Prepared, caller: Caller, reply: Any) -> None:
        validate_put(entry.body)
        self._write_cb(entry, caller, reply)

    def delete_range_cb(self, entry: Prepared, caller: Caller, reply: Any) -> None:
        validate_delete_range(entry.body)
        self._write_cb(entry, caller, reply)

    def txn_cb(self, entry: Prepared, caller: Caller, reply: Any) -> None:
        req = entry.body
        validate_txn(req, self.max_txn_ops, self.node.max_request_bytes)
        if is_txn_readonly(req):
            if self.needs_read_index(False):
                def ready(error: BaseException | None) -> None:
                    if error is not None:
                        reply(None, error)
                        return
                    try:
                        self.gate.refresh(caller, "Txn", req)  # auth may have changed meanwhile
                        reply(self.fill(self.store.txn_readonly(req, self.max_response_bytes), self.store.current_revision),
                              None)
                    except BaseException as exc:
                        reply(None, exc)

                self.node.read_index(ready)
                return
            reply(self.fill(self.store.txn_readonly(req, self.max_response_bytes), self.store.current_revision),
                              None)
            return
        self._write_cb(entry, caller, reply)

    # -- KV ----------------------------------------------------------------------------------

    async def range(self, req: rpc_pb2.RangeRequest, caller: Caller) -> rpc_pb2.RangeResponse:
        validate_range(req)
        if self.needs_read_index(req.serializable):
            await self.node.wait_read_index()
            self.gate.refresh(caller, "Range", req)
        return self.fill(self.store.range(req, self.max_response_bytes), self.store.current_revision)

    async def put(self, req: rpc_pb2.PutRequest, caller: Caller) -> rpc_pb2.PutResponse:
        validate_put(req)
        result = await self._propose(caller, put=req)
        return self.fill(result.response)

    async def delete_range(self, req: rpc_pb2.DeleteRangeRequest, caller: Caller) -> rpc_pb2.DeleteRangeResponse:
        validate_delete_range(req)
        result = await self._propose(caller, delete_range=req)
        return self.fill(result.response)

    async def txn(self, req: rpc_pb2.TxnRequest, caller: Caller) -> rpc_pb2.TxnResponse:
        validate_txn(req, self.max_txn_ops, self.node.max_request_bytes)
        if is_txn_readonly(req):
            return self.fill(self.store.txn_readonly(req, self.max_response_bytes), self.store.current_revision)
        result = await self._propose(caller, txn=req)
        return self.fill(result.response)

    async def compact(self, req: rpc_pb2.CompactionRequest, caller: Caller) -> rpc_pb2.CompactionResponse:
        result = await self._propose(caller, compaction=req)
        response = result.response if result.response is not None else rpc_pb2.CompactionResponse()
        return self.fill(response, result.revision)

    # -- Lease -------------------------------------------------------------------------------

    async def lease_grant(self, req: rpc_pb2.LeaseGrantRequest, caller: Caller) -> rpc_pb2.LeaseGrantResponse:
        from securekv.lease import new_lease_id

        grant = rpc_pb2.LeaseGrantRequest()
        grant.CopyFrom(req)
        owner = caller.username or caller.identity.remote.rpartition(":")[0]
        granted = self._lease_grants.setdefault(owner, set())
        if len(granted) >= self.max_leases_per_identity:
            self._prune_lease_grants(owner, granted)
            if len(granted) >= self.max_leases_per_identity:
                raise EtcdError("RESOURCE_EXHAUSTED", ERR_TOO_MANY_LEASES_REASON)
        if grant.ID == 0:
            grant.ID = new_lease_id(self.rng, exists=self.lessor.__contains__)
        granted.add(grant.ID)  # counted while the proposal is in flight, too
        try:
            result = await self._propose(caller, lease_grant=grant)
        except BaseException:
            if grant.ID not in self.lessor:
                granted.discard(grant.ID)
            raise
        if self.metrics is not None:
            self.metrics.lease_ttl.observe(grant.TTL)
        return self.fill(result.response, self.store.current_revision)

    async def lease_revoke(self, req: rpc_pb2.LeaseRevokeRequest, caller: Caller) -> rpc_pb2.LeaseRevokeResponse:
        result = await self._propose_unchecked(caller, lease_revoke=req)
        response = result.response if result.response is not None else rpc_pb2.LeaseRevokeResponse()
        return self.fill(response, result.revision)

    async def lease_time_to_live(self, req: rpc_pb2.LeaseTimeToLiveRequest, caller: Caller) -> Any:
        if self._forward_leases():
            data = await self._call_leader("lease_ttl", req.SerializeToString())
            return self.fill(rpc_pb2.LeaseTimeToLiveResponse.FromString(data), self.store.current_revision)
        return self._time_to_live(req)

    def _time_to_live(self, req: rpc_pb2.LeaseTimeToLiveRequest) -> Any:
        remaining, granted, keys = self.lessor.time_to_live(req.ID, self.clock())
        resp = rpc_pb2.LeaseTimeToLiveResponse(ID=req.ID, TTL=remaining, grantedTTL=granted)
        if req.keys:
            resp.keys.extend(keys)
        return self.fill(resp, self.store.current_revision)

    def _prune_lease_grants(self, owner: str, granted: set[int]) -> None:
        """Forget this identity's leases that are gone (revoked, expired). Done only when it is
        at its cap, and again only after some lease went away, so an identity hammering its cap
        costs one lookup per refused grant, not a sweep."""
        removals = self.lessor.removals
        if self._lease_grants_full.get(owner) == removals:
            return
        granted.intersection_update([i for i in granted if i in self.lessor])
        self._lease_grants_full[owner] = removals

    async def lease_leases(self, req: rpc_pb2.LeaseLeasesRequest, caller: Caller) -> rpc_pb2.LeaseLeasesResponse:
        resp = rpc_pb2.LeaseLeasesResponse()
        ids = self.lessor.leases()
        if self.max_response_bytes:
            # each listed lease takes at least 4 bytes (tag, length, ID tag, one-byte varint)
            self.check_response_size(4 * len(ids))
        for lease_id in ids:
            resp.leases.add(ID=lease_id)
        return self.fill(resp, self.store.current_revision)

    def _forward_leases(self) -> bool:
        return self.transport is not None and not self.node.is_leader

    async def _call_leader(self, kind: str, payload: bytes) -> bytes:
        """Lease clocks live on the leader: forward (etcd forwards keepalive/TTL over HTTP)."""
        from securekv.errors import PeerError
        from securekv.rpctypes import ERR_TIMEOUT

        leader = self.node.leader
        if leader == 0:
            raise err(ERR_NO_LEADER)
        try:
            data = await self.transport.call(leader, kind, payload, self.node.request_timeout)
        except PeerError:
            raise err(ERR_TIMEOUT) from None
        if data.startswith(b"\x00ERR:"):
            code, _, message = data[5:].decode().partition(":")
            raise EtcdError(code, message)
        return data

    def register_peer_calls(self, transport: Any) -> None:
        """Calls other members forward to this one (the leader): each passes the gate as the
        calling member's identity (the peer transport verified its certificate)."""
        def guarded(kind: str, fn: Any) -> Any:
            async def handler(frm: int, payload: bytes) -> bytes:
                try:
                    self.gate.authorize(self.gate.peer_caller(frm), PEER + kind, payload)
                    return await fn(payload)
                except EtcdError as exc:
                    return b"\x00ERR:" + f"{exc.code}:{exc.message}".encode()
            return handler

        async def keepalive_run(p: bytes) -> bytes:
            if not self.node.is_leader:
                raise err(ERR_NOT_LEADER)
            return self.keepalive(int.from_bytes(p, "big", signed=True)).SerializeToString()

        async def ttl_run(p: bytes) -> bytes:
            if not self.node.is_leader:
                raise err(ERR_NOT_LEADER)
            return self._time_to_live(rpc_pb2.LeaseTimeToLiveRequest.FromString(p)).SerializeToString()

        async def promote_run(p: bytes) -> bytes:
            req = rpc_pb2.MemberPromoteRequest.FromString(p)
            return (await self.member_promote(req, None)).SerializeToString()

        keepalive = guarded("lease_keepalive", keepalive_run)
        ttl = guarded("lease_ttl", ttl_run)
        promote = guarded("member_promote", promote_run)

        async def hashkv_run(p: bytes) -> bytes:
            from securekv.server.corrupt import serve_hashkv

            return serve_hashkv(self, p)

        transport.register_call("hashkv", guarded("hashkv", hashkv_run))
        transport.register_call("lease_keepalive", keepalive)
        transport.register_call("lease_ttl", ttl)
        transport.register_call("member_promote", promote)

    async def keepalive_async(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        if self._forward_leases():
            data = await self._call_leader("lease_keepalive", lease_id.to_bytes(8, "big", signed=True))
            return self.fill(rpc_pb2.LeaseKeepAliveResponse.FromString(data), self.store.current_revision)
        return self.keepalive(lease_id)

    def keepalive(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        ttl = self.lessor.renew(lease_id, self.clock())
        if ttl > 0 and self.metrics is not None:
            self.metrics.lease_renewed += 1
        return self.fill(rpc_pb2.LeaseKeepAliveResponse(ID=lease_id, TTL=ttl), self.store.current_revision)

    async def open_keepalive(self, _request: Any, caller: Caller) -> "KeepAliveSession":
        return KeepAliveSession(self, caller)

    def on_leader_change(self, old: int, new: int) -> None:
        """Leadership moved: the node core already promoted or demoted the lessor (only the
        leader's keeps deadlines, extended by an election timeout); wake revision waiters."""
        self.on_applied()

    election_timeout = 1.0

    async def expire_leases(self) -> None:
        """Lease ticker: the node core proposes a revoke for each expired lease (through the
        log, leader only)."""
        expired = self.node.expire_leases()
        if expired and self.metrics is not None:
            self.metrics.lease_expired += expired

    # -- Watch -------------------------------------------------------------------------------

    # Most watchers one identity may hold (--max-watches-per-identity); set by the runtime.
    max_watches_per_identity = 100_000

    async def open_watch(self, _request: Any, caller: Caller) -> "WatchSession":
        session = WatchSession(self, caller)
        self._watch_wakeups[session.stream.id] = session
        self._watch_owners.setdefault(session.owner, set()).add(session)
        return session

    def watchers_of(self, owner: str) -> int:
        return sum(s.stream.statistics().watchers for s in self._watch_owners.get(owner, ()))

    # -- Cluster -----------------------------------------------------------------------------

    def member(self) -> rpc_pb2.Member:
        return rpc_pb2.Member(ID=self.member_id, name=self.name, peerURLs=self.peer_urls, clientURLs=self.client_urls)

    def members(self) -> list[rpc_pb2.Member]:
        ms = self.node.membership.members
        if not ms:
            return [self.member()]
        out = []
        for m in sorted(ms.values(), key=lambda m: m.id):
            client = list(m.client_urls) if m.id != self.member_id else self.client_urls
            name = m.name if m.id != self.member_id else self.name
            out.append(rpc_pb2.Member(ID=m.id, name=name, peerURLs=list(m.peer_urls), clientURLs=client,
                                      isLearner=m.is_learner))
        return out

    def _active_since(self, member_id: int) -> float | None:
        """When the outgoing link to ``member_id`` came up (trio's clock), None while it is down."""
        return None if self.transport is None else self.transport.active_since(member_id)

    def _voters(self) -> list[int]:
        return list(self.node.conf_state().voters)

    # -- joining without the CA key (securekv/cluster/signer.py; run.py sets ``joins``) -------
    def _joins(self) -> Any:
        joins = getattr(self, "joins", None)
        if joins is None:
            from securekv.cluster.signer import ERR_NO_SIGNER

            raise err(ERR_NO_SIGNER)
        return joins

    async def join_token_create(self, req: Any, caller: Caller) -> Any:
        return await self._joins().token_create(req, caller)

    async def join_token_list(self, req: Any, caller: Caller) -> Any:
        return await self._joins().token_list(req, caller)

    async def join_token_revoke(self, req: Any, caller: Caller) -> Any:
        return await self._joins().token_revoke(req, caller)

    async def join_ca_bundle(self, req: Any, caller: Caller) -> Any:
        return await self._joins().ca_bundle(req, caller)

    async def join(self, req: Any, caller: Caller) -> Any:
        return await self._joins().join(req, caller)

    async def join_renew(self, req: Any, caller: Caller) -> Any:
        return await self._joins().renew(req, caller)

    async def cert_status(self, req: Any, caller: Caller) -> Any:
        return await self._joins().cert_status(req, caller)

    async def member_add(self, req: rpc_pb2.MemberAddRequest, caller: Caller) -> rpc_pb2.MemberAddResponse:
        import time as _time

        from securekv.raft import ConfChange, ConfChangeType
        from securekv.rpctypes import (ERR_MEMBER_BAD_URLS, ERR_MEMBER_NOT_ENOUGH_STARTED, ERR_PEER_URL_EXIST,
                                       ERR_UNHEALTHY)
        from securekv.server import ids, reconfig
        from securekv.server.cluster import Member

        urls = [str(u) for u in req.peerURLs]
        if not urls or any(not (u.startswith("https://") or u.startswith("http://")) for u in urls):
            raise err(ERR_MEMBER_BAD_URLS)
        for m in self.node.membership.members.values():
            if set(urls) & set(m.peer_urls):
                raise err(ERR_PEER_URL_EXIST)
        if not req.isLearner and self.strict_reconfig_check:
            # etcd's mayAddMember (server/reconfig.py): too few started voters is lasting; a
            # voter not reached over a settled link is passing ("unhealthy cluster", retried).
            # Unlike etcd 3.4, a learner (no vote) is not refused for a link coming back: the
            # join flow consumes its single-use token before it adds the learner.
            if not reconfig.ready_to_add_voter(self.node.membership.members.values()):
                raise err(ERR_MEMBER_NOT_ENOUGH_STARTED)
            if not reconfig.healthy_to_add(self._active_since, trio.current_time(), self.member_id, self._voters()):
                raise err(ERR_UNHEALTHY)
        # Deterministic (no time stamp, unlike etcd) so the joining member, started with the
        # same --initial-cluster-token, derives the same ID from its peer URLs.
        mid = ids.member_id(urls, self.cluster_token)
        if mid in self.node.membership.removed or mid in self.node.membership.members:
            mid = ids.member_id(urls, self.cluster_token, int(_time.time()))
        member = Member(mid, "", sorted(urls), (), bool(req.isLearner))
        cc = ConfChange(ConfChangeType.ADD_LEARNER if req.isLearner else ConfChangeType.ADD_NODE, mid,
                        member.context())
        await self.node.propose_conf_change(cc)
        resp = rpc_pb2.MemberAddResponse(member=rpc_pb2.Member(ID=mid, peerURLs=urls, isLearner=req.isLearner),
                                         members=self.members())
        self.header(resp.header)
        return resp

    async def member_remove(self, req: rpc_pb2.MemberRemoveRequest, caller: Caller) -> rpc_pb2.MemberRemoveResponse:
        from securekv.raft import ConfChange, ConfChangeType
        from securekv.rpctypes import ERR_MEMBER_NOT_ENOUGH_STARTED, ERR_MEMBER_NOT_FOUND, ERR_UNHEALTHY
        from securekv.server import reconfig

        m = self.node.membership.members.get(req.ID)
        if m is None:
            raise err(ERR_MEMBER_NOT_FOUND)
        if not m.is_learner and self.strict_reconfig_check:
            # etcd's mayRemoveMember (server/reconfig.py).
            if not reconfig.ready_to_remove_voter(self.node.membership.members.values(), req.ID):
                raise err(ERR_MEMBER_NOT_ENOUGH_STARTED)
            if not reconfig.healthy_to_remove(self._active_since, trio.current_time(), self.member_id,
                                              self._voters(), req.ID):
                raise err(ERR_UNHEALTHY)
        await self.node.propose_conf_change(ConfChange(ConfChangeType.REMOVE_NODE, req.ID))
        resp = rpc_pb2.MemberRemoveResponse(members=self.members())
        self.header(resp.header)
        return resp

    async def member_update(self, req: rpc_pb2.MemberUpdateRequest, caller: Caller) -> rpc_pb2.MemberUpdateResponse:
        from securekv.raft import ConfChange, ConfChangeType
        from securekv.rpctypes import ERR_MEMBER_BAD_URLS, ERR_MEMBER_NOT_FOUND, ERR_PEER_URL_EXIST
        from securekv.server.cluster import Member

        m = self.node.membership.members.get(req.ID)
        if m is None:
            raise err(ERR_MEMBER_NOT_FOUND)
        urls = [str(u) for u in req.peerURLs]
        if not urls or any(not (u.startswith("https://") or u.startswith("http://")) for u in urls):
            raise err(ERR_MEMBER_BAD_URLS)
        for other in self.node.membership.members.values():
            if other.id != req.ID and set(urls) & set(other.peer_urls):
                raise err(ERR_PEER_URL_EXIST)
        # A conf change that Raft treats as a no-op (already a voter/learner) whose context
        # carries the new URLs: every member applies the update at the same index.
        kind = ConfChangeType.ADD_LEARNER if m.is_learner else ConfChangeType.ADD_NODE
        ctx = Member(m.id, m.name, sorted(urls), (), m.is_learner).context()
        await self.node.propose_conf_change(ConfChange(kind, req.ID, ctx))
        resp = rpc_pb2.MemberUpdateResponse(members=self.members())
        self.header(resp.header)
        return resp

    async def member_promote(self, req: rpc_pb2.MemberPromoteRequest, caller: Caller) -> rpc_pb2.MemberPromoteResponse:
        from securekv.raft import ConfChange, ConfChangeType
        from securekv.rpctypes import (ERR_LEARNER_NOT_READY, ERR_MEMBER_NOT_ENOUGH_STARTED, ERR_MEMBER_NOT_FOUND,
                                       ERR_MEMBER_NOT_LEARNER)
        from securekv.server import reconfig

        m = self.node.membership.members.get(req.ID)
        if m is None:
            raise err(ERR_MEMBER_NOT_FOUND)
        if not m.is_learner:
            raise err(ERR_MEMBER_NOT_LEARNER)
        if not self.node.is_leader:
            data = await self._call_leader("member_promote", req.SerializeToString())
            return rpc_pb2.MemberPromoteResponse.FromString(data)
        progress = self.node.status().progress
        mine = progress.get(self.member_id)
        theirs = progress.get(req.ID)
        if mine is None or theirs is None or theirs.match < mine.match * 0.9:
            raise err(ERR_LEARNER_NOT_READY)
        # etcd's mayPromoteMember: started voters only (server/reconfig.py); no link check.
        if self.strict_reconfig_check and not reconfig.ready_to_promote(self.node.membership.members.values()):
            raise err(ERR_MEMBER_NOT_ENOUGH_STARTED)
        await self.node.propose_conf_change(ConfChange(ConfChangeType.PROMOTE_LEARNER, req.ID))
        if self.metrics is not None:
            self.metrics.promotions += 1
        resp = rpc_pb2.MemberPromoteResponse(members=self.members())
        self.header(resp.header)
        return resp

    async def publish_loop(self) -> None:
        """Make this member's name and client URLs part of the replicated membership (etcd's
        publish): retried until applied, so `member list` on any member shows them. Done only
        once a leader is known — also on a restart whose attributes are already in the
        membership — so READY=1 and the client listeners mean "serving", as with etcd (whose
        publish is a committed proposal), e.g. right after a --force-new-cluster restart."""
        from securekv.server.cluster import publish_entry

        last = -10.0
        while True:
            m = self.node.membership.members.get(self.member_id)
            if (m is not None and list(m.client_urls) == list(self.client_urls) and m.name == self.name
                    and self.node.leader != 0):
                self.published = True
                self.published_event.set()
                self._log_published()
                return
            now = trio.current_time()
            if self.node.leader != 0 and m is not None and now - last >= 1.0:
                last = now
                self.node.propose_raw(publish_entry(self.member_id, name=self.name, clientURLs=self.client_urls))
            with trio.move_on_after(0.2):
                await self.node.wait_applied()

    def _log_published(self) -> None:
        from securekv.server.etcdlog import event

        attrs_text = f"{{Name:{self.name} ClientURLs:[{' '.join(self.client_urls)}]}}"
        event(log, logging.INFO, "published local member to cluster through raft",
              capnslog=f"published {attrs_text} to cluster {self.cluster_id:x}", pkg="etcdserver",
              **{"local-member-id": f"{self.member_id:x}", "local-member-attributes": attrs_text,
                 "request-path": f"/0/members/{self.member_id:x}/attributes", "cluster-id": f"{self.cluster_id:x}",
                 "publish-timeout": "7s"})
        event(log, logging.INFO, "enabled capabilities for version", capnslog=f"enabled capabilities for version "
              f"{CLUSTER_VERSION[:3]}", pkg="etcdserver/api", **{"cluster-version": CLUSTER_VERSION[:3]})

    async def member_list(self, req: Any, caller: Caller) -> rpc_pb2.MemberListResponse:
        resp = rpc_pb2.MemberListResponse(members=self.members())
        self.header(resp.header)
        return resp

    # -- Maintenance -------------------------------------------------------------------------

    def alarm_errors(self) -> list[str]:
        out = []
        for a in self.applier.alarms.list():
            name = rpc_pb2.AlarmType.Name(a.alarm)
            out.append(f"memberID:{a.memberID} alarm:{name} " if a.memberID else f"alarm:{name} ")
        return out

    async def status(self, req: Any, caller: Caller) -> rpc_pb2.StatusResponse:
        size, in_use = await self.node.backend_call(_sizes, self.backend)
        resp = rpc_pb2.StatusResponse(
            version=VERSION,
            dbSize=size,
            dbSizeInUse=in_use,
            leader=self.node.leader,
            raftIndex=self.node.commit_index,
            raftTerm=self.term,
            raftAppliedIndex=self.applier.applied_index,
            isLearner=self.node.is_learner(),
            errors=self.alarm_errors(),
        )
        return self.fill(resp, self.store.current_revision)

    async def hash(self, req: Any, caller: Caller) -> rpc_pb2.HashResponse:
        started = trio.current_time()
        value = await self.node.backend_call(self.backend.content_hash)
        if self.metrics is not None:
            self.metrics.hash_seconds.observe(trio.current_time() - started)
        return self.fill(rpc_pb2.HashResponse(hash=value & 0xFFFFFFFF), self.store.current_revision)

    async def hash_kv(self, req: rpc_pb2.HashKVRequest, caller: Caller) -> rpc_pb2.HashKVResponse:
        started = trio.current_time()
        value, compact = self.store.hash_kv(req.revision)
        if self.metrics is not None:
            self.metrics.hash_rev_seconds.observe(trio.current_time() - started)
        return self.fill(rpc_pb2.HashKVResponse(hash=value, compact_revision=compact), self.store.current_revision)

    async def alarm(self, req: rpc_pb2.AlarmRequest, caller: Caller) -> rpc_pb2.AlarmResponse:
        if req.action == rpc_pb2.AlarmRequest.GET or (
            req.action == rpc_pb2.AlarmRequest.ACTIVATE and req.alarm == rpc_pb2.NONE
        ):
            resp = rpc_pb2.AlarmResponse(alarms=self.applier.alarms.list(req.alarm))
        else:
            result = await self._propose_unchecked(caller, alarm=req)
            resp = result.response if result.response is not None else rpc_pb2.AlarmResponse()
        return resp  # etcd 3.4 sends Alarm answers without a header (`alarm list -w json` is `{}`)

    async def defragment(self, req: Any, caller: Caller) -> rpc_pb2.DefragmentResponse:
        started = trio.current_time()
        self.defragmenting = True
        try:
            await self.node.backend_call(self.backend.defragment)
        finally:
            self.defragmenting = False
        self.node.backend_size = await self.node.backend_call(self.backend.size_bytes)  # the quota's view
        if self.metrics is not None:
            self.metrics.defrag_seconds.observe(trio.current_time() - started)
        return rpc_pb2.DefragmentResponse()

    async def move_leader(self, req: rpc_pb2.MoveLeaderRequest, caller: Caller) -> rpc_pb2.MoveLeaderResponse:
        from securekv.rpctypes import ERR_TIMEOUT

        if req.targetID == self.member_id and self.node.is_leader:
            return rpc_pb2.MoveLeaderResponse()
        if not self.node.is_leader:
            raise err(ERR_NOT_LEADER)
        cs = self.node.conf_state()
        if req.targetID not in cs.voters:
            raise err(ERR_BAD_LEADER_TRANSFEREE)
        self.node.transfer_leader(req.targetID)
        with trio.move_on_after(self.node.request_timeout):
            while self.node.leader != req.targetID:
                await self.node.wait_leader_change()
            return rpc_pb2.MoveLeaderResponse()
        raise err(ERR_TIMEOUT)

    async def build_snapshot(self) -> "BuiltSnapshot":
        """An etcd-format (bbolt) snapshot in a private temp file the caller owns (and deletes).

        The backend's consistent copy is taken under the backend lock (fast, sqlite's backup
        API); the conversion to etcd's buckets then runs in a worker thread on that copy, so
        commits go on meanwhile. Both temp files (random names, created with O_EXCL|O_NOFOLLOW)
        match the ``.snapshot-*`` glob that start-up removes after a crash. Used by the Snapshot
        RPC and the scheduled backups.
        """
        self._snapshots += 1
        base = Path(self.snapshot_dir) / f".snapshot-{os.getpid()}-{self._snapshots}-{secrets.token_hex(6)}"
        copy, path = Path(f"{base}.sqlite"), Path(f"{base}.db")
        started = trio.current_time()
        try:
            await self.node.backend_call(self.backend.backup_to, str(copy))
            revision = await trio.to_thread.run_sync(_copy_revision, str(copy))
            await trio.to_thread.run_sync(export_snapshot, str(copy), str(path), CLUSTER_VERSION)
        finally:
            copy.unlink(missing_ok=True)
        if self.metrics is not None:
            self.metrics.backend_snapshot_seconds.observe(trio.current_time() - started)
        return BuiltSnapshot(path, revision, self.cluster_id, self.member_id, self.term)

    async def open_snapshot(self, req: Any, caller: Caller) -> "SnapshotSession":
        """The Snapshot RPC: a built snapshot, streamed (and deleted) by the session. The first
        response carries the header (cluster, member, the snapshot's revision), which
        ``securekv ctl snapshot save`` records in an encrypted file's header; etcd 3.4 leaves it
        empty and its clients ignore it.

        At most MAX_CONCURRENT_SNAPSHOTS run at once (a slot is held until the session ends),
        and none starts when it would leave the data dir short of free space."""
        from securekv.rpctypes import ERR_SNAPSHOT_BUSY

        try:
            self._snapshot_slots.acquire_nowait()
        except trio.WouldBlock:
            raise err(ERR_SNAPSHOT_BUSY) from None
        try:
            self._check_snapshot_space()
            built = await self.build_snapshot()
            first = rpc_pb2.ResponseHeader(cluster_id=built.cluster_id, member_id=built.member_id,
                                           revision=built.revision, raft_term=built.raft_term)
            return SnapshotSession(built.path, first, release=self._snapshot_slots.release)
        except BaseException:
            self._snapshot_slots.release()
            raise

    def _check_snapshot_space(self) -> None:
        """Refuse a snapshot that would leave less than SNAPSHOT_FREE_RESERVE free (counting the
        snapshots already in progress as if they still needed their full share)."""
        from securekv.rpctypes import ERR_SNAPSHOT_NO_SPACE

        try:
            size = os.path.getsize(self.backend.path)
            usage = shutil.disk_usage(self.snapshot_dir)
        except OSError:
            return
        reserve = snapshot_free_reserve(usage.total)
        running = MAX_CONCURRENT_SNAPSHOTS - self._snapshot_slots.value  # including this one
        if usage.free - running * SNAPSHOT_SPACE_FACTOR * size < reserve:
            log.warning("refusing a snapshot: %d bytes free in %s, a snapshot needs about %d and %d must stay free",
                        usage.free, self.snapshot_dir, SNAPSHOT_SPACE_FACTOR * size, reserve)
            raise err(ERR_SNAPSHOT_NO_SPACE)

    async def health_check(self, req: Any, caller: Caller) -> Any:
        """grpc.health.v1 as etcd registers it: the server ("") is SERVING; any other service
        name is unknown (grpc-go's health server answers NotFound)."""
        from securekv.proto import health_pb2

        if req.service:
            raise EtcdError("NOT_FOUND", "unknown service")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def open_health_watch(self, req: Any, caller: Caller) -> "HealthWatchSession":
        return HealthWatchSession(req.service)

    async def health(self) -> tuple[bool, str]:
        if self.node.stopped:
            return False, "server stopped"
        if self.node.leader == 0:
            return False, "no leader"
        if not self.published:
            return False, "member not yet published"
        if self.applier.alarms.list():
            return False, "alarm"
        return True, ""

    # -- v3lock ------------------------------------------------------------------------------

    async def _session_lease(self, lease: int, caller: Caller) -> int:
        if lease:
            return lease
        resp = await self.lease_grant(rpc_pb2.LeaseGrantRequest(TTL=LOCK_SESSION_TTL), caller)
        return resp.ID

    async def _wait_deletes(self, prefix: bytes, max_create_rev: int) -> None:
        """Wait until no key under prefix has create_revision <= max_create_rev (etcd's waitDeletes)."""
        while True:
            rng = rpc_pb2.RangeRequest(
                key=prefix,
                range_end=prefix_end(prefix),
                limit=1,
                sort_order=rpc_pb2.RangeRequest.DESCEND,
                sort_target=rpc_pb2.RangeRequest.CREATE,
                max_create_revision=max_create_rev,
            )
            changed = self._changed
            if not self.store.range(rng).kvs:
                return
            await changed.wait()

    async def _acquire(self, name: bytes, lease: int, value: bytes, caller: Caller) -> tuple[bytes, int, int]:
        """Create name/<lease> if absent and wait to be the oldest: (key, create_rev, revision)."""
        prefix = name + b"/"
        key = prefix + (b"%x" % lease)
        cmp = rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL, create_revision=0)
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        get = rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))
        txn = rpc_pb2.TxnRequest(compare=[cmp], success=[put], failure=[get])
        resp = await self.txn(txn, caller)
        if resp.succeeded:
            my_rev = resp.header.revision
        else:
            kvs = resp.responses[0].response_range.kvs
            my_rev = kvs[0].create_revision if kvs else resp.header.revision
            if kvs and kvs[0].value != value:
                await self.put(rpc_pb2.PutRequest(key=key, value=value, lease=lease), caller)
        try:
            await self._wait_deletes(prefix, my_rev - 1)
        except trio.Cancelled:
            # The caller gave up: withdraw from the queue (etcd's Mutex.Lock does the same).
            with trio.CancelScope(shield=True):
                try:
                    await self.delete_range(rpc_pb2.DeleteRangeRequest(key=key), caller)
                except EtcdError:
                    pass
            raise
        return key, my_rev, self.store.current_revision

    async def lock(self, req: v3lock_pb2.LockRequest, caller: Caller) -> v3lock_pb2.LockResponse:
        lease = await self._session_lease(req.lease, caller)
        if lease not in self.lessor:
            from securekv.rpctypes import ERR_LEASE_NOT_FOUND

            raise err(ERR_LEASE_NOT_FOUND)
        key, _rev, revision = await self._acquire(req.name, lease, b"", caller)
        resp = v3lock_pb2.LockResponse(key=key)
        self.header(resp.header, revision)
        return resp

    async def unlock(self, req: v3lock_pb2.UnlockRequest, caller: Caller) -> v3lock_pb2.UnlockResponse:
        resp = await self.delete_range(rpc_pb2.DeleteRangeRequest(key=req.key), caller)
        out = v3lock_pb2.UnlockResponse()
        self.header(out.header, resp.header.revision)
        return out

    # -- v3election --------------------------------------------------------------------------

    async def campaign(self, req: v3election_pb2.CampaignRequest, caller: Caller) -> Any:
        lease = await self._session_lease(req.lease, caller)
        key, my_rev, revision = await self._acquire(req.name, lease, req.value, caller)
        resp = v3election_pb2.CampaignResponse(
            leader=v3election_pb2.LeaderKey(name=req.name, key=key, rev=my_rev, lease=lease)
        )
        self.header(resp.header, revision)
        return resp

    async def proclaim(self, req: v3election_pb2.ProclaimRequest, caller: Caller) -> Any:
        leader = req.leader
        cmp = rpc_pb2.Compare(key=leader.key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                              create_revision=leader.rev)
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=leader.key, value=req.value, lease=leader.lease))
        resp = await self.txn(rpc_pb2.TxnRequest(compare=[cmp], success=[put]), caller)
        if not resp.succeeded:
            raise EtcdError(ERR_ELECTION_NOT_LEADER.code, ERR_ELECTION_NOT_LEADER.message)
        out = v3election_pb2.ProclaimResponse()
        self.header(out.header, resp.header.revision)
        return out

    def _leader_kv(self, name: bytes) -> Any | None:
        prefix = name + b"/"
        rng = rpc_pb2.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                                   sort_order=rpc_pb2.RangeRequest.ASCEND, sort_target=rpc_pb2.RangeRequest.CREATE)
        kvs = self.store.range(rng).kvs
        return kvs[0] if kvs else None

    async def leader(self, req: v3election_pb2.LeaderRequest, caller: Caller) -> Any:
        kv = self._leader_kv(req.name)
        if kv is None:
            raise EtcdError(ERR_ELECTION_NO_LEADER.code, ERR_ELECTION_NO_LEADER.message)
        resp = v3election_pb2.LeaderResponse(kv=kv)
        self.header(resp.header, self.store.current_revision)
        return resp

    async def resign(self, req: v3election_pb2.ResignRequest, caller: Caller) -> Any:
        leader = req.leader
        cmp = rpc_pb2.Compare(key=leader.key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                              create_revision=leader.rev)
        delete = rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=leader.key))
        resp = await self.txn(rpc_pb2.TxnRequest(compare=[cmp], success=[delete]), caller)
        out = v3election_pb2.ResignResponse()
        self.header(out.header, resp.header.revision)
        return out

    async def open_observe(self, req: v3election_pb2.LeaderRequest, caller: Caller) -> "ObserveSession":
        return ObserveSession(self, req, caller)


def _sizes(backend: Any) -> tuple[int, int]:
    return backend.size_bytes(), backend.size_in_use()


# -- stream sessions (trio side; the dispatcher pulls responses with next()) ----------------


ERR_TOO_MANY_WATCHERS_REASON = "securekv: too many watchers for this client identity"


class WatchSession:
    """One Watch stream. Each create is authorised (READ on its range) before the hub sees it;
    a refused one is answered ``created`` + ``canceled`` with etcd's Go-formatted reason. After
    any auth change every watcher of the stream is checked again and those no longer allowed
    are cancelled the same way before another event is sent (etcd keeps streaming them)."""

    def __init__(self, server: EtcdServer, caller: Caller) -> None:
        self.server = server
        self.caller = caller
        # Whose watchers these are, for --max-watches-per-identity.
        self.owner = caller.username or caller.identity.remote.rpartition(":")[0]
        self.wakeup = trio.Event()
        self.stream = server.hub.open_stream()
        self.pending: collections.deque = collections.deque()
        self.closed = False
        self.drained = trio.Event()

    async def handle(self, request: rpc_pb2.WatchRequest) -> None:
        if self.closed:
            return
        refused = ""
        if request.WhichOneof("request_union") == "create_request":
            try:
                self._recheck()
                self.server.gate.authorize_message(self.caller, WATCH_METHOD, request)
            except EtcdError as exc:
                refused = go_status(exc)
            else:
                if self.server.watchers_of(self.owner) >= self.server.max_watches_per_identity:
                    refused = ERR_TOO_MANY_WATCHERS_REASON
        if refused:
            self.stream.reject_create(refused)
        else:
            self.stream.handle(request)
        self.wakeup.set()
        while not self.stream.accepting and not self.closed:
            self.drained = trio.Event()
            await self.drained.wait()

    def _recheck(self) -> None:
        """Re-authorise the stream's watchers if the auth state moved since they were allowed."""
        if self.caller.auth_revision == self.server.auth_state().revision:
            return
        try:
            self.caller = self.server.gate.refresh(self.caller, WATCH_METHOD, None)
        except EtcdError as exc:  # a JWT from before the change: every watcher must re-login
            for watch_id, _key, _end in self.stream.watch_ranges():
                self.stream.revoke(watch_id, go_status(exc))
            return
        for watch_id, key, end in self.stream.watch_ranges():
            probe = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=key, range_end=end))
            try:
                self.server.gate.authorize_message(self.caller, WATCH_METHOD, probe)
            except EtcdError as exc:
                self.stream.revoke(watch_id, go_status(exc))

    async def half_close(self) -> None:
        """etcd keeps a watch stream open after the client half-closes."""

    async def next(self) -> Any | None:
        while not self.pending:
            if self.closed:
                return None
            self.wakeup = trio.Event()
            self._recheck()
            batch = self.stream.next_responses(64)
            self.drained.set()
            if batch:
                self.pending.extend(batch)
                break
            await self.wakeup.wait()
        response = self.pending.popleft()
        self.server.header(response.header)
        return response

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server._watch_wakeups.pop(self.stream.id, None)
        owned = self.server._watch_owners.get(self.owner)
        if owned is not None:
            owned.discard(self)
            if not owned:
                del self.server._watch_owners[self.owner]
        self.stream.close()
        self.wakeup.set()
        self.drained.set()


class KeepAliveSession:
    """A LeaseKeepAlive stream; every renewal is authorised (a revoked role stops renewing),
    and a refusal ends the stream with the error."""

    def __init__(self, server: EtcdServer, caller: Caller) -> None:
        self.server = server
        self.caller = caller
        self.send, self.recv = trio.open_memory_channel[Any](16)

    async def handle(self, request: rpc_pb2.LeaseKeepAliveRequest) -> None:
        try:
            self.caller = self.server.gate.refresh(self.caller, KEEPALIVE_METHOD, None)
            self.server.gate.authorize_message(self.caller, KEEPALIVE_METHOD, request)
            response: Any = await self.server.keepalive_async(request.ID)
        except EtcdError as exc:
            response = exc
        await self.send.send(response)
        if isinstance(response, EtcdError):
            self.send.close()

    async def half_close(self) -> None:
        self.send.close()

    async def next(self) -> Any | None:
        try:
            item = await self.recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None
        if isinstance(item, EtcdError):
            raise item
        return item

    def close(self) -> None:
        self.send.close()
        self.recv.close()


@attrs.frozen
class BuiltSnapshot:
    """A snapshot file made by ``EtcdServer.build_snapshot`` and what it holds."""

    path: Path
    revision: int  # etcd's: the main revision of the last row in bucket ``key``
    cluster_id: int
    member_id: int
    raft_term: int


def _copy_revision(copy: str) -> int:
    """The newest revision in a backend copy (what ``snapshot status`` reports for the export)."""
    import sqlite3

    conn = sqlite3.connect(Path(copy).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT max(main) FROM revision").fetchone()
    finally:
        conn.close()
    return int(row[0] or 0)


class SnapshotSession:
    """Streams a snapshot file in 32 KiB chunks, zero-padded to a multiple of 512 bytes (a bbolt
    file already is), then one final message whose blob is the SHA-256 of everything sent
    (etcd's format, §8: ``etcdctl snapshot save`` checks the length, ``restore`` the digest)."""

    def __init__(self, path: Path, first_header: rpc_pb2.ResponseHeader | None = None, release: Any = None) -> None:
        self.path = path
        self.first_header = first_header
        self._release = release  # frees the server's snapshot slot, once
        self.size = path.stat().st_size
        self.total = self.size + (-self.size) % 512
        self.sent = 0
        self.digest = hashlib.sha256()
        self.done = False

    async def handle(self, request: Any) -> None:  # server-streaming: no requests
        pass

    async def half_close(self) -> None:
        pass

    def _read(self, offset: int, length: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    async def next(self) -> Any | None:
        if self.done:
            return None
        if self.sent < self.total:
            want = min(SNAPSHOT_CHUNK, self.total - self.sent)
            chunk = b""
            if self.sent < self.size:
                chunk = await trio.to_thread.run_sync(self._read, self.sent, min(want, self.size - self.sent))
            chunk += b"\0" * (want - len(chunk))
            self.digest.update(chunk)
            first = self.sent == 0
            self.sent += len(chunk)
            resp = rpc_pb2.SnapshotResponse(remaining_bytes=self.total - self.sent, blob=chunk)
            if first and self.first_header is not None:
                resp.header.CopyFrom(self.first_header)
            return resp
        self.close()
        return rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=self.digest.digest())

    def close(self) -> None:
        self.done = True
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        release, self._release = self._release, None
        if release is not None:
            release()


class HealthWatchSession:
    """grpc.health.v1 Watch: the current status once, then nothing until the client leaves
    (grpc-go's health server sends SERVICE_UNKNOWN for names it does not know)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.sent = False
        self.closed = trio.Event()

    async def handle(self, request: Any) -> None:
        pass

    async def half_close(self) -> None:
        pass

    async def next(self) -> Any | None:
        from securekv.proto import health_pb2

        if not self.sent:
            self.sent = True
            status = (health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if self.service
                      else health_pb2.HealthCheckResponse.SERVING)
            return health_pb2.HealthCheckResponse(status=status)
        await self.closed.wait()
        return None

    def close(self) -> None:
        self.closed.set()


class ObserveSession:
    """Election Observe: the leader key on every change; re-authorised after auth changes."""

    def __init__(self, server: EtcdServer, req: v3election_pb2.LeaderRequest, caller: Caller) -> None:
        self.server = server
        self.req = req
        self.name = req.name
        self.caller = caller
        self.last: tuple[bytes, int] | None = None
        self.closed = False
        self.cancel = trio.Event()

    async def handle(self, request: Any) -> None:
        pass

    async def half_close(self) -> None:
        pass

    async def next(self) -> Any | None:
        while not self.closed:
            changed = self.server._changed
            self.caller = self.server.gate.refresh(self.caller, "/v3electionpb.Election/Observe", self.req)
            kv = self.server._leader_kv(self.name)
            if kv is not None and (kv.key, kv.mod_revision) != self.last:
                self.last = (kv.key, kv.mod_revision)
                resp = v3election_pb2.LeaderResponse(kv=kv)
                self.server.header(resp.header, self.server.store.current_revision)
                return resp
            with trio.CancelScope() as scope:
                self._scope = scope
                await changed.wait()
        return None

    def close(self) -> None:
        self.closed = True
        scope = getattr(self, "_scope", None)
        if scope is not None:
            scope.cancel()


__all__ = ["EtcdServer", "VERSION", "CLUSTER_VERSION", "prefix_end"]
