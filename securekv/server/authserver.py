"""etcd's Auth service on the trio side (a mixin of EtcdServer): Authenticate, users, roles,
enable/disable.

Mutations go through the log like every write (the applier checks the caller is an admin at
the entry's index and applies them on every member). Passwords are hashed here, on the member
that received the request, in a worker thread (bcrypt is deliberately slow) and *before* the
proposal: the log, the backend and snapshots only ever hold the bcrypt hash. Reads (UserGet,
UserList, RoleGet, RoleList) are served from the member's state after a ReadIndex round, so
they are linearizable like etcd's (which sends them through the log).

Authenticate checks the password against the local state (after a ReadIndex), rate-limited
per user name and per client address, and hands out a member-local token (see
securekv/auth/tokens.py).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from securekv.api.auth_gate import Caller
from securekv.auth.state import AuthState
from securekv.proto import rpc_pb2
from securekv.rpctypes import (
    ERR_AUTH_FAILED,
    ERR_AUTH_NO_PASSWORD_USER,
    ERR_AUTH_NOT_ENABLED,
    ERR_ROLE_NOT_FOUND,
    ERR_USER_ALREADY_EXIST,
    ERR_USER_NOT_FOUND,
    EtcdError,
    err,
)

log = logging.getLogger(__name__)

DEFAULT_BCRYPT_COST = 10
MIN_BCRYPT_COST, MAX_BCRYPT_COST = 4, 31
BCRYPT_MAX_PASSWORD = 72  # bcrypt reads at most 72 bytes; longer passwords are refused, not cut
ERR_PASSWORD_TOO_LONG = EtcdError("INVALID_ARGUMENT", "etcdserver: password is longer than 72 bytes")
ERR_BAD_HASH = EtcdError("INVALID_ARGUMENT", "etcdserver: hashedPassword is not a bcrypt hash")
# Concurrent bcrypt computations per member: a burst of logins cannot take every CPU.
BCRYPT_THREADS = 2


def effective_bcrypt_cost(cost: int) -> int:
    """etcd's rule: an out-of-range --bcrypt-cost falls back to the default (with a warning)."""
    if cost < MIN_BCRYPT_COST or cost > MAX_BCRYPT_COST:
        log.warning("--bcrypt-cost %d is outside [%d, %d]; using the default %d", cost, MIN_BCRYPT_COST,
                    MAX_BCRYPT_COST, DEFAULT_BCRYPT_COST)
        return DEFAULT_BCRYPT_COST
    return cost


def _hash(password: bytes, cost: int) -> bytes:
    import bcrypt

    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost))


