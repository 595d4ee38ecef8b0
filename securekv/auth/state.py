"""The replicated auth state: users, roles, the enabled flag and the auth revision.

An :class:`AuthState` is immutable: every applied auth change makes a new one, and readers
(the gate, on any thread) take the current one with one attribute read. Auth changes are
rare, users and roles few, so copying beats locking. The on-disk form is etcd's own bucket
layout (``auth``: ``authEnabled``/``authRevision``; ``authUsers``: name -> authpb.User;
``authRoles``: name -> authpb.Role), so snapshots convert to and from etcd's byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import attrs

from securekv.proto import auth_pb2

from .ranges import KeyRange, RangeSet

ROOT_USER = "root"
ROOT_ROLE = "root"
READ, WRITE, READWRITE = 0, 1, 2
PERM_NAMES = {READ: "READ", WRITE: "WRITE", READWRITE: "READWRITE"}

# Backend item buckets (securekv's names for etcd's bbolt buckets; see server/etcdsnap.py).
BUCKET_AUTH = "auth"
BUCKET_USERS = "auth_users"
BUCKET_ROLES = "auth_roles"
ENABLED_KEY = b"authEnabled"
REVISION_KEY = b"authRevision"
# A fresh etcd auth store commits revision 1 (NewAuthStore); so do we.
INITIAL_REVISION = 1

_U64 = struct.Struct(">Q")


def _name(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


@attrs.frozen(slots=True)
class Permission:
    perm_type: int  # READ, WRITE, READWRITE
    key: bytes
    range_end: bytes = b""

    @property
    def key_range(self) -> KeyRange:
        return KeyRange.of(self.key, self.range_end)

    def to_pb(self) -> auth_pb2.Permission:
        return auth_pb2.Permission(permType=self.perm_type, key=self.key, range_end=self.range_end)

    @classmethod
    def from_pb(cls, pb: auth_pb2.Permission) -> Permission:
        return cls(int(pb.permType), bytes(pb.key), bytes(pb.range_end))


@attrs.frozen(slots=True)
class User:
    name: str
    password: bytes = b""  # bcrypt hash; empty for a no-password user
    roles: tuple[str, ...] = ()  # sorted, as etcd keeps them
    no_password: bool = False

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_root(self) -> bool:
        """etcd's hasRootRole: the *role* root is what makes a user all-powerful."""
        return ROOT_ROLE in self.roles

    def encode(self) -> bytes:
        pb = auth_pb2.User(name=name_bytes(self.name), password=self.password, roles=list(self.roles))
        pb.options.no_password = self.no_password
        return pb.SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> User:
        pb = auth_pb2.User.FromString(bytes(data))
        return cls(_name(pb.name), bytes(pb.password), tuple(sorted(pb.roles)),
                   bool(pb.HasField("options") and pb.options.no_password))


@attrs.frozen(slots=True)
class Role:
    name: str
    perms: tuple[Permission, ...] = ()  # sorted by key, as etcd keeps them

    def encode(self) -> bytes:
        return auth_pb2.Role(name=name_bytes(self.name), keyPermission=[p.to_pb() for p in self.perms]
                             ).SerializeToString()

    @classmethod
    def decode(cls, data: bytes) -> Role:
        pb = auth_pb2.Role.FromString(bytes(data))
        return cls(_name(pb.name), tuple(Permission.from_pb(p) for p in pb.keyPermission))


@attrs.frozen(slots=True)
class UserPerms:
    """A user's permissions merged over all its roles (etcd's unifiedRangePermissions)."""

    read: RangeSet
    write: RangeSet


def merge_perms(user: User, roles: Mapping[str, Role]) -> UserPerms:
    read: list[KeyRange] = []
    write: list[KeyRange] = []
    for role_name in user.roles:
        role = roles.get(role_name)
        if role is None:
            continue
        for p in role.perms:
            r = p.key_range
            if p.perm_type in (READ, READWRITE):
                read.append(r)
            if p.perm_type in (WRITE, READWRITE):
                write.append(r)
    return UserPerms(RangeSet(read), RangeSet(write))


@attrs.frozen
class AuthState:
    enabled: bool = False
    revision: int = INITIAL_REVISION
    users: Mapping[str, User] = attrs.field(factory=dict)
    roles: Mapping[str, Role] = attrs.field(factory=dict)
    # Merged permissions per user, filled on first use (valid for this immutable state only).
    perm_cache: dict[str, UserPerms] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    def perms(self, username: str) -> UserPerms | None:
        cached = self.perm_cache.get(username)
        if cached is not None:
            return cached
        user = self.users.get(username)
        if user is None:
            return None
        merged = merge_perms(user, self.roles)
        self.perm_cache[username] = merged
        return merged

    def evolve(self, **changes: object) -> AuthState:
        """A new state (the permission cache starts empty)."""
        return attrs.evolve(self, **changes)

    # -- the backend's rows (etcd's buckets) ----------------------------------------------
    def meta_rows(self) -> list[tuple[str, bytes, bytes]]:
        return [(BUCKET_AUTH, ENABLED_KEY, b"\x01" if self.enabled else b"\x00"),
                (BUCKET_AUTH, REVISION_KEY, _U64.pack(self.revision))]

    def rows(self) -> list[tuple[str, bytes, bytes]]:
        """Every row this state is stored as (used by tests and full rewrites)."""
        out = self.meta_rows()
        out += [(BUCKET_USERS, name_bytes(n), u.encode()) for n, u in sorted(self.users.items())]
        out += [(BUCKET_ROLES, name_bytes(n), r.encode()) for n, r in sorted(self.roles.items())]
        return out

    @classmethod
    def from_rows(cls, auth: Iterable[tuple[bytes, bytes]], users: Iterable[tuple[bytes, bytes]],
                  roles: Iterable[tuple[bytes, bytes]]) -> AuthState:
        """Load what the backend (or an imported etcd snapshot) holds; absent rows = fresh."""
        meta = {bytes(k): bytes(v) for k, v in auth}
        enabled = meta.get(ENABLED_KEY, b"\x00") == b"\x01"
        raw_rev = meta.get(REVISION_KEY)
        revision = _U64.unpack(raw_rev)[0] if raw_rev is not None and len(raw_rev) == 8 else INITIAL_REVISION
        user_map = {}
        for _k, v in users:
            u = User.decode(v)
            user_map[u.name] = u
        role_map = {}
        for _k, v in roles:
            r = Role.decode(v)
            role_map[r.name] = r
        return cls(enabled=enabled, revision=max(revision, INITIAL_REVISION), users=user_map, roles=role_map)


__all__ = [
    "AuthState", "BUCKET_AUTH", "BUCKET_ROLES", "BUCKET_USERS", "INITIAL_REVISION", "PERM_NAMES", "Permission",
    "READ", "READWRITE", "ROOT_ROLE", "ROOT_USER", "Role", "User", "UserPerms", "WRITE", "merge_perms", "name_bytes",
]
