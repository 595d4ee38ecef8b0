"""Open a data dir written by etcd 3.4: convert it, on first start, into securekv's layout.

An etcd 3.4 member's data dir is ``member/snap/db`` (bbolt, the state at its
``consistent_index``), ``member/snap/*.snap`` (Raft snapshots: index, term, configuration)
and ``member/wal/*.wal`` (etcd's WAL: every entry after the last snapshot, the hard state).
The bbolt file alone can be behind the log, so the conversion keeps the Raft state too:

* backend (``member/db.sqlite``): the bbolt buckets (``etcdimport``: revisions, leases,
  compaction, alarms, auth), the ``consistent_index`` and the membership (``members``,
  ``members_removed``);
* WAL (``member/wal``, securekv's format): etcd's member and cluster IDs, a snapshot marker at
  the newest ``.snap`` the WAL names (its voters and learners), every entry after it with its
  index and term — InternalRaftRequests unchanged, conf changes re-encoded (etcd's member JSON
  context is what securekv's membership reads), v2 requests turned into what securekv applies
  (a member's published attributes) or into empty entries — and the hard state.

At start the member replays the entries above the backend's consistent index, committed ones
included, exactly as after a crash: the state is the one up to the last committed entry. The
member keeps its ID, its cluster and its log, so all members of a stopped etcd cluster,
converted the same way, form the same cluster again.

Safety: nothing is written into the original. The new tree is built beside it and swapped in
with one ``renameat2(RENAME_EXCHANGE)``; the original then moves to ``<data-dir>.etcd-original``.
An etcd still running on the dir (its WAL ``flock``-ed) is refused. A crash at any step leaves
either the untouched original in place (conversion redone at the next start) or the converted
dir in place (the original recovered to its aside name at the next start).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import struct
from pathlib import Path
from typing import Any, Iterator

import attrs

from securekv.client.boltread import crc32c
from securekv.errors import CorruptionError, UsageError

log = logging.getLogger(__name__)

ASIDE_SUFFIX = ".etcd-original"
_TMP_PREFIX = ".securekv-convert-"
_DONE_MARK = ".securekv-converted"
# walpb.Record types
METADATA, ENTRY, STATE, CRC, SNAPSHOT = 1, 2, 3, 4, 5
_SEGMENT = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_SNAP = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")
V2_METHODS = {b"PUT", b"POST", b"DELETE", b"GET", b"QGET", b"SYNC", b"HEAD"}


# -- protobuf wire format (the few proto2 messages of raftpb/walpb/snappb) --------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of every field; ValueError on malformed input."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire == 1:
            value, pos = bytes(buf[pos:pos + 8]), pos + 8
        elif wire == 5:
            value, pos = bytes(buf[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _msg(buf: bytes) -> dict[int, Any]:
    return {n: v for n, _w, v in fields(buf)}


def _repeated_u64(buf: bytes, number: int) -> list[int]:
    out = []
    for n, wire, value in fields(buf):
        if n != number:
            continue
        if wire == 0:
            out.append(value)
        else:  # packed
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
    return out


# -- etcd's WAL ------------------------------------------------------------------------------
@attrs.define
class EtcdLog:
    member_id: int = 0
    cluster_id: int = 0
    snapshots: list[tuple[int, int]] = attrs.Factory(list)  # (index, term) of walpb.Snapshot records
    entries: list[tuple[int, int, int, bytes]] = attrs.Factory(list)  # (index, term, type, data)
    term: int = 0
    vote: int = 0
    commit: int = 0
    torn_tail: bool = False


def read_wal(wal_dir: Path) -> EtcdLog:
    """Every record of etcd's WAL segments, CRC-checked; a torn tail of the last one is cut."""
    names = sorted(n for n in os.listdir(wal_dir) if _SEGMENT.match(n))
    if not names:
        raise CorruptionError(f"{wal_dir}: no etcd WAL segment (*.wal)")
    result = EtcdLog()
    crc = 0
    for i, name in enumerate(names):
        last = i == len(names) - 1
        data = (wal_dir / name).read_bytes()
        pos = 0
        while pos + 8 <= len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            if length == 0:
                break  # end of records (preallocated zeros)
            size = length & ((1 << 56) - 1)  # the low 56 bits; the top bit flags padding in bits 56-58
            pad = (length >> 56) & 0x7 if length >> 63 else 0
            body = data[pos + 8: pos + 8 + size]
            try:
                if len(body) < size:
                    raise ValueError("truncated record")
                rec = _msg(body)
                kind, rec_crc, payload = rec.get(1, 0), rec.get(2, 0), rec.get(3, b"")
                if kind != CRC:
                    crc = crc32c(payload, crc)
                    if rec_crc != crc:
                        raise ValueError(f"crc mismatch (record {rec_crc:#x}, computed {crc:#x})")
                else:
                    crc = rec_crc
                _record(result, kind, payload)
            except ValueError as exc:
                if last:  # etcd's torn-write repair: the unsynced tail of the last segment
                    result.torn_tail = True
                    break
                raise CorruptionError(f"etcd WAL {wal_dir / name} at offset {pos}: {exc}") from None
            pos += 8 + size + pad
    return result


