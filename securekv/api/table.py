"""THE table of the v3 API: one row per RPC drives the gRPC dispatcher and the JSON gateway.

A row says: service and method (the gRPC path), request and response types, the EtcdServer
attribute that answers, the call kind (how the dispatcher runs it), the authorisation rule,
and the grpc-gateway path(s). Adding an RPC is adding one row (and the server method, and its
rule in ``securekv/auth/rules.py``: without one the gate refuses it).

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

The authorisation rule column is :attr:`Rpc.rule`: the row's entry in the one rule table,
``securekv.auth.rules.RULES`` (looked up by the row's gRPC path with ``rule_for``), so there is
no second copy to drift. The dispatcher and the gateway pass the row's ``path`` to
``AuthGate.authorize`` for every call (unary calls with their request, stream opens -- client
streams with ``None``, server streams with their request); client-stream sessions check each
message with ``authorize_message``. ``tests/auth/test_rules_complete.py`` checks every row has a
rule and every RPC of the descriptors has a row.
"""

from __future__ import annotations

import enum

import attrs

from securekv.auth.rules import Rule, rule_for
from securekv.proto import health_pb2, join_pb2 as j, rpc_pb2 as r, v3election_pb2 as el, v3lock_pb2 as lk


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


ETCD, LOCK, ELECTION, HEALTH = "etcdserverpb.", "v3lockpb.Lock", "v3electionpb.Election", "grpc.health.v1.Health"
JOIN = "securekvpb.Cluster"  # securekv's own: join tokens and joining without the CA key (docs/pki.md)


@attrs.frozen
class Rpc:
    service: str  # full service name, e.g. "etcdserverpb.KV"
    method: str
    request: type
    response: type
    kind: Kind
    handler: str  # EtcdServer attribute
    gateway: tuple[str, ...] = ()  # grpc-gateway paths after /v3/ (or /v3beta/)
    entry: str = ""  # InternalRaftRequest field (hot writes: decoded once, into the log entry)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"

    @property
    def rule(self) -> Rule | None:
        """The authorisation rule (``securekv/auth/rules.py``); None = none written, refused."""
        return rule_for(self.path)


U, HOT, SS, BIDI = Kind.UNARY, Kind.HOT, Kind.SERVER_STREAM, Kind.BIDI_STREAM
KV, WATCH, LEASE_SVC, CLUSTER, MAINT, AUTH = (ETCD + n for n in ("KV", "Watch", "Lease", "Cluster", "Maintenance",
                                                              "Auth"))

