"""Our backend as an etcd 3.4 snapshot: the sqlite tables mapped onto etcd's bbolt buckets.

``etcdctl snapshot status/restore`` read a snapshot as etcd's own backend, so the export
speaks etcd's schema (mvcc/kvstore.go, lease/lessor.go, membership/store.go, v3alarm,
auth/store.go), not ours:

| bucket | key | value | from |
|---|---|---|---|
| ``key`` | 8-byte BE main ``_`` 8-byte BE sub (+ ``t`` for a tombstone) | mvccpb.KeyValue (tombstone: only the key, as etcd writes it) | table ``revision`` |
| ``meta`` | ``consistent_index``; ``scheduledCompactRev``, ``finishedCompactRev`` after a compaction | 8-byte BE; 17-byte revision ``{main: rev}`` | meta ``consistent_index``, ``compact_revision`` |
| ``lease`` | 8-byte BE id | leasepb.Lease {ID, TTL, RemainingTTL if checkpointed} | table ``lease`` |
| ``members`` / ``members_removed`` | member id in hex | Go JSON of the member / ``removed`` | meta ``members`` |
| ``cluster`` | ``clusterVersion`` | e.g. ``3.4.0`` | the server's cluster version |
| ``alarm`` | marshalled AlarmMember | empty | meta ``alarms`` |
| ``auth``, ``authUsers``, ``authRoles`` | as etcd | as etcd (authpb bytes, copied) | items ``auth``, ``auth_users``, ``auth_roles``; ``authRevision`` 1 by default, as a fresh etcd |

Anything else in our tables (other item buckets, other meta names) has no etcd meaning and
is left out. The input is a private sqlite copy (``Backend.backup_to``), so this runs in a
worker thread without holding the live backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from securekv.proto import kv_pb2, rpc_pb2
from securekv.server.cluster import META_KEY, Member, Membership
from securekv.server.persist import decode_alarms, decode_lease_data
from securekv.storage.backend import CONSISTENT_INDEX, Backend
from securekv.storage.boltwrite import BoltSummary, write_bolt

Items = Iterable[tuple[bytes, bytes]]

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_REV = struct.Struct(">Q1sQ")  # etcd's revToBytes: main "_" sub
DEFAULT_AUTH_REVISION = 1  # what etcd's NewAuthStore commits on a fresh backend
ITEM_BUCKETS = {"auth": b"auth", "auth_users": b"authUsers", "auth_roles": b"authRoles"}


def _lease_message() -> Any:
    """leasepb.Lease built at run time (a private pool: no generated file, no name clash)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="securekv_leasepb.proto", package="leasepb", syntax="proto3")
    msg = fdp.message_type.add(name="Lease")
    for number, name in enumerate(("ID", "TTL", "RemainingTTL"), start=1):
        msg.field.add(name=name, number=number, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("leasepb.Lease"))


LeasePB = _lease_message()


def rev_key(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    return _REV.pack(main, b"_", sub) + (b"t" if tombstone else b"")


def go_json(obj: Any) -> bytes:
    """``encoding/json`` output for plain values: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def member_json(m: Member) -> bytes:
    """etcd's membership.Member as json.Marshal writes it (field order and omitempty)."""
    d: dict[str, Any] = {"id": m.id, "peerURLs": list(m.peer_urls) or None}
    if m.is_learner:
        d["isLearner"] = True
    if m.name:
        d["name"] = m.name
    if m.client_urls:
        d["clientURLs"] = list(m.client_urls)
    return go_json(d)


def _key_bucket(backend: Backend) -> Items:
    for rev in backend.iter_revisions():
        if rev.tombstone:
            yield rev_key(rev.main, rev.sub, True), kv_pb2.KeyValue(key=bytes(rev.key)).SerializeToString()
        else:
            yield rev_key(rev.main, rev.sub), bytes(rev.value)


def _lease_bucket(backend: Backend) -> Items:
    # Two passes keep bbolt's byte order without sorting in memory: as 8-byte big-endian
    # keys the non-negative IDs come first, then the negative ones (both ascending).
    for negative in (False, True):
        for lease in backend.iter_leases():
            if (lease.id < 0) != negative:
                continue
            pb = LeasePB(ID=lease.id, TTL=lease.ttl, RemainingTTL=max(0, decode_lease_data(lease.data)))
            yield _I64.pack(lease.id), pb.SerializeToString()


def _meta_bucket(backend: Backend) -> list[tuple[bytes, bytes]]:
    out = [(b"consistent_index", _U64.pack(max(0, int(backend.get_meta(CONSISTENT_INDEX, 0) or 0))))]
    compact = backend.get_meta("compact_revision")
    if isinstance(compact, int) and compact > 0:
        out += [(b"finishedCompactRev", rev_key(compact)), (b"scheduledCompactRev", rev_key(compact))]
    return sorted(out)


def _alarm_bucket(backend: Backend) -> list[tuple[bytes, bytes]]:
    keys = {rpc_pb2.AlarmMember(memberID=a.memberID, alarm=a.alarm).SerializeToString()
            for a in decode_alarms(backend.get_meta("alarms")) if a.alarm}
    return [(k, b"") for k in sorted(keys)]


def _member_buckets(backend: Backend) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    ms = Membership.decode(backend.get_meta(META_KEY))
    members = sorted((f"{m.id:x}".encode(), member_json(m)) for m in ms.members.values())
    removed = sorted((f"{mid:x}".encode(), b"removed") for mid in ms.removed)
    return members, removed


def _items(backend: Backend, bucket: str) -> list[tuple[bytes, bytes]]:
    return sorted((bytes(k), bytes(v)) for k, v in backend.iter_items(bucket))


def etcd_buckets(backend: Backend, cluster_version: str) -> Iterator[tuple[bytes, Items]]:
    """etcd 3.4's buckets in bbolt's (bytewise) order; ``key`` and ``lease`` are streamed."""
    auth = dict(_items(backend, "auth"))
    auth.setdefault(b"authRevision", _U64.pack(DEFAULT_AUTH_REVISION))
    members, removed = _member_buckets(backend)
    yield b"alarm", _alarm_bucket(backend)
    yield b"auth", sorted(auth.items())
    yield b"authRoles", _items(backend, "auth_roles")
    yield b"authUsers", _items(backend, "auth_users")
    yield b"cluster", [(b"clusterVersion", cluster_version.encode())]
    yield b"key", _key_bucket(backend)
    yield b"lease", _lease_bucket(backend)
    yield b"members", members
    yield b"members_removed", removed
    yield b"meta", _meta_bucket(backend)


def _open_copy(path: str) -> Backend:
    """The sqlite copy, read-only (no journal files appear next to it)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return Backend(path, sqlite3.connect(uri, uri=True, check_same_thread=False))


def export_snapshot(sqlite_copy: str | os.PathLike[str], out_path: str | os.PathLike[str],
                    cluster_version: str = "3.4.0") -> BoltSummary:
    """Write ``out_path`` (new, 0600) as an etcd bbolt snapshot of the backend copy.

    On any error the partial output is removed and the error raised.
    """
    out_path = os.fspath(out_path)
    backend = _open_copy(os.fspath(sqlite_copy))
    try:
        fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w+b", buffering=1 << 20) as out:
                return write_bolt(out, etcd_buckets(backend, cluster_version))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out_path)
            raise
    finally:
        backend.close()


__all__ = ["LeasePB", "etcd_buckets", "export_snapshot", "member_json", "rev_key"]
