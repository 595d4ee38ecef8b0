"""The authorisation rule of every RPC, keyed by its gRPC full method name.

This table is the whole policy of the front gate (``securekv.api.auth_gate.AuthGate``): a
dispatcher looks the rule up with one call (:func:`rule_for`) and runs it with the caller's
identity and the request. A method missing from the table is refused (deny by default), and
``tests/auth/test_rules_complete.py`` fails the build when a service gains an RPC without a
rule here.

With auth disabled every rule passes except ``peer`` (member-to-member calls always need a
member's identity). Where securekv is stricter than etcd 3.4, the rule says why in
``deviation`` (listed in docs/auth.md):

* ``any role`` — calls etcd 3.4 lets any caller make (Status, MemberList, LeaseGrant, ...) need
  an existing user holding at least one role: a certificate the CA signed is not, by itself,
  a right to anything;
* ``root`` — destructive calls etcd lets any user make (Compact, Alarm activate/deactivate,
  MoveLeader) need the root role;
* nested txns are checked operation by operation (etcd 3.4 skips them), LeaseRevoke needs a
  role even for a lease without keys, and a watch from a key on (``--from-key``) needs READ on
  the whole open range (etcd checks only the first key).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from securekv.proto import rpc_pb2
from securekv.rpctypes import EtcdError

from .check import (
    AuthInfo,
    check_admin,
    check_any_role,
    check_keys,
    check_role_get,
    check_user_get,
    delete_ranges,
    exempt,
    put_ranges,
    raw,
    txn_ranges,
)
from .ranges import KeyRange
from .state import AuthState

KV, WATCH, LEASE, CLUSTER, MAINT, AUTH = (f"/etcdserverpb.{s}/" for s in
                                          ("KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth"))
LOCK, ELECTION, HEALTH = "/v3lockpb.Lock/", "/v3electionpb.Election/", "/grpc.health.v1.Health/"
JOIN = "/securekvpb.Cluster/"  # securekv's own join service (issue 16)
PEER = "/securekv.peer/"  # member-to-member calls over the peer transport (not gRPC)


class GateContext(Protocol):
    """What a rule may consult besides the auth state (the server implements it)."""

    def lease_keys(self, lease_id: int) -> Iterable[bytes]: ...


class PeerCaller(Protocol):
    is_peer: bool


Check = Callable[[AuthState, AuthInfo, Any, GateContext], None]
Describe = Callable[[Any], str]


@attrs.frozen
class Rule:
    kind: str  # short name, shown in the audit log and docs
    check: Check  # raises EtcdError to deny; the request is None when a stream opens
    message: Check | None = None  # streams: checked for each request message
    keys: Describe | None = None  # the key range the request touches (audit log)
    public: bool = False  # no identity needed (Authenticate checks a password instead)
    peer: bool = False  # only another member of the cluster may call it
    deviation: str = ""  # how securekv is stricter than etcd 3.4 here ("" = as etcd)


# -- checks ---------------------------------------------------------------------------------
def _allow(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    return None


def _any_role(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    check_any_role(state, info)


def _admin(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    check_admin(state, info)


def _maintenance(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    """etcd's authMaintenanceServer: the admin check, its errors sent untranslated."""
    try:
        check_admin(state, info)
    except EtcdError as exc:
        raise raw(exc) from None