def _check(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # not a hash bcrypt understands, or a password over its limit
        return False


def _address(caller: Caller) -> str:
    remote = caller.identity.remote
    host, sep, _port = remote.rpartition(":")
    return (host if sep else remote).strip("[]")


class AuthHandlers:
    """Mixed into EtcdServer, which provides node, store, applier, gate, fill(), _propose()."""

    bcrypt_cost = DEFAULT_BCRYPT_COST
    login_limiter: Any = None
    _bcrypt_limiter: trio.CapacityLimiter | None = None
    _dummy_hash: bytes | None = None

    # -- plumbing ---------------------------------------------------------------------------
    def auth_state(self) -> AuthState:
        return self.applier.auth.state  # type: ignore[attr-defined]

    def lease_keys(self, lease_id: int) -> frozenset[bytes]:
        return self.applier.lease_keys(lease_id)  # type: ignore[attr-defined]

    def _limiter(self) -> trio.CapacityLimiter:
        if self._bcrypt_limiter is None:
            self._bcrypt_limiter = trio.CapacityLimiter(BCRYPT_THREADS)
        return self._bcrypt_limiter

    async def hash_password(self, password: str) -> str:
        data = password.encode()
        if len(data) > BCRYPT_MAX_PASSWORD:
            raise err(ERR_PASSWORD_TOO_LONG)
        hashed = await trio.to_thread.run_sync(_hash, data, self.bcrypt_cost, limiter=self._limiter())
        return hashed.decode()

    async def _auth_read(self) -> AuthState:
        if self.needs_read_index(False):  # type: ignore[attr-defined]
            await self.node.wait_read_index()  # type: ignore[attr-defined]
        return self.auth_state()

    async def _auth_write(self, caller: Caller, **fields: Any) -> Any:
        result = await self._propose(caller, **fields)  # type: ignore[attr-defined]
        return self.fill(result.response, self.store.current_revision)  # type: ignore[attr-defined]

    # -- enable / disable / authenticate ----------------------------------------------------
    async def auth_enable(self, req: rpc_pb2.AuthEnableRequest, caller: Caller) -> rpc_pb2.AuthEnableResponse:
        return await self._auth_write(caller, auth_enable=rpc_pb2.AuthEnableRequest())

    async def auth_disable(self, req: rpc_pb2.AuthDisableRequest, caller: Caller) -> rpc_pb2.AuthDisableResponse:
        return await self._auth_write(caller, auth_disable=rpc_pb2.AuthDisableRequest())

    async def authenticate(self, req: rpc_pb2.AuthenticateRequest, caller: Caller) -> rpc_pb2.AuthenticateResponse:
        if not self.auth_state().enabled:
            raise err(ERR_AUTH_NOT_ENABLED)
        address = _address(caller)
        now = trio.current_time()
        if self.login_limiter is not None:
            try:
                self.login_limiter.check(req.name, address, now)
            except EtcdError as exc:
                self.gate.note(caller, "Authenticate", "deny", exc.message,  # type: ignore[attr-defined]
                               username=req.name, how="password")
                raise
        while True:
            state = await self._auth_read()
            if not state.enabled:
                raise err(ERR_AUTH_NOT_ENABLED)
            user = state.users.get(req.name)
            if user is not None and user.no_password:
                raise err(ERR_AUTH_NO_PASSWORD_USER)
            hashed = user.password if user is not None else await self._dummy()
            password = req.password.encode()
            ok = len(password) <= BCRYPT_MAX_PASSWORD and await trio.to_thread.run_sync(
                _check, password, hashed, limiter=self._limiter())
            if not ok or user is None:
                if self.login_limiter is not None:
                    self.login_limiter.failed(req.name, address, trio.current_time())
                log.info("authentication failed for user %r from %s", req.name, address or "?")
                self.gate.note(caller, "Authenticate", "deny", ERR_AUTH_FAILED.message,  # type: ignore[attr-defined]
                               username=req.name, how="password")
                raise err(ERR_AUTH_FAILED)
            # The password was checked against a state that may have moved during the bcrypt
            # work (etcd retries the same way): log in against the state of now.
            current = self.auth_state()
            if current.users.get(req.name) is not user:
                continue
            break
        if self.login_limiter is not None:
            self.login_limiter.succeeded(req.name)
        gate = self.gate  # type: ignore[attr-defined]
        gate.note(caller, "Authenticate", "allow", "password", username=req.name, how="password")
        token = gate.tokens.assign(req.name, current.revision, gate.token_now())
        resp = rpc_pb2.AuthenticateResponse(token=token)
        return self.fill(resp, self.store.current_revision)  # type: ignore[attr-defined]

    async def _dummy(self) -> bytes:
        """A hash to check unknown users against, so their answer takes as long as a known one's."""
        if self._dummy_hash is None:
            self._dummy_hash = await trio.to_thread.run_sync(_hash, b"securekv-no-such-user", self.bcrypt_cost,
                                                             limiter=self._limiter())
        return self._dummy_hash

    # -- users --------------------------------------------------------------------------------
    async def user_add(self, req: rpc_pb2.AuthUserAddRequest, caller: Caller) -> rpc_pb2.AuthUserAddResponse:
        entry = rpc_pb2.AuthUserAddRequest(name=req.name)
        if req.HasField("options"):
            entry.options.CopyFrom(req.options)
        if req.name and req.name in self.auth_state().users:
            raise err(ERR_USER_ALREADY_EXIST)  # no bcrypt work for a request the log would refuse
        if req.name and not entry.options.no_password:
            entry.hashedPassword = await self._hashed(req)
        return await self._auth_write(caller, auth_user_add=entry)

    async def _hashed(self, req: Any) -> str:
        """The receiving member's bcrypt hash of the request's password (or a client-supplied
        hash, etcd 3.5's hashedPassword, checked to be one)."""
        if req.hashedPassword:
            value = req.hashedPassword
            if not value.startswith(("$2a$", "$2b$", "$2y$")) or len(value) != 60:
                raise err(ERR_BAD_HASH)
            return value
        return await self.hash_password(req.password)

    async def user_get(self, req: rpc_pb2.AuthUserGetRequest, caller: Caller) -> rpc_pb2.AuthUserGetResponse:
        state = await self._auth_read()
        user = state.users.get(req.name)
        if user is None:
            raise err(ERR_USER_NOT_FOUND)
        return self.fill(rpc_pb2.AuthUserGetResponse(roles=list(user.roles)),  # type: ignore[attr-defined]
                         self.store.current_revision)  # type: ignore[attr-defined]

    async def user_list(self, req: rpc_pb2.AuthUserListRequest, caller: Caller) -> rpc_pb2.AuthUserListResponse:
        state = await self._auth_read()
        names = sorted(state.users, key=lambda n: n.encode("utf-8", "surrogateescape"))
        return self.fill(rpc_pb2.AuthUserListResponse(users=names),  # type: ignore[attr-defined]
                         self.store.current_revision)  # type: ignore[attr-defined]

    async def user_delete(self, req: rpc_pb2.AuthUserDeleteRequest, caller: Caller) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._auth_write(caller, auth_user_delete=req)

    async def user_change_password(self, req: rpc_pb2.AuthUserChangePasswordRequest,
                                   caller: Caller) -> rpc_pb2.AuthUserChangePasswordResponse:
        if req.name not in self.auth_state().users:
            raise err(ERR_USER_NOT_FOUND)
        entry = rpc_pb2.AuthUserChangePasswordRequest(name=req.name, hashedPassword=await self._hashed(req))
        return await self._auth_write(caller, auth_user_change_password=entry)

    async def user_grant_role(self, req: rpc_pb2.AuthUserGrantRoleRequest,
                              caller: Caller) -> rpc_pb2.AuthUserGrantRoleResponse:
        return await self._auth_write(caller, auth_user_grant_role=req)

    async def user_revoke_role(self, req: rpc_pb2.AuthUserRevokeRoleRequest,
                               caller: Caller) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return await self._auth_write(caller, auth_user_revoke_role=req)

    # -- roles --------------------------------------------------------------------------------
    async def role_add(self, req: rpc_pb2.AuthRoleAddRequest, caller: Caller) -> rpc_pb2.AuthRoleAddResponse:
        return await self._auth_write(caller, auth_role_add=req)

    async def role_get(self, req: rpc_pb2.AuthRoleGetRequest, caller: Caller) -> rpc_pb2.AuthRoleGetResponse:
        state = await self._auth_read()
        role = state.roles.get(req.role)
        if role is None:
            raise err(ERR_ROLE_NOT_FOUND)
        return self.fill(rpc_pb2.AuthRoleGetResponse(perm=[p.to_pb() for p in role.perms]),  # type: ignore[attr-defined]
                         self.store.current_revision)  # type: ignore[attr-defined]

    async def role_list(self, req: rpc_pb2.AuthRoleListRequest, caller: Caller) -> rpc_pb2.AuthRoleListResponse:
        state = await self._auth_read()
        names = sorted(state.roles, key=lambda n: n.encode("utf-8", "surrogateescape"))
        return self.fill(rpc_pb2.AuthRoleListResponse(roles=names),  # type: ignore[attr-defined]
                         self.store.current_revision)  # type: ignore[attr-defined]

    async def role_delete(self, req: rpc_pb2.AuthRoleDeleteRequest, caller: Caller) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._auth_write(caller, auth_role_delete=req)

    async def role_grant_permission(self, req: rpc_pb2.AuthRoleGrantPermissionRequest,
                                    caller: Caller) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        return await self._auth_write(caller, auth_role_grant_permission=req)

    async def role_revoke_permission(self, req: rpc_pb2.AuthRoleRevokePermissionRequest,
                                     caller: Caller) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return await self._auth_write(caller, auth_role_revoke_permission=req)

    # -- the embedded default ---------------------------------------------------------------
    async def bootstrap_root(self, caller: Caller) -> bool:
        """`securekv serve` without flags: user ``root`` (no password: it is the generated root
        client certificate's CN) with the root role, and auth enabled, all through the log like
        any auth change. Each step is skipped when already done, so a crash half-way is
        finished at the next start; the backend then records that the bootstrap is complete
        (meta ``embedded_auth``), so an operator's later ``auth disable`` survives restarts."""
        from securekv.storage import WriteBatch

        backend = self.backend  # type: ignore[attr-defined]
        done = await self.node.backend_call(backend.get_meta, EMBEDDED_AUTH_META)  # type: ignore[attr-defined]
        if done:
            return False
        steps = (
            (lambda st: "root" not in st.users, "auth_user_add", _root_user()),
            (lambda st: "root" in st.users and not st.users["root"].is_root, "auth_user_grant_role",
             rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root")),
            (lambda st: not st.enabled, "auth_enable", rpc_pb2.AuthEnableRequest()),
        )
        for needed, field, body in steps:
            if not needed(self.auth_state()):
                continue
            try:
                await self._propose(caller, **{field: body})  # type: ignore[attr-defined]
            except EtcdError as exc:  # e.g. another member did it first: judged by the state below
                log.warning("embedded auth bootstrap: %s: %s", field, exc.message)
        if not self.auth_state().enabled:  # secure by default: never serve the default open
            from securekv.errors import UsageError

            raise UsageError("embedded default: could not enable auth (see the warnings above)")
        await self.node.backend_call(backend.commit, WriteBatch(meta={EMBEDDED_AUTH_META: 1}))  # type: ignore[attr-defined]
        log.info("embedded default: auth enabled; user root (no password) is the root client certificate's CN")
        return True


EMBEDDED_AUTH_META = "embedded_auth"


def _root_user() -> rpc_pb2.AuthUserAddRequest:
    root = rpc_pb2.AuthUserAddRequest(name="root")
    root.options.no_password = True
    return root

__all__ = ["AuthHandlers", "DEFAULT_BCRYPT_COST", "effective_bcrypt_cost"]
