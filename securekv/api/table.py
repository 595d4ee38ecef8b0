"""THE table of the v3 API: one row per RPC drives the gRPC dispatcher and the JSON gateway.

A row says: service and method (the gRPC path), request and response types, the EtcdServer
attribute that answers, the call kind (how the dispatcher runs it), the authorisation rule,
and the grpc-gateway path(s). Adding an RPC is adding one row (and the server method).

Handler shapes by kind (``caller`` is the :class:`securekv.api.auth_gate.Caller`):

- ``UNARY``:   ``async def handler(request, caller) -> response``
- ``HOT``:     ``def handler(request, caller, reply)``, plain callback in the trio thread, no
  task; calls ``reply(response, error)`` once, now or later (Range, Put, DeleteRange, Txn)
- ``SERVER_STREAM``: ``async def handler(request, caller) -> Session``
- ``BIDI_STREAM``:   ``async def handler(None, caller) -> Session`` (requests go to
  ``session.handle``)

A Session has ``async handle(request)``, ``async half_close()``, ``async next() -> message |
None`` (None ends the stream) and a sync ``close()`` (the client went away).

``entry``: for writes on the hot path, the name of the ``InternalRaftRequest`` field the
request travels in. The dispatcher then does not decode the request on its own: it builds the
log entry from the received bytes and decodes that once (``Node.prepare``), so the leader
applies exactly the bytes its followers apply. The handler gets a :class:`Prepared`.

``auth`` names the permission etcd requires (the RBAC gate decides; ``AuthGate.authorize``
gets the method name and can look the rule up here with :func:`rule_of`):
``none`` (no check), ``authenticated`` (any known user), ``read``/``write`` (the request's key
range), ``txn`` (every operation of the txn), ``lease`` (write on the lease's keys),
``admin`` (the root role).
"""

from __future__ import annotations

import enum

import attrs

from securekv.proto import health_pb2, rpc_pb2 as r, v3election_pb2 as el, v3lock_pb2 as lk


class Kind(enum.Enum):
    UNARY = "unary"
    HOT = "hot"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"

    @property
    def grpc_type(self) -> str:
        """grpc_server_handled_total's ``grpc_type`` label."""
        return "unary" if self is Kind.HOT else self.value

    @property
    def streaming(self) -> bool:
        return self in (Kind.SERVER_STREAM, Kind.BIDI_STREAM)


NONE, AUTHENTICATED, READ, WRITE, TXN, LEASE, ADMIN = "none", "authenticated", "read", "write", "txn", "lease", "admin"

ETCD, LOCK, ELECTION, HEALTH = "etcdserverpb.", "v3lockpb.Lock", "v3electionpb.Election", "grpc.health.v1.Health"


@attrs.frozen
class Rpc:
    service: str  # full service name, e.g. "etcdserverpb.KV"
    method: str
    request: type
    response: type
    kind: Kind
    handler: str  # EtcdServer attribute
    auth: str
    gateway: tuple[str, ...] = ()  # grpc-gateway paths after /v3/ (or /v3beta/)
    entry: str = ""  # InternalRaftRequest field (hot writes: decoded once, into the log entry)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


U, HOT, SS, BIDI = Kind.UNARY, Kind.HOT, Kind.SERVER_STREAM, Kind.BIDI_STREAM
KV, WATCH, LEASE_SVC, CLUSTER, MAINT, AUTH = (ETCD + n for n in ("KV", "Watch", "Lease", "Cluster", "Maintenance",
                                                              "Auth"))

