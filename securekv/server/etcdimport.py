"""An etcd 3.4 snapshot (a bbolt file in etcd's buckets) loaded into our sqlite backend.

The inverse of ``etcdsnap.py`` (which documents the bucket schema): what ``etcdctl snapshot
restore`` keeps of a snapshot, we keep too —

| etcd bucket | becomes |
|---|---|
| ``key`` | ``revision`` rows (main, sub, key, mvccpb.KeyValue bytes); a tombstone's value is re-encoded as our store writes it (key + deletion revision) |
| ``lease`` | ``lease`` rows (ID, TTL; RemainingTTL as the lease data) |
| ``meta`` | ``compact_revision`` = ``finishedCompactRev``; a ``scheduledCompactRev`` beyond it (a compaction cut short) is finished here, as etcd finishes it at start |
| ``alarm`` | meta ``alarms`` |
| ``auth``, ``authUsers``, ``authRoles`` | items ``auth``, ``auth_users``, ``auth_roles`` (``authRevision`` 1, what a fresh etcd writes, is left out: the export adds it back) |

and drops what belongs to the old cluster: ``members``, ``members_removed`` (etcd deletes them
too), the ``consistent_index`` (the new cluster's log starts from its bootstrap entries, so
the backend starts at index 0, as a freshly bootstrapped member's does) and ``cluster``
(the version is the server's). Rows are streamed into the backend in bounded batches; the
caller owns the (new, empty) backend and throws it away on error.
"""

from __future__ import annotations

import struct
from typing import Callable, Iterable, Iterator

import attrs
from google.protobuf.message import DecodeError

from securekv.client.boltread import BUCKET_LEAF, PGID, BoltFile
from securekv.proto import kv_pb2, rpc_pb2
from securekv.server.etcdsnap import DEFAULT_AUTH_REVISION, ITEM_BUCKETS, LeasePB
from securekv.server.persist import encode_alarms, encode_lease_data
from securekv.storage.backend import Backend, Lease, Revision, WriteBatch

BATCH_ROWS = 20_000
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_REV = struct.Struct(">Q1sQ")
_BUCKET_ITEMS = {v: k for k, v in ITEM_BUCKETS.items()}  # b"authUsers" -> "auth_users"
_DROPPED = {b"members", b"members_removed", b"cluster"}


class SnapshotImportError(ValueError):
    """The bbolt file is sound but does not hold what etcd's buckets hold."""


@attrs.frozen
class ImportSummary:
    revisions: int
    leases: int
    last_revision: int  # main revision of the last row of bucket ``key`` (0 if none)
    compact_revision: int  # finished compaction after the import (0 if never compacted)
    resumed_compaction: bool  # a scheduled compaction was finished here


# -- one bucket entry at a time (pure) --------------------------------------------------------
def revision_row(key: bytes, value: bytes) -> Revision:
    """A ``key`` bucket entry as our revision row."""
    tombstone = len(key) == _REV.size + 1 and key[-1:] == b"t"
    if len(key) != _REV.size + tombstone or key[8:9] != b"_":
        raise SnapshotImportError(f"bucket key: {key.hex()} is not an etcd revision key")
    main, _sep, sub = _REV.unpack_from(key)
    try:
        kv = kv_pb2.KeyValue.FromString(value)
    except DecodeError as exc:
        raise SnapshotImportError(f"bucket key: revision {main}_{sub}: not an mvccpb.KeyValue ({exc})") from None
    if not kv.key:
        raise SnapshotImportError(f"bucket key: revision {main}_{sub} has an empty key")
    if tombstone:
        return Revision(main, sub, kv.key, kv_pb2.KeyValue(key=kv.key, mod_revision=main).SerializeToString(), True)
    return Revision(main, sub, kv.key, bytes(value), False)


def lease_row(key: bytes, value: bytes) -> Lease:
    if len(key) != _I64.size:
        raise SnapshotImportError(f"bucket lease: {key.hex()} is not a lease ID")
    try:
        pb = LeasePB.FromString(value)
    except DecodeError as exc:
        raise SnapshotImportError(f"bucket lease: {key.hex()}: not a leasepb.Lease ({exc})") from None
    return Lease(_I64.unpack(key)[0], pb.TTL, encode_lease_data(max(0, pb.RemainingTTL)))


