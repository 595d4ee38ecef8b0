"""Applying etcd's auth requests to the replicated AuthState (deterministic, pure).

Every member applies the same auth entries in the same order and reaches the same state,
rows and auth revision. Passwords never reach this module in clear: the member that receives
``UserAdd``/``UserChangePassword`` hashes the password (bcrypt) before proposing and sends
only the hash (``hashedPassword``, etcd 3.5's field); an entry that still carries a clear
password is refused rather than stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

from securekv.proto import rpc_pb2
from securekv.rpctypes import (
    ERR_INVALID_AUTH_MGMT,
    ERR_PERMISSION_NOT_GRANTED,
    ERR_ROLE_ALREADY_EXIST,
    ERR_ROLE_EMPTY,
    ERR_ROLE_NOT_FOUND,
    ERR_ROLE_NOT_GRANTED,
    ERR_ROOT_ROLE_NOT_EXIST,
    ERR_ROOT_USER_NOT_EXIST,
    ERR_USER_ALREADY_EXIST,
    ERR_USER_EMPTY,
    ERR_USER_NOT_FOUND,
    EtcdError,
    err,
)

from .state import (
    BUCKET_ROLES,
    BUCKET_USERS,
    PERM_NAMES,
    ROOT_ROLE,
    ROOT_USER,
    AuthState,
    Permission,
    Role,
    User,
    name_bytes,
)

# etcd 3.5's text for a grant without a permission (3.4 crashes on it).
ERR_PERMISSION_NOT_GIVEN = EtcdError("INVALID_ARGUMENT", "etcdserver: permission not given")
# securekv's own: a password must be hashed by the receiving member before it is proposed.
ERR_PASSWORD_NOT_HASHED = EtcdError("INVALID_ARGUMENT", "etcdserver: password was not hashed before proposal")

# A row change for the backend: (bucket, key, value); value None deletes the row.
Row = tuple[str, bytes, "bytes | None"]

AUTH_KINDS = (
    "auth_enable", "auth_disable", "auth_user_add", "auth_user_delete", "auth_user_change_password",
    "auth_user_grant_role", "auth_user_revoke_role", "auth_role_add", "auth_role_delete",
    "auth_role_grant_permission", "auth_role_revoke_permission",
)


@attrs.frozen
class AuthChange:
    """What one applied auth request did."""

    response: Any
    rows: tuple[Row, ...] = ()
    # Members drop these users' tokens (deleted, or password changed), as etcd does.
    invalidated_users: tuple[str, ...] = ()
    disabled: bool = False  # auth was turned off: every token is dropped

    @property
    def changed(self) -> bool:
        return bool(self.rows)


class TokenSink(Protocol):
    """The member-local token provider, told synchronously when tokens must die."""

    def invalidate_user(self, username: str) -> None: ...

    def clear(self) -> None: ...


class AuthStore:
    """The current AuthState plus the functions that change it.

    ``tokens`` (member-local, optional) is told in the same step an entry is applied when a
    user's tokens stop being valid (user deleted, password changed) or all of them do (auth
    disabled), as etcd's token providers are, so no request is served with a dead token
    between two applied entries.
    """

    def __init__(self, state: AuthState | None = None, tokens: TokenSink | None = None) -> None:
        self.state = state if state is not None else AuthState()
        self.tokens = tokens
        self._handlers: dict[str, Callable[[Any], AuthChange]] = {
            "auth_enable": self._enable,
            "auth_disable": self._disable,
            "auth_user_add": self._user_add,
            "auth_user_delete": self._user_delete,
            "auth_user_change_password": self._user_change_password,
            "auth_user_grant_role": self._user_grant_role,
            "auth_user_revoke_role": self._user_revoke_role,
            "auth_role_add": self._role_add,
            "auth_role_delete": self._role_delete,
            "auth_role_grant_permission": self._role_grant_permission,
            "auth_role_revoke_permission": self._role_revoke_permission,
        }

    @classmethod
    def from_rows(cls, auth: Any, users: Any, roles: Any, tokens: TokenSink | None = None) -> AuthStore:
        return cls(AuthState.from_rows(auth, users, roles), tokens)

    def apply(self, kind: str, req: Any) -> AuthChange:
        """Apply one auth request; raises EtcdError (and changes nothing) when etcd refuses it."""
        change = self._handlers[kind](req)
        if self.tokens is not None:
            if change.disabled:
                self.tokens.clear()
            for name in change.invalidated_users:
                self.tokens.invalidate_user(name)
        return change

    # -- plumbing ---------------------------------------------------------------------------
    def _commit(self, response: Any, *, users: dict[str, User | None] | None = None,
                roles: dict[str, Role | None] | None = None, **changes: Any) -> AuthChange:
        """Install the next state (revision + 1) and describe its rows."""
        st = self.state
        user_map = dict(st.users)
        role_map = dict(st.roles)
        rows: list[Row] = []
        for name, user in (users or {}).items():
            if user is None:
                user_map.pop(name, None)
                rows.append((BUCKET_USERS, name_bytes(name), None))
            else:
                user_map[name] = user
                rows.append((BUCKET_USERS, name_bytes(name), user.encode()))
        for name, role in (roles or {}).items():
            if role is None:
                role_map.pop(name, None)
                rows.append((BUCKET_ROLES, name_bytes(name), None))
            else:
                role_map[name] = role
                rows.append((BUCKET_ROLES, name_bytes(name), role.encode()))
        invalidated = changes.pop("invalidated_users", ())
        disabled = changes.pop("disabled", False)
        self.state = st.evolve(revision=st.revision + 1, users=user_map, roles=role_map, **changes)
        rows = self.state.meta_rows() + rows
        return AuthChange(response, tuple(rows), tuple(invalidated), disabled)

    def _user(self, name: str) -> User:
        user = self.state.users.get(name)
        if user is None:
            raise err(ERR_USER_NOT_FOUND)
        return user

    def _role(self, name: str) -> Role:
        role = self.state.roles.get(name)
        if role is None:
            raise err(ERR_ROLE_NOT_FOUND)
        return role

    @staticmethod
    def _hashed(req: Any) -> bytes:
        if req.password:
            raise err(ERR_PASSWORD_NOT_HASHED)
        if not req.hashedPassword:
            raise err(ERR_PASSWORD_NOT_HASHED)
        return req.hashedPassword.encode()

    # -- handlers ---------------------------------------------------------------------------
    def _enable(self, req: Any) -> AuthChange:
        resp = rpc_pb2.AuthEnableResponse()
        if self.state.enabled:
            return AuthChange(resp)
        root = self.state.users.get(ROOT_USER)
        if root is None:
            raise err(ERR_ROOT_USER_NOT_EXIST)
        if not root.is_root:
            raise err(ERR_ROOT_ROLE_NOT_EXIST)
        return self._commit(resp, enabled=True)

    def _disable(self, req: Any) -> AuthChange:
        resp = rpc_pb2.AuthDisableResponse()
        if not self.state.enabled:
            return AuthChange(resp)
        return self._commit(resp, enabled=False, disabled=True)

    def _user_add(self, req: rpc_pb2.AuthUserAddRequest) -> AuthChange:
        if not req.name:
            raise err(ERR_USER_EMPTY)
        no_password = req.HasField("options") and req.options.no_password
        password = b"" if no_password else self._hashed(req)
        if req.name in self.state.users:
            raise err(ERR_USER_ALREADY_EXIST)
        user = User(req.name, password, (), bool(no_password))
        return self._commit(rpc_pb2.AuthUserAddResponse(), users={req.name: user})

    def _user_delete(self, req: rpc_pb2.AuthUserDeleteRequest) -> AuthChange:
        if self.state.enabled and req.name == ROOT_USER:
            raise err(ERR_INVALID_AUTH_MGMT)
        self._user(req.name)
        return self._commit(rpc_pb2.AuthUserDeleteResponse(), users={req.name: None},
                            invalidated_users=(req.name,))

    def _user_change_password(self, req: rpc_pb2.AuthUserChangePasswordRequest) -> AuthChange:
        password = self._hashed(req)
        user = self._user(req.name)
        # A no-password user keeps its flag (etcd copies the options): it still cannot log in.
        return self._commit(rpc_pb2.AuthUserChangePasswordResponse(),
                            users={req.name: attrs.evolve(user, password=password)},
                            invalidated_users=(req.name,))

    def _user_grant_role(self, req: rpc_pb2.AuthUserGrantRoleRequest) -> AuthChange:
        user = self._user(req.user)
        if req.role != ROOT_ROLE:
            self._role(req.role)  # etcd lets "root" be granted before the role exists
        if user.has_role(req.role):
            return AuthChange(rpc_pb2.AuthUserGrantRoleResponse())  # etcd: ignored, no new revision
        roles = tuple(sorted((*user.roles, req.role)))
        return self._commit(rpc_pb2.AuthUserGrantRoleResponse(),
                            users={req.user: attrs.evolve(user, roles=roles)})

    def _user_revoke_role(self, req: rpc_pb2.AuthUserRevokeRoleRequest) -> AuthChange:
        if self.state.enabled and req.name == ROOT_USER and req.role == ROOT_ROLE:
            raise err(ERR_INVALID_AUTH_MGMT)
        user = self._user(req.name)
        if not user.has_role(req.role):
            raise err(ERR_ROLE_NOT_GRANTED)
        roles = tuple(r for r in user.roles if r != req.role)
        return self._commit(rpc_pb2.AuthUserRevokeRoleResponse(),
                            users={req.name: attrs.evolve(user, roles=roles)})

    def _role_add(self, req: rpc_pb2.AuthRoleAddRequest) -> AuthChange:
        if not req.name:
            raise err(ERR_ROLE_EMPTY)
        if req.name in self.state.roles:
            raise err(ERR_ROLE_ALREADY_EXIST)
        return self._commit(rpc_pb2.AuthRoleAddResponse(), roles={req.name: Role(req.name)})

    def _role_delete(self, req: rpc_pb2.AuthRoleDeleteRequest) -> AuthChange:
        if self.state.enabled and req.role == ROOT_ROLE:
            raise err(ERR_INVALID_AUTH_MGMT)
        self._role(req.role)
        users: dict[str, User | None] = {}
        for name, user in self.state.users.items():
            if user.has_role(req.role):
                users[name] = attrs.evolve(user, roles=tuple(r for r in user.roles if r != req.role))
        return self._commit(rpc_pb2.AuthRoleDeleteResponse(), users=users, roles={req.role: None})

    def _role_grant_permission(self, req: rpc_pb2.AuthRoleGrantPermissionRequest) -> AuthChange:
        role = self._role(req.name)
        if not req.HasField("perm") or req.perm.permType not in PERM_NAMES:
            raise err(ERR_PERMISSION_NOT_GIVEN)
        new = Permission.from_pb(req.perm)
        perms = list(role.perms)
        for i, p in enumerate(perms):
            if p.key == new.key and p.range_end == new.range_end:
                perms[i] = new  # same range: the type is updated
                break
        else:
            perms.append(new)
            perms.sort(key=lambda p: p.key)
        return self._commit(rpc_pb2.AuthRoleGrantPermissionResponse(),
                            roles={req.name: attrs.evolve(role, perms=tuple(perms))})

    def _role_revoke_permission(self, req: rpc_pb2.AuthRoleRevokePermissionRequest) -> AuthChange:
        role = self._role(req.role)
        kept = tuple(p for p in role.perms if not (p.key == req.key and p.range_end == req.range_end))
        if len(kept) == len(role.perms):
            raise err(ERR_PERMISSION_NOT_GRANTED)
        return self._commit(rpc_pb2.AuthRoleRevokePermissionResponse(),
                            roles={req.role: attrs.evolve(role, perms=kept)})


__all__ = ["AUTH_KINDS", "AuthChange", "AuthStore", "ERR_PASSWORD_NOT_HASHED", "ERR_PERMISSION_NOT_GIVEN", "Row"]
