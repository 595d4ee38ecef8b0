"""Permission checks against one AuthState: the same functions answer the gate (before a
request is proposed or served) and the applier (when a committed entry is applied, with the
identity and auth revision the entry carries).

etcd's rules (auth/store.go ``isOpPermitted``/``IsAdminPermitted``, etcdserver/apply_auth.go):
with auth off everything passes; a request without a user name fails with ``user name is
empty``; one checked against an auth revision older than the store's fails with ``revision of
auth store is old`` (the client retries; a permission revoked meanwhile is then honoured);
the *role* ``root`` may do everything; otherwise the union of the user's roles' key ranges
must cover the request's range with the right permission type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import attrs

from securekv.proto import rpc_pb2
from securekv.rpctypes import (
    ERR_AUTH_OLD_REVISION,
    ERR_INVALID_AUTH_TOKEN,
    ERR_PERMISSION_DENIED,
    ERR_USER_EMPTY,
    ERR_USER_NOT_FOUND,
    EtcdError,
    err,
)

from .ranges import KeyRange
from .state import AuthState

# etcd sends the maintenance admin check's errors untranslated (gRPC Unknown, "auth: ...").
RAW_USER_EMPTY = EtcdError("UNKNOWN", "auth: user name is empty")
RAW_USER_NOT_FOUND = EtcdError("UNKNOWN", "auth: user not found")
RAW_PERMISSION_DENIED = EtcdError("UNKNOWN", "auth: permission denied")
# Keys attached to a lease, as the lessor knows them (injected: the checks stay pure).
LeaseKeys = Callable[[int], Iterable[bytes]]
RAW_OLD_REVISION = EtcdError("UNKNOWN", "auth: revision in header is old")
RAW_INVALID_TOKEN = EtcdError("UNKNOWN", "auth: invalid auth token")
_RAW = {ERR_USER_EMPTY: RAW_USER_EMPTY, ERR_USER_NOT_FOUND: RAW_USER_NOT_FOUND,
        ERR_PERMISSION_DENIED: RAW_PERMISSION_DENIED, ERR_AUTH_OLD_REVISION: RAW_OLD_REVISION,
        ERR_INVALID_AUTH_TOKEN: RAW_INVALID_TOKEN}


@attrs.frozen(slots=True)
class AuthInfo:
    """Who a request runs as: etcd's AuthInfo plus securekv's marker for its own requests."""

    username: str = ""
    revision: int = 0  # the auth revision the request was authorised against
    internal: bool = False  # made by the server itself (lease expiry): no user to check


INTERNAL = AuthInfo(internal=True)


def raw(error: EtcdError) -> EtcdError:
    """The untranslated form etcd's Maintenance service answers with."""
    template = _RAW.get(error)
    return err(template) if template is not None else error


def _identity(state: AuthState, info: AuthInfo) -> None:
    if not info.username:
        raise err(ERR_USER_EMPTY)
    if info.revision < state.revision:
        raise err(ERR_AUTH_OLD_REVISION)


def exempt(state: AuthState, info: AuthInfo) -> bool:
    return not state.enabled or info.internal


def check_keys(state: AuthState, info: AuthInfo, reads: Iterable[KeyRange] = (),
               writes: Iterable[KeyRange] = ()) -> None:
    """READ on every range of ``reads`` and WRITE on every range of ``writes``."""
    if exempt(state, info):
        return
    _identity(state, info)
    user = state.users.get(info.username)
    if user is None:
        raise err(ERR_PERMISSION_DENIED)
    if user.is_root:
        return
    perms = state.perms(info.username)
    assert perms is not None
    for r in reads:
        if not perms.read.covers(r):
            raise err(ERR_PERMISSION_DENIED)
    for r in writes:
        if not perms.write.covers(r):
            raise err(ERR_PERMISSION_DENIED)


def check_any_role(state: AuthState, info: AuthInfo) -> None:
    """An existing user holding at least one role (securekv's rule for calls etcd lets any
    caller make, such as Status or LeaseGrant: a certificate alone grants nothing)."""
    if exempt(state, info):
        return
    _identity(state, info)
    user = state.users.get(info.username)
    if user is None or not user.roles:
        raise err(ERR_PERMISSION_DENIED)


def check_admin(state: AuthState, info: AuthInfo) -> None:
    """etcd's IsAdminPermitted: the user must hold the root role (and be checked against the
    current auth revision: stricter than etcd, which ignores the revision here)."""
    if exempt(state, info):
        return
    _identity(state, info)
    user = state.users.get(info.username)
    if user is None:
        raise err(ERR_USER_NOT_FOUND)
    if not user.is_root:
        raise err(ERR_PERMISSION_DENIED)


def check_user_get(state: AuthState, info: AuthInfo, name: str) -> None:
    """Admins may read any user; anyone may read themselves (etcd's applier rule)."""
    try:
        check_admin(state, info)
    except EtcdError:
        if not info.username or name != info.username:
            raise


def check_role_get(state: AuthState, info: AuthInfo, role: str) -> None:
    """Admins may read any role; a user may read the roles it holds (etcd's applier rule)."""
    try:
        check_admin(state, info)
    except EtcdError:
        user = state.users.get(info.username) if info.username else None
        if user is None or not user.has_role(role):
            raise


# -- what a request touches -----------------------------------------------------------------
def put_ranges(put: rpc_pb2.PutRequest, lease_keys: Iterable[bytes] = ()) -> tuple[list[KeyRange], list[KeyRange]]:
    """(reads, writes) of a Put: WRITE on the key, READ too with prev_kv, and WRITE on every key
    already attached to the lease it names (etcd's checkLeasePuts)."""
    reads = [KeyRange.of(put.key)] if put.prev_kv else []
    writes = [KeyRange.of(put.key)] + [KeyRange.of(k) for k in lease_keys]
    return reads, writes


def delete_ranges(d: rpc_pb2.DeleteRangeRequest) -> tuple[list[KeyRange], list[KeyRange]]:
    r = KeyRange.of(d.key, d.range_end)
    return ([r] if d.prev_kv else []), [r]


def txn_ranges(txn: rpc_pb2.TxnRequest, lease_keys: LeaseKeys | None = None
               ) -> tuple[list[KeyRange], list[KeyRange]]:
    """Every compare (READ) and every operation of both branches, nested txns included
    (etcd 3.4 does not look inside nested txns; securekv does)."""
    reads: list[KeyRange] = []
    writes: list[KeyRange] = []
    for r, w in _txn_parts(txn, lease_keys):
        reads.extend(r)
        writes.extend(w)
    return reads, writes


def _txn_parts(txn: rpc_pb2.TxnRequest, lease_keys: LeaseKeys | None
               ) -> Iterator[tuple[list[KeyRange], list[KeyRange]]]:
    for c in txn.compare:
        yield [KeyRange.of(c.key, c.range_end)], []
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range":
            yield [KeyRange.of(op.request_range.key, op.request_range.range_end)], []
        elif kind == "request_put":
            p = op.request_put
            keys = lease_keys(p.lease) if (lease_keys is not None and p.lease) else ()
            yield put_ranges(p, keys)
        elif kind == "request_delete_range":
            yield delete_ranges(op.request_delete_range)
        elif kind == "request_txn":
            yield from _txn_parts(op.request_txn, lease_keys)


__all__ = [
    "INTERNAL", "AuthInfo", "LeaseKeys", "RAW_PERMISSION_DENIED", "check_admin", "check_any_role", "check_keys",
    "check_role_get", "check_user_get", "delete_ranges", "exempt", "put_ranges", "raw", "txn_ranges",
]