def _record(log_: EtcdLog, kind: int, payload: bytes) -> None:
    if kind == METADATA:
        meta = _msg(payload)  # etcdserverpb.Metadata{NodeID=1, ClusterID=2}
        log_.member_id, log_.cluster_id = meta.get(1, 0), meta.get(2, 0)
    elif kind == ENTRY:
        e = _msg(payload)  # raftpb.Entry{Type=1, Term=2, Index=3, Data=4}
        index, term, etype, data = e.get(3, 0), e.get(2, 0), e.get(1, 0), e.get(4, b"")
        entries = log_.entries
        if entries and index <= entries[-1][0]:  # a later leader's entry replaces the tail
            first = entries[0][0]
            del entries[max(index - first, 0):]
        entries.append((index, term, etype, data))
    elif kind == STATE:
        hs = _msg(payload)
        if hs:  # an empty hard state record does not erase the last one
            log_.term, log_.vote, log_.commit = hs.get(1, 0), hs.get(2, 0), hs.get(3, 0)
    elif kind == SNAPSHOT:
        snap = _msg(payload)
        log_.snapshots.append((snap.get(1, 0), snap.get(2, 0)))


def read_snap(snap_dir: Path, wal_snapshots: list[tuple[int, int]]) -> tuple[int, int, list[int], list[int]]:
    """(index, term, voters, learners) of the newest ``.snap`` the WAL names (etcd's rule);
    (0, 0, [], []) when there is none (a member that never snapshotted)."""
    wanted = set(wal_snapshots)
    names = sorted((n for n in os.listdir(snap_dir) if _SNAP.match(n)), reverse=True) if snap_dir.is_dir() else []
    for name in names:
        raw = (snap_dir / name).read_bytes()
        try:
            outer = _msg(raw)  # snappb.Snapshot{crc=1, data=2}
            data = outer.get(2, b"")
            if crc32c(data) != outer.get(1, 0):
                log.warning("skipping %s: crc mismatch", name)
                continue
            meta = _msg(_msg(data).get(2, b""))  # raftpb.Snapshot{data=1, metadata=2}
            cs = meta.get(1, b"")
            index, term = meta.get(2, 0), meta.get(3, 0)
        except ValueError as exc:
            log.warning("skipping %s: %s", name, exc)
            continue
        if (index, term) in wanted:
            return index, term, _repeated_u64(cs, 1), _repeated_u64(cs, 2)
    return 0, 0, [], []


# -- entries ---------------------------------------------------------------------------------
def convert_entry(etype: int, data: bytes) -> tuple[int, bytes]:
    """etcd's entry → securekv's (type, data)."""
    from securekv.raft import ConfChange, ConfChangeType, EntryType

    if etype == 1:  # EntryConfChange: raftpb.ConfChange{ID=1, Type=2, NodeID=3, Context=4}
        cc = _msg(data)
        kind, node, context = cc.get(2, 0), cc.get(3, 0), cc.get(4, b"")
        learner = False
        if context:
            try:
                learner = bool(json.loads(context).get("isLearner", False))
            except ValueError:
                pass
        ours = {0: ConfChangeType.ADD_NODE, 1: ConfChangeType.REMOVE_NODE, 3: ConfChangeType.ADD_LEARNER,
                2: ConfChangeType.ADD_LEARNER if learner else ConfChangeType.ADD_NODE}.get(kind)
        if ours is None:
            raise CorruptionError(f"etcd conf change type {kind} is unknown")
        return int(EntryType.CONF_CHANGE), ConfChange(ours, node, context).encode()
    if etype != 0:
        raise CorruptionError(f"etcd entry type {etype} (ConfChangeV2) is not written by etcd 3.4")
    if not data:
        return int(EntryType.NORMAL), b""
    request = _v2_request(data)
    if request is None:
        return int(EntryType.NORMAL), data  # an InternalRaftRequest: securekv's own entries
    return int(EntryType.NORMAL), _from_v2(request)