API: tuple[Rpc, ...] = (
    Rpc(KV, "Range", r.RangeRequest, r.RangeResponse, HOT, "range_cb", READ, ("kv/range",)),
    Rpc(KV, "Put", r.PutRequest, r.PutResponse, HOT, "put_cb", WRITE, ("kv/put",), entry="put"),
    Rpc(KV, "DeleteRange", r.DeleteRangeRequest, r.DeleteRangeResponse, HOT, "delete_range_cb", WRITE,
        ("kv/deleterange",), entry="delete_range"),
    Rpc(KV, "Txn", r.TxnRequest, r.TxnResponse, HOT, "txn_cb", TXN, ("kv/txn",), entry="txn"),
    Rpc(KV, "Compact", r.CompactionRequest, r.CompactionResponse, U, "compact", AUTHENTICATED, ("kv/compaction",)),
    Rpc(WATCH, "Watch", r.WatchRequest, r.WatchResponse, BIDI, "open_watch", READ, ("watch",)),
    Rpc(LEASE_SVC, "LeaseGrant", r.LeaseGrantRequest, r.LeaseGrantResponse, U, "lease_grant", AUTHENTICATED,
        ("lease/grant",)),
    Rpc(LEASE_SVC, "LeaseRevoke", r.LeaseRevokeRequest, r.LeaseRevokeResponse, U, "lease_revoke", LEASE,
        ("lease/revoke", "kv/lease/revoke")),
    Rpc(LEASE_SVC, "LeaseKeepAlive", r.LeaseKeepAliveRequest, r.LeaseKeepAliveResponse, BIDI, "open_keepalive",
        AUTHENTICATED, ("lease/keepalive",)),
    Rpc(LEASE_SVC, "LeaseTimeToLive", r.LeaseTimeToLiveRequest, r.LeaseTimeToLiveResponse, U,
        "lease_time_to_live", AUTHENTICATED, ("lease/timetolive", "kv/lease/timetolive")),
    Rpc(LEASE_SVC, "LeaseLeases", r.LeaseLeasesRequest, r.LeaseLeasesResponse, U, "lease_leases", AUTHENTICATED,
        ("lease/leases", "kv/lease/leases")),
    Rpc(CLUSTER, "MemberAdd", r.MemberAddRequest, r.MemberAddResponse, U, "member_add", ADMIN,
        ("cluster/member/add",)),
    Rpc(CLUSTER, "MemberRemove", r.MemberRemoveRequest, r.MemberRemoveResponse, U, "member_remove", ADMIN,
        ("cluster/member/remove",)),
    Rpc(CLUSTER, "MemberUpdate", r.MemberUpdateRequest, r.MemberUpdateResponse, U, "member_update", ADMIN,
        ("cluster/member/update",)),
    Rpc(CLUSTER, "MemberList", r.MemberListRequest, r.MemberListResponse, U, "member_list", AUTHENTICATED,
        ("cluster/member/list",)),
    Rpc(CLUSTER, "MemberPromote", r.MemberPromoteRequest, r.MemberPromoteResponse, U, "member_promote", ADMIN,
        ("cluster/member/promote",)),
    Rpc(MAINT, "Alarm", r.AlarmRequest, r.AlarmResponse, U, "alarm", ADMIN, ("maintenance/alarm",)),
    Rpc(MAINT, "Status", r.StatusRequest, r.StatusResponse, U, "status", AUTHENTICATED, ("maintenance/status",)),
    Rpc(MAINT, "Defragment", r.DefragmentRequest, r.DefragmentResponse, U, "defragment", ADMIN,
        ("maintenance/defragment",)),
    # etcd 3.4 binds Hash and HashKV to the same gateway path; the first binding (Hash) answers.
    Rpc(MAINT, "Hash", r.HashRequest, r.HashResponse, U, "hash", ADMIN, ("maintenance/hash",)),
    Rpc(MAINT, "HashKV", r.HashKVRequest, r.HashKVResponse, U, "hash_kv", ADMIN),
    Rpc(MAINT, "Snapshot", r.SnapshotRequest, r.SnapshotResponse, SS, "open_snapshot", ADMIN,
        ("maintenance/snapshot",)),
    Rpc(MAINT, "MoveLeader", r.MoveLeaderRequest, r.MoveLeaderResponse, U, "move_leader", ADMIN,
        ("maintenance/transfer-leadership",)),
    Rpc(AUTH, "Authenticate", r.AuthenticateRequest, r.AuthenticateResponse, U, "authenticate", NONE,
        ("auth/authenticate",)),
    Rpc(LOCK, "Lock", lk.LockRequest, lk.LockResponse, U, "lock", WRITE, ("lock/lock",)),
    Rpc(LOCK, "Unlock", lk.UnlockRequest, lk.UnlockResponse, U, "unlock", WRITE, ("lock/unlock",)),
    Rpc(ELECTION, "Campaign", el.CampaignRequest, el.CampaignResponse, U, "campaign", WRITE,
        ("election/campaign",)),
    Rpc(ELECTION, "Proclaim", el.ProclaimRequest, el.ProclaimResponse, U, "proclaim", WRITE,
        ("election/proclaim",)),
    Rpc(ELECTION, "Leader", el.LeaderRequest, el.LeaderResponse, U, "leader", READ, ("election/leader",)),
    Rpc(ELECTION, "Observe", el.LeaderRequest, el.LeaderResponse, SS, "open_observe", READ, ("election/observe",)),
    Rpc(ELECTION, "Resign", el.ResignRequest, el.ResignResponse, U, "resign", WRITE, ("election/resign",)),
    Rpc(HEALTH, "Check", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, U, "health_check", NONE),
    Rpc(HEALTH, "Watch", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, SS, "open_health_watch",
        NONE),
)

BY_PATH: dict[str, Rpc] = {rpc.path: rpc for rpc in API}
BY_METHOD: dict[str, Rpc] = {}
for _rpc in API:
    BY_METHOD.setdefault(_rpc.method, _rpc)  # Health.Watch must not shadow Watch.Watch
GATEWAY: dict[str, Rpc] = {}
for _rpc in API:
    for _path in _rpc.gateway:
        GATEWAY.setdefault(_path, _rpc)


def rule_of(method: str) -> str:
    """The authorisation rule of an RPC by method name (what AuthGate.authorize receives)."""
    rpc = BY_METHOD.get(method)
    return rpc.auth if rpc is not None else ADMIN


__all__ = ["API", "BY_PATH", "BY_METHOD", "GATEWAY", "Kind", "Rpc", "rule_of"]