def compaction_marks(items: Iterable[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(finished, scheduled) compaction revisions from bucket ``meta`` (0 when absent)."""
    marks = {b"finishedCompactRev": 0, b"scheduledCompactRev": 0}
    for k, v in items:
        if k in marks:
            if len(v) < 8:
                raise SnapshotImportError(f"bucket meta: {k.decode()} is not a revision")
            marks[k] = _I64.unpack_from(v)[0]
    return marks[b"finishedCompactRev"], marks[b"scheduledCompactRev"]


def alarms_of(items: Iterable[tuple[bytes, bytes]]) -> list[rpc_pb2.AlarmMember]:
    out = []
    for k, _v in items:
        try:
            out.append(rpc_pb2.AlarmMember.FromString(k))
        except DecodeError as exc:
            raise SnapshotImportError(f"bucket alarm: not an AlarmMember ({exc})") from None
    return out


def auth_items(bucket: bytes, items: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, bytes, bytes]]:
    name = _BUCKET_ITEMS[bucket]
    return [(name, k, v) for k, v in items
            if not (bucket == b"auth" and k == b"authRevision" and v == _U64.pack(DEFAULT_AUTH_REVISION))]


# -- the file --------------------------------------------------------------------------------
def buckets(bolt: BoltFile) -> Iterator[tuple[bytes, Iterator[tuple[bytes, bytes]]]]:
    """(name, lazily read (key, value) pairs) of every top-level bucket, in bbolt's order."""
    for flags, name, value in bolt.bucket_items(bolt.root):
        if not flags & BUCKET_LEAF or len(value) < 16:
            raise SnapshotImportError(f"{name.decode('utf-8', 'replace')!r} is not a bucket: not an etcd snapshot")
        root = PGID.unpack_from(value, 0)[0]
        yield name, ((k, v) for f, k, v in bolt.bucket_items(root, value) if not f & BUCKET_LEAF)


def _chunks(rows: Iterable[object], size: int) -> Iterator[list]:
    chunk: list = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def import_snapshot(bolt: BoltFile, backend: Backend, *, batch_rows: int = BATCH_ROWS,
                    on_resume: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Load every bucket etcd's restore keeps into ``backend`` (new and empty)."""
    revisions = leases = last = 0
    finished = scheduled = 0
    for name, items in buckets(bolt):
        if name == b"key":
            for chunk in _chunks(map(lambda kv: revision_row(*kv), items), batch_rows):
                backend.commit(WriteBatch(puts=chunk))
                revisions += len(chunk)
                last = chunk[-1].main
        elif name == b"lease":
            for chunk in _chunks(map(lambda kv: lease_row(*kv), items), batch_rows):
                backend.commit(WriteBatch(lease_puts=chunk))
                leases += len(chunk)
        elif name == b"meta":
            finished, scheduled = compaction_marks(items)
        elif name == b"alarm":
            alarms = alarms_of(items)
            if alarms:
                backend.commit(WriteBatch(meta={"alarms": encode_alarms(alarms)}))
        elif name in _BUCKET_ITEMS:
            rows = auth_items(name, items)
            if rows:
                backend.commit(WriteBatch(item_puts=rows))
        elif name not in _DROPPED:
            for _ in items:  # unknown buckets hold nothing etcd reads; still walked (bounds-checked)
                pass
    if finished > 0:
        backend.commit(WriteBatch(meta={"compact_revision": finished}))
    resumed = scheduled > finished and scheduled > 0
    if resumed:
        _finish_compaction(backend, finished, scheduled)
        if on_resume is not None:
            on_resume(finished, scheduled)
    return ImportSummary(revisions, leases, last, scheduled if resumed else finished, resumed)


def _finish_compaction(backend: Backend, finished: int, scheduled: int) -> None:
    """etcd resumes a scheduled compaction at start; the same rows go here, with our store's rule."""
    from securekv.mvcc import MVCCStore

    reader = backend.reader()
    try:
        # Only the key index in memory; the rows stay in the backend.
        store = MVCCStore.restore(backend.iter_revisions(), compact_revision=finished if finished > 0 else -1,
                                  records=reader)
        if scheduled > store.current_revision:
            raise SnapshotImportError(f"bucket meta: scheduled compaction {scheduled} is beyond the last revision "
                                      f"{store.current_revision}")
        batch = store.compact(scheduled)
    finally:
        reader.close()
    backend.commit(WriteBatch(deletes=batch.deletes, meta={"compact_revision": scheduled}))


__all__ = ["ImportSummary", "SnapshotImportError", "buckets", "import_snapshot", "lease_row", "revision_row"]