def _v2_request(data: bytes) -> dict[int, Any] | None:
    """etcdserverpb.Request{ID=1, Method=2, Path=3, Val=4} if ``data`` is a v2 request, raw or
    as InternalRaftRequest.v2 (field 2); else None."""
    try:
        top = _msg(data)
    except ValueError:
        return None
    method = top.get(2)
    if isinstance(method, bytes) and method in V2_METHODS:
        return top
    if isinstance(method, bytes):
        try:
            inner = _msg(method)
        except ValueError:
            return None
        if inner.get(2) in V2_METHODS:
            return inner
    return None


def _from_v2(req: dict[int, Any]) -> bytes:
    """A member's published attributes become securekv's publish entry; any other v2 request
    (cluster version, v2 keys) has no securekv meaning: an empty entry keeps the index."""
    from securekv.server.cluster import publish_entry

    path = req.get(3, b"").decode("utf-8", "replace")
    match = re.fullmatch(r"/0/members/([0-9a-f]+)/attributes", path)
    if req.get(2) == b"PUT" and match:
        try:
            attrs_ = json.loads(req.get(4, b"{}"))
        except ValueError:
            return b""
        return publish_entry(int(match.group(1), 16), name=attrs_.get("name", ""),
                             clientURLs=list(attrs_.get("clientURLs") or []))
    return b""


# -- detection, locking, recovery ------------------------------------------------------------
def is_etcd_data_dir(data_dir: str | os.PathLike[str]) -> bool:
    member = Path(data_dir) / "member"
    return (member / "snap" / "db").is_file() and not (member / "db.sqlite").exists()


def _check_not_running(wal_dir: Path) -> None:
    """etcd write-locks its WAL segments while it runs (an OFD fcntl lock on Linux, flock
    elsewhere); a shared lock we cannot take means it still runs. Nothing is written."""
    for name in sorted(n for n in os.listdir(wal_dir) if _SEGMENT.match(n)):
        fd = os.open(wal_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with etcd's F_OFD_SETLK write lock
            fcntl.lockf(fd, fcntl.LOCK_UN)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except (BlockingIOError, PermissionError):
            raise UsageError(f"{wal_dir} is locked: the etcd member using this data dir is still running; "
                             "stop it before starting securekv on its data dir") from None
        finally:
            os.close(fd)


def finish_interrupted(data_dir: str | os.PathLike[str]) -> None:
    """Complete a conversion a crash interrupted (see the module docstring)."""
    target = Path(data_dir).absolute()
    aside = Path(str(target) + ASIDE_SUFFIX)
    for tmp in target.parent.glob(f".{target.name}{_TMP_PREFIX}*"):
        if is_etcd_data_dir(tmp) and target.exists() and not is_etcd_data_dir(target) and not aside.exists():
            os.rename(tmp, aside)  # crashed after the exchange: the original goes to its aside name
            log.warning("completed an interrupted conversion: the etcd original is now %s", aside)
        elif (tmp / _DONE_MARK).exists() and not target.exists() and aside.exists():
            os.rename(tmp, target)  # fallback path crashed between its two renames
            log.warning("completed an interrupted conversion of %s", target)
        elif not is_etcd_data_dir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)  # a conversion that never finished building


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two directories atomically; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


# -- the conversion --------------------------------------------------------------------------
@attrs.frozen
class Converted:
    data_dir: str
    original: str
    member_id: int
    cluster_id: int
    revisions: int
    leases: int
    consistent_index: int
    snapshot_index: int
    last_index: int
    commit: int


def convert(data_dir: str | os.PathLike[str], wal_dir: str = "") -> Converted:
    """Convert the stopped etcd 3.4 member's data dir in place (atomically, original kept)."""
    from securekv.fsutil import fsync_dir

    target = Path(data_dir).absolute()
    member = target / "member"
    etcd_wal = member / "wal"
    if wal_dir and Path(wal_dir).absolute() != etcd_wal:
        raise UsageError(f"--wal-dir {wal_dir}: converting an etcd data dir needs its WAL in {etcd_wal} (move "
                         "etcd's dedicated WAL directory there, then start securekv without --wal-dir)")
    if not etcd_wal.is_dir():
        raise UsageError(f"{target} has member/snap/db but no member/wal: if etcd used --wal-dir, move that "
                         f"directory to {etcd_wal} first")
    aside = Path(str(target) + ASIDE_SUFFIX)
    if aside.exists():
        raise UsageError(f"{aside} exists (a previous conversion's original?); move it away first")
    _check_not_running(etcd_wal)
    etcd_log = read_wal(etcd_wal)
    if not etcd_log.member_id or not etcd_log.cluster_id:
        raise CorruptionError(f"{etcd_wal}: no member/cluster metadata record")
    snap_index, snap_term, voters, learners = read_snap(member / "snap", etcd_log.snapshots)
    tmp = target.parent / f".{target.name}{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp, 0o700)
    try:
        summary = _build(tmp, member / "snap" / "db", etcd_log, snap_index, snap_term, voters, learners)
        (tmp / _DONE_MARK).write_bytes(b"")
        fsync_dir(tmp)
        fsync_dir(target.parent)
        if _exchange(tmp, target):
            fsync_dir(target.parent)
            os.rename(tmp, aside)
        else:  # two renames; finish_interrupted() completes them after a crash in between
            os.rename(target, aside)
            os.rename(tmp, target)
        fsync_dir(target.parent)
        (target / _DONE_MARK).unlink(missing_ok=True)
    except BaseException:
        if tmp.exists() and not is_etcd_data_dir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Converted(str(target), str(aside), etcd_log.member_id, etcd_log.cluster_id, *summary)