API: tuple[Rpc, ...] = (
    Rpc(KV, "Range", r.RangeRequest, r.RangeResponse, HOT, "range_cb", ("kv/range",)),
    Rpc(KV, "Put", r.PutRequest, r.PutResponse, HOT, "put_cb", ("kv/put",), entry="put"),
    Rpc(KV, "DeleteRange", r.DeleteRangeRequest, r.DeleteRangeResponse, HOT, "delete_range_cb",
        ("kv/deleterange",), entry="delete_range"),
    Rpc(KV, "Txn", r.TxnRequest, r.TxnResponse, HOT, "txn_cb", ("kv/txn",), entry="txn"),
    Rpc(KV, "Compact", r.CompactionRequest, r.CompactionResponse, U, "compact", ("kv/compaction",)),
    Rpc(WATCH, "Watch", r.WatchRequest, r.WatchResponse, BIDI, "open_watch", ("watch",)),
    Rpc(LEASE_SVC, "LeaseGrant", r.LeaseGrantRequest, r.LeaseGrantResponse, U, "lease_grant",
        ("lease/grant",)),
    Rpc(LEASE_SVC, "LeaseRevoke", r.LeaseRevokeRequest, r.LeaseRevokeResponse, U, "lease_revoke",
        ("lease/revoke", "kv/lease/revoke")),
    Rpc(LEASE_SVC, "LeaseKeepAlive", r.LeaseKeepAliveRequest, r.LeaseKeepAliveResponse, BIDI, "open_keepalive",
        ("lease/keepalive",)),
    Rpc(LEASE_SVC, "LeaseTimeToLive", r.LeaseTimeToLiveRequest, r.LeaseTimeToLiveResponse, U,
        "lease_time_to_live", ("lease/timetolive", "kv/lease/timetolive")),
    Rpc(LEASE_SVC, "LeaseLeases", r.LeaseLeasesRequest, r.LeaseLeasesResponse, U, "lease_leases",
        ("lease/leases", "kv/lease/leases")),
    Rpc(CLUSTER, "MemberAdd", r.MemberAddRequest, r.MemberAddResponse, U, "member_add",
        ("cluster/member/add",)),
    Rpc(CLUSTER, "MemberRemove", r.MemberRemoveRequest, r.MemberRemoveResponse, U, "member_remove",
        ("cluster/member/remove",)),
    Rpc(CLUSTER, "MemberUpdate", r.MemberUpdateRequest, r.MemberUpdateResponse, U, "member_update",
        ("cluster/member/update",)),
    Rpc(CLUSTER, "MemberList", r.MemberListRequest, r.MemberListResponse, U, "member_list",
        ("cluster/member/list",)),
    Rpc(CLUSTER, "MemberPromote", r.MemberPromoteRequest, r.MemberPromoteResponse, U, "member_promote",
        ("cluster/member/promote",)),
    Rpc(MAINT, "Alarm", r.AlarmRequest, r.AlarmResponse, U, "alarm", ("maintenance/alarm",)),
    Rpc(MAINT, "Status", r.StatusRequest, r.StatusResponse, U, "status", ("maintenance/status",)),
    Rpc(MAINT, "Defragment", r.DefragmentRequest, r.DefragmentResponse, U, "defragment",
        ("maintenance/defragment",)),
    # etcd 3.4 binds Hash and HashKV to the same gateway path; the first binding (Hash) answers.
    Rpc(MAINT, "Hash", r.HashRequest, r.HashResponse, U, "hash", ("maintenance/hash",)),
    Rpc(MAINT, "HashKV", r.HashKVRequest, r.HashKVResponse, U, "hash_kv"),
    Rpc(MAINT, "Snapshot", r.SnapshotRequest, r.SnapshotResponse, SS, "open_snapshot",
        ("maintenance/snapshot",)),
    Rpc(MAINT, "MoveLeader", r.MoveLeaderRequest, r.MoveLeaderResponse, U, "move_leader",
        ("maintenance/transfer-leadership",)),
    Rpc(AUTH, "AuthEnable", r.AuthEnableRequest, r.AuthEnableResponse, U, "auth_enable", ("auth/enable",)),
    Rpc(AUTH, "AuthDisable", r.AuthDisableRequest, r.AuthDisableResponse, U, "auth_disable", ("auth/disable",)),
    Rpc(AUTH, "Authenticate", r.AuthenticateRequest, r.AuthenticateResponse, U, "authenticate",
        ("auth/authenticate",)),
    Rpc(AUTH, "UserAdd", r.AuthUserAddRequest, r.AuthUserAddResponse, U, "user_add", ("auth/user/add",)),
    Rpc(AUTH, "UserGet", r.AuthUserGetRequest, r.AuthUserGetResponse, U, "user_get", ("auth/user/get",)),
    Rpc(AUTH, "UserList", r.AuthUserListRequest, r.AuthUserListResponse, U, "user_list", ("auth/user/list",)),
    Rpc(AUTH, "UserDelete", r.AuthUserDeleteRequest, r.AuthUserDeleteResponse, U, "user_delete",
        ("auth/user/delete",)),
    Rpc(AUTH, "UserChangePassword", r.AuthUserChangePasswordRequest, r.AuthUserChangePasswordResponse, U,
        "user_change_password", ("auth/user/changepw",)),
    Rpc(AUTH, "UserGrantRole", r.AuthUserGrantRoleRequest, r.AuthUserGrantRoleResponse, U, "user_grant_role",
        ("auth/user/grant",)),
    Rpc(AUTH, "UserRevokeRole", r.AuthUserRevokeRoleRequest, r.AuthUserRevokeRoleResponse, U, "user_revoke_role",
        ("auth/user/revoke",)),
    Rpc(AUTH, "RoleAdd", r.AuthRoleAddRequest, r.AuthRoleAddResponse, U, "role_add", ("auth/role/add",)),
    Rpc(AUTH, "RoleGet", r.AuthRoleGetRequest, r.AuthRoleGetResponse, U, "role_get", ("auth/role/get",)),
    Rpc(AUTH, "RoleList", r.AuthRoleListRequest, r.AuthRoleListResponse, U, "role_list", ("auth/role/list",)),
    Rpc(AUTH, "RoleDelete", r.AuthRoleDeleteRequest, r.AuthRoleDeleteResponse, U, "role_delete",
        ("auth/role/delete",)),
    Rpc(AUTH, "RoleGrantPermission", r.AuthRoleGrantPermissionRequest, r.AuthRoleGrantPermissionResponse, U,
        "role_grant_permission", ("auth/role/grant",)),
    Rpc(AUTH, "RoleRevokePermission", r.AuthRoleRevokePermissionRequest, r.AuthRoleRevokePermissionResponse, U,
        "role_revoke_permission", ("auth/role/revoke",)),
    Rpc(LOCK, "Lock", lk.LockRequest, lk.LockResponse, U, "lock", ("lock/lock",)),
    Rpc(LOCK, "Unlock", lk.UnlockRequest, lk.UnlockResponse, U, "unlock", ("lock/unlock",)),
    Rpc(ELECTION, "Campaign", el.CampaignRequest, el.CampaignResponse, U, "campaign",
        ("election/campaign",)),
    Rpc(ELECTION, "Proclaim", el.ProclaimRequest, el.ProclaimResponse, U, "proclaim",
        ("election/proclaim",)),
    Rpc(ELECTION, "Leader", el.LeaderRequest, el.LeaderResponse, U, "leader", ("election/leader",)),
    Rpc(ELECTION, "Observe", el.LeaderRequest, el.LeaderResponse, SS, "open_observe", ("election/observe",)),
    Rpc(ELECTION, "Resign", el.ResignRequest, el.ResignResponse, U, "resign", ("election/resign",)),
    Rpc(HEALTH, "Check", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, U, "health_check"),
    Rpc(HEALTH, "Watch", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, SS, "open_health_watch"),
    Rpc(JOIN, "JoinTokenCreate", j.JoinTokenCreateRequest, j.JoinTokenCreateResponse, U, "join_token_create",
        ("securekv/join/token/create",)),
    Rpc(JOIN, "JoinTokenList", j.JoinTokenListRequest, j.JoinTokenListResponse, U, "join_token_list",
        ("securekv/join/token/list",)),
    Rpc(JOIN, "JoinTokenRevoke", j.JoinTokenRevokeRequest, j.JoinTokenRevokeResponse, U, "join_token_revoke",
        ("securekv/join/token/revoke",)),
    # The only calls a connection without a client certificate may make (server/listener.py).
    Rpc(JOIN, "JoinCABundle", j.JoinCABundleRequest, j.JoinCABundleResponse, U, "join_ca_bundle",
        ("securekv/join/ca-bundle",)),
    Rpc(JOIN, "Join", j.JoinRequest, j.JoinResponse, U, "join", ("securekv/join",)),
    Rpc(JOIN, "Renew", j.RenewRequest, j.RenewResponse, U, "join_renew", ("securekv/renew",)),
    Rpc(JOIN, "CertStatus", j.CertStatusRequest, j.CertStatusResponse, U, "cert_status", ("securekv/certs",)),
)

# Gateway paths (after /v3/) served to a TLS connection that presented no client certificate,
# on a member with a signing CA: the join, authenticated by its token. Nothing else.
ANONYMOUS_GATEWAY = frozenset({"securekv/join/ca-bundle", "securekv/join"})

BY_PATH: dict[str, Rpc] = {rpc.path: rpc for rpc in API}
GATEWAY: dict[str, Rpc] = {}
for _rpc in API:
    for _path in _rpc.gateway:
        GATEWAY.setdefault(_path, _rpc)


def rule_of(method: str) -> Rule | None:
    """The authorisation rule of an RPC, by gRPC path or (etcd services) short method name:
    ``securekv.auth.rules.rule_for`` itself, the one rule table. None = no rule (refused)."""
    return rule_for(method)


__all__ = ["ANONYMOUS_GATEWAY", "API", "BY_PATH", "GATEWAY", "Kind", "Rpc", "rule_of"]