def _unlock(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    check_keys(state, info, writes=[KeyRange.of(req.key)])


def _reads(get: Callable[[Any], Iterable[KeyRange]]) -> Check:
    def check(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
        if exempt(state, info):
            return
        check_keys(state, info, reads=list(get(req)) if req is not None else [])
    return check


def _read_write(get: Callable[[Any], Iterable[KeyRange]]) -> Check:
    def check(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
        if exempt(state, info):
            return
        ranges = list(get(req)) if req is not None else []
        check_keys(state, info, reads=ranges, writes=ranges)
    return check


def _put(state: AuthState, info: AuthInfo, req: rpc_pb2.PutRequest, ctx: GateContext) -> None:
    if exempt(state, info):
        return
    reads, writes = put_ranges(req, ctx.lease_keys(req.lease) if req.lease else ())
    check_keys(state, info, reads, writes)


def _delete(state: AuthState, info: AuthInfo, req: rpc_pb2.DeleteRangeRequest, ctx: GateContext) -> None:
    if exempt(state, info):
        return
    reads, writes = delete_ranges(req)
    check_keys(state, info, reads, writes)


def _txn(state: AuthState, info: AuthInfo, req: rpc_pb2.TxnRequest, ctx: GateContext) -> None:
    if exempt(state, info):
        return
    check_any_role(state, info)  # even a txn that touches no key (etcd lets anyone run that)
    reads, writes = txn_ranges(req, ctx.lease_keys)
    check_keys(state, info, reads, writes)


def _lease_revoke(state: AuthState, info: AuthInfo, req: rpc_pb2.LeaseRevokeRequest, ctx: GateContext) -> None:
    if exempt(state, info):
        return
    check_any_role(state, info)
    check_keys(state, info, writes=[KeyRange.of(k) for k in ctx.lease_keys(req.ID)])


def _lease_ttl(state: AuthState, info: AuthInfo, req: rpc_pb2.LeaseTimeToLiveRequest, ctx: GateContext) -> None:
    if exempt(state, info):
        return
    check_any_role(state, info)
    if req.keys:
        check_keys(state, info, reads=[KeyRange.of(k) for k in ctx.lease_keys(req.ID)])


def _alarm(state: AuthState, info: AuthInfo, req: rpc_pb2.AlarmRequest, ctx: GateContext) -> None:
    if req.action == rpc_pb2.AlarmRequest.GET:
        check_any_role(state, info)
    else:
        check_admin(state, info)


def _user_get(state: AuthState, info: AuthInfo, req: rpc_pb2.AuthUserGetRequest, ctx: GateContext) -> None:
    check_user_get(state, info, req.name)


def _role_get(state: AuthState, info: AuthInfo, req: rpc_pb2.AuthRoleGetRequest, ctx: GateContext) -> None:
    check_role_get(state, info, req.role)


def _watch_message(state: AuthState, info: AuthInfo, req: rpc_pb2.WatchRequest, ctx: GateContext) -> None:
    if req.WhichOneof("request_union") != "create_request":
        return  # cancel / progress touch no keys
    c = req.create_request
    check_keys(state, info, reads=[KeyRange.of(c.key or b"\0", c.range_end)])


def _peer(state: AuthState, info: AuthInfo, req: Any, ctx: GateContext) -> None:
    return None  # the gate checks the caller is a member (Rule.peer)


# -- key ranges named by requests -------------------------------------------------------------
def _prefix(name: bytes) -> KeyRange:
    from securekv.mvcc.keys import prefix_end

    p = bytes(name) + b"/"
    return KeyRange.of(p, prefix_end(p))


def _range_of(req: Any) -> list[KeyRange]:
    return [KeyRange.of(req.key, req.range_end)]


def _describe_ranges(get: Callable[[Any], Iterable[KeyRange]]) -> Describe:
    return lambda req: " ".join(r.describe() for r in get(req)) if req is not None else ""


def _txn_keys(req: rpc_pb2.TxnRequest) -> str:
    reads, writes = txn_ranges(req)
    return " ".join(sorted({r.describe() for r in (*reads, *writes)}))


_ANY = "etcd 3.4 lets any caller make this call; securekv needs a user holding a role"
_ROOT = "etcd 3.4 lets any user make this call; securekv needs the root role"

_KEYS = _describe_ranges(_range_of)
_LOCK_KEYS = _describe_ranges(lambda r: [_prefix(r.name)])
_LEADER_KEYS = _describe_ranges(lambda r: [KeyRange.of(r.leader.key)])

RULES: dict[str, Rule] = {
    KV + "Range": Rule("read", _reads(_range_of), keys=_KEYS),
    KV + "Put": Rule("write", _put, keys=_describe_ranges(lambda r: [KeyRange.of(r.key)])),
    KV + "DeleteRange": Rule("write", _delete, keys=_KEYS),
    KV + "Txn": Rule("txn", _txn, keys=_txn_keys,
                     deviation="nested txns are checked op by op (etcd 3.4 does not check them at all); "
                               "a txn without any key needs a role"),
    KV + "Compact": Rule("root", _admin, deviation=_ROOT),
    WATCH + "Watch": Rule("watch", _allow, message=_watch_message,
                          keys=lambda r: (KeyRange.of(r.create_request.key or b"\0",
                                                      r.create_request.range_end).describe()
                                          if r is not None and r.HasField("create_request") else ""),
                          deviation="a --from-key watch needs READ on the whole open range (etcd checks "
                                    "its first key); watchers are re-checked after every auth change"),
    LEASE + "LeaseGrant": Rule("any role", _any_role, deviation=_ANY),
    LEASE + "LeaseRevoke": Rule("lease keys", _lease_revoke,
                                keys=lambda r: f"lease {r.ID:x}" if r is not None else "",
                                deviation="a role is needed even for a lease without keys (etcd: anyone)"),
    LEASE + "LeaseKeepAlive": Rule("any role", _any_role, message=_any_role, deviation=_ANY),
    LEASE + "LeaseTimeToLive": Rule("any role", _lease_ttl, deviation=_ANY + "; --keys needs READ on them"),
    LEASE + "LeaseLeases": Rule("any role", _any_role, deviation=_ANY),
    CLUSTER + "MemberAdd": Rule("admin", _admin),
    CLUSTER + "MemberRemove": Rule("admin", _admin),
    CLUSTER + "MemberUpdate": Rule("admin", _admin),
    CLUSTER + "MemberList": Rule("any role", _any_role, deviation=_ANY),
    CLUSTER + "MemberPromote": Rule("admin", _admin),
    MAINT + "Alarm": Rule("alarm", _alarm, deviation="GET: " + _ANY + "; ACTIVATE/DEACTIVATE: " + _ROOT),
    MAINT + "Status": Rule("any role", _any_role, deviation=_ANY),
    MAINT + "Defragment": Rule("maintenance", _maintenance),
    MAINT + "Hash": Rule("maintenance", _maintenance),
    MAINT + "HashKV": Rule("maintenance", _maintenance),
    MAINT + "Snapshot": Rule("maintenance", _maintenance),
    MAINT + "MoveLeader": Rule("root", _admin, deviation=_ROOT),
    AUTH + "Authenticate": Rule("public", _allow, public=True),
    AUTH + "UserGet": Rule("admin or self", _user_get, keys=lambda r: f"user {r.name}" if r is not None else ""),
    AUTH + "RoleGet": Rule("admin or holder", _role_get, keys=lambda r: f"role {r.role}" if r is not None else ""),
    LOCK + "Lock": Rule("readwrite", _read_write(lambda r: [_prefix(r.name)]), keys=_LOCK_KEYS),
    LOCK + "Unlock": Rule("write", _unlock, keys=_describe_ranges(lambda r: [KeyRange.of(r.key)])),
    ELECTION + "Campaign": Rule("readwrite", _read_write(lambda r: [_prefix(r.name)]), keys=_LOCK_KEYS),
    ELECTION + "Proclaim": Rule("readwrite", _read_write(lambda r: [KeyRange.of(r.leader.key)]), keys=_LEADER_KEYS),
    ELECTION + "Leader": Rule("read", _reads(lambda r: [_prefix(r.name)]), keys=_LOCK_KEYS),
    ELECTION + "Observe": Rule("read", _reads(lambda r: [_prefix(r.name)]), keys=_LOCK_KEYS),
    ELECTION + "Resign": Rule("readwrite", _read_write(lambda r: [KeyRange.of(r.leader.key)]), keys=_LEADER_KEYS),
    HEALTH + "Check": Rule("any role", _any_role, deviation=_ANY),
    HEALTH + "Watch": Rule("any role", _any_role, deviation=_ANY),
    # Joining without the CA key (securekv/cluster/signer.py). Creating a token is issuing
    # certificates: the root role when auth is on (with auth off, any client of the CA, as for
    # MemberAdd). The join itself is authenticated by its token, not by an identity.
    JOIN + "JoinTokenCreate": Rule("admin", _admin, keys=lambda r: f"join token {r.id}" if r is not None else ""),
    JOIN + "JoinTokenList": Rule("admin", _admin),
    JOIN + "JoinTokenRevoke": Rule("admin", _admin, keys=lambda r: f"join token {r.id}" if r is not None else ""),
    JOIN + "JoinCABundle": Rule("public", _allow, public=True),
    JOIN + "Join": Rule("join token", _allow, public=True,
                        keys=lambda r: f"join token {r.token_id} member {r.name}" if r is not None else ""),
    # A member renewing its own certificates: authenticated by the peer certificate it presents
    # (a member's name, checked against the membership by the handler), not by a user.
    JOIN + "Renew": Rule("member certificate", _allow, public=True),
    JOIN + "CertStatus": Rule("any role", _any_role),
    PEER + "lease_keepalive": Rule("peer", _peer, peer=True),
    PEER + "lease_ttl": Rule("peer", _peer, peer=True),
    PEER + "member_promote": Rule("peer", _peer, peer=True),
    PEER + "hashkv": Rule("peer", _peer, peer=True),  # corruption checks (server/corrupt.py)
}
for _m in ("AuthEnable", "AuthDisable", "UserAdd", "UserList", "UserDelete", "UserChangePassword", "UserGrantRole",
           "UserRevokeRole", "RoleAdd", "RoleList", "RoleDelete", "RoleGrantPermission", "RoleRevokePermission"):
    RULES[AUTH + _m] = Rule("admin", _admin)

# Short method names ("Range") for the etcd services, as the server's own re-checks name them
# (``gate.refresh(caller, "Range", ...)``); the dispatcher and the gateway pass the full gRPC
# path of their API-table row. grpc.health's Watch is only reachable by its full name.
_SHORT: dict[str, str] = {}
for _full in RULES:
    _short = _full.rsplit("/", 1)[1]
    if _full.startswith(HEALTH) and _short in ("Watch",):
        continue
    _SHORT.setdefault(_short, _full)


def full_name(method: str) -> str:
    """``"Range"`` -> ``"/etcdserverpb.KV/Range"``; full names pass through."""
    if method.startswith("/"):
        return method
    return _SHORT.get(method, method)


def rule_for(method: str) -> Rule | None:
    """The rule of ``method`` (full gRPC name, or the short name of an etcd service's RPC);
    None = unknown, which the gate refuses. The API table's rule column (``api.table.Rpc.rule``)."""
    return RULES.get(full_name(method))


__all__ = ["GateContext", "PEER", "RULES", "Rule", "full_name", "rule_for"]