def _build(tmp: Path, bolt_path: Path, etcd_log: EtcdLog, snap_index: int, snap_term: int, voters: list[int],
           learners: list[int]) -> tuple[int, ...]:
    from securekv.client.boltread import BoltFile
    from securekv.raft import ConfChange, ConfChangeType
    from securekv.server.cluster import META_KEY, Member, Membership
    from securekv.server.etcdimport import buckets, import_snapshot
    from securekv.storage import WAL, Backend, HardState, Metadata, SnapshotMarker, WalEntry
    from securekv.storage.backend import WriteBatch

    member_dir = tmp / "member"
    os.mkdir(member_dir, 0o700)
    backend = Backend.open(str(member_dir / "db.sqlite"))
    try:
        with open(bolt_path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            bolt = BoltFile(data)
            problems = bolt.check()
            if problems:
                raise CorruptionError(f"{bolt_path}: bbolt check failed: {'; '.join(problems[:3])}")
            summary = import_snapshot(bolt, backend)
            ci, members, removed = 0, [], []
            for name, items in buckets(bolt):
                if name == b"meta":
                    for k, v in items:
                        if k == b"consistent_index" and len(v) >= 8:
                            ci = struct.unpack_from(">Q", v)[0]
                elif name == b"members":
                    for _k, v in items:
                        members.append(Member.from_dict(json.loads(v)))
                elif name == b"members_removed":
                    removed += [int(k, 16) for k, _v in items]
                else:
                    for _ in items:
                        pass
        membership = Membership(members, removed)
        backend.commit(WriteBatch(meta={META_KEY: membership.encode()}, consistent_index=ci))
        backend.sync()
    finally:
        backend.close()
    entries = [e for e in etcd_log.entries if e[0] > snap_index]
    if entries and entries[0][0] != snap_index + 1:
        raise CorruptionError(f"etcd WAL: entries start at {entries[0][0]}, expected {snap_index + 1} after the "
                              f"snapshot")
    if ci < snap_index:
        raise CorruptionError(f"etcd backend consistent index {ci} is behind its snapshot {snap_index}")
    if snap_index == 0 and not voters:
        # never snapshotted: the founders' conf changes lead the log (as securekv bootstraps)
        for _index, _term, etype, data in entries:
            if etype != 1:
                break
            cc = ConfChange.decode(convert_entry(etype, data)[1])
            if cc.type != ConfChangeType.ADD_NODE:
                break
            voters.append(cc.node_id)
    wal = WAL.create(str(member_dir / "wal"), Metadata(member_id=etcd_log.member_id, cluster_id=etcd_log.cluster_id))
    try:
        wal.save_snapshot(SnapshotMarker(index=snap_index, term=snap_term, voters=voters, learners=learners))
        converted = []
        for index, term, etype, data in entries:
            kind, payload = convert_entry(etype, data)
            converted.append(WalEntry(index, term, payload, kind))
        commit = min(etcd_log.commit, converted[-1].index if converted else snap_index)
        wal.append(converted, hard_state=HardState(etcd_log.term, etcd_log.vote, max(commit, snap_index)))
        wal.sync()
    finally:
        wal.close()
    last = entries[-1][0] if entries else snap_index
    return summary.revisions, summary.leases, ci, snap_index, last, etcd_log.commit


def convert_on_start(data_dir: str, wal_dir: str = "") -> Converted | None:
    """serve's hook: finish an interrupted conversion, then convert an etcd data dir if it is one."""
    with contextlib.suppress(FileNotFoundError):
        finish_interrupted(data_dir)
    if not is_etcd_data_dir(data_dir):
        return None
    return convert(data_dir, wal_dir)


__all__ = ["Converted", "convert", "convert_entry", "convert_on_start", "finish_interrupted", "is_etcd_data_dir",
           "read_snap", "read_wal"]
