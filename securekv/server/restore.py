"""``snapshot restore``: an etcd 3.4 snapshot file → a new securekv data dir (etcdctl 3.4's rules).

The file may come from ``securekv ctl snapshot save`` / ``etcdctl snapshot save`` against
securekv or against the real etcd: both are bbolt files in etcd's buckets, usually followed by
a SHA-256 of everything before it (present when ``size % 512 == 32``, etcd's rule).

Steps, in etcdctl's order and with its messages:

1. the flags: ``--initial-advertise-peer-urls`` and ``--initial-cluster`` parsed as etcd's
   ``types.NewURLs``/``NewURLsMap``, then etcd's ``VerifyBootstrap`` (own name present,
   advertised URLs equal to its entry, no URL twice);
2. ``data-dir "X" exists`` / ``wal-dir "X" exists``: an existing directory is never touched;
3. the file: the trailing hash checked unless ``--skip-hash-check`` (no hash and no flag:
   ``snapshot missing hash but --skip-hash-check=false``; mismatch: ``expected sha256 [..],
   got [..]``), then bbolt's consistency check (``snapshot file integrity check failed. N
   errors found.``, the text of ``snapshot status``; etcdctl restore has no such check);
4. written — unlike etcdctl, which writes in place and leaves a half-made data dir behind on
   failure — into ``.<data-dir>.restore-*`` beside the target: the sqlite backend holding the
   keys, revisions, leases, compaction and alarms (``etcdimport``), and the WAL a fresh
   ``securekv serve --initial-cluster-state new`` writes for these flags
   (``bootstrap.create_member_wal``); fsynced, then renamed into place. On any error the
   temporary directories (and any parent directory created for them) are removed.

The restored member then starts as a founder of a new cluster (same ``--name``,
``--initial-cluster``, ``--initial-cluster-token``, ``--initial-advertise-peer-urls``):
it applies the bootstrap conf changes on top of the restored backend, exactly as a new member
applies them on top of an empty one. Leases are restored; the new leader renews them with
their TTL (plus an election timeout) when it is promoted, as etcd does.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import secrets
import shutil
import struct
from typing import Any, BinaryIO, Callable

import attrs

from securekv.client.gourl import check_peer_urls
from securekv.client.printer import go_quote
from securekv.errors import DiskFullError
from securekv.fsutil import fsync_dir

DIGEST_LEN = 32
DEFAULT_NAME = "default"
DEFAULT_PEER_URLS = "http://localhost:2380"
DEFAULT_INITIAL_CLUSTER = f"{DEFAULT_NAME}={DEFAULT_PEER_URLS}"  # etcdctl: from "default", not --name
DEFAULT_TOKEN = "etcd-cluster"

Log = Callable[..., None]  # log(msg, **fields)


class RestoreError(Exception):
    """What etcdctl would print after ``Error: ``."""


@attrs.frozen
class RestoreConfig:
    snapshot_path: str
    name: str = DEFAULT_NAME
    data_dir: str = ""  # "" -> "<name>.etcd"
    wal_dir: str = ""  # "" -> "<data-dir>/member/wal"
    peer_urls: str = DEFAULT_PEER_URLS  # comma separated, as the flag
    initial_cluster: str = DEFAULT_INITIAL_CLUSTER
    initial_cluster_token: str = DEFAULT_TOKEN
    skip_hash_check: bool = False


@attrs.frozen
class RestoreResult:
    data_dir: str
    wal_dir: str
    member_id: int
    cluster_id: int
    revisions: int
    leases: int
    compact_revision: int


# -- the flags (pure) --------------------------------------------------------------------------
def parse_urls_map(text: str) -> dict[str, list[str]]:
    """etcd's ``types.NewURLsMap``: ``name=url,...`` (a name may repeat), every URL checked."""
    by_name: dict[str, list[str]] = {}
    for item in text.split(","):
        if item == "":
            continue
        name, _sep, url = item.partition("=")
        by_name.setdefault(name, []).append(url)
    for urls in by_name.values():
        check_urls(urls)
    return {name: [u.strip() for u in urls] for name, urls in by_name.items()}


def check_urls(urls: list[str]) -> None:
    try:
        check_peer_urls(urls)
    except ValueError as exc:
        raise RestoreError(str(exc)) from None


def urls_map_string(by_name: dict[str, list[str]]) -> str:
    """``types.URLsMap.String()``: ``name=url`` pairs sorted, comma separated."""
    return ",".join(sorted(f"{name}={u}" for name, urls in by_name.items() for u in urls))


def _go_strings(values: list[str]) -> str:
    return "[" + " ".join(go_quote(v) for v in values) + "]"


def verify_bootstrap(name: str, peer_urls: list[str], cluster: dict[str, list[str]]) -> None:
    """etcd's ``ServerConfig.VerifyBootstrap`` with its messages.

    URLs are compared as strings, as ``securekv serve`` compares them; etcd would also resolve
    DNS names (not ``localhost`` nor IP addresses) before declaring a mismatch.
    """
    mine = cluster.get(name)
    if not mine:
        raise RestoreError(f"couldn't find local name {go_quote(name)} in the initial cluster configuration")
    urls, ap = sorted(mine), sorted(peer_urls)
    if urls != ap:
        if len(urls) != len(ap):
            detail = f"len({_go_strings(ap)}) != len({_go_strings(urls)})"
        else:
            a, b = next((x, y) for x, y in zip(ap, urls) if x != y)
            detail = f"resolved urls: {go_quote(a)} != {go_quote(b)}"
        missing = [u for u in dict.fromkeys(urls) if u not in ap]
        if missing:
            raise RestoreError(f"--initial-cluster has {','.join(f'{name}={u}' for u in missing)} but missing from "
                               f"--initial-advertise-peer-urls={','.join(ap)} ({detail})")
        extra = [u for u in dict.fromkeys(ap) if u not in urls]
        own = urls_map_string({name: ap})
        if extra:
            raise RestoreError(f"--initial-advertise-peer-urls has {','.join(extra)} but missing from "
                               f"--initial-cluster={own}")
        raise RestoreError(f"failed to resolve {','.join(ap)} to match --initial-cluster={own} ({detail})")
    seen: set[str] = set()
    for urls_of in cluster.values():
        for u in urls_of:
            if u in seen:
                raise RestoreError(f"initial cluster {urls_map_string(cluster)} has duplicate url")
            seen.add(u)


def go_bytes(data: bytes) -> str:
    """Go's ``%v`` of a byte slice: ``[1 2 3]``."""
    return "[" + " ".join(str(b) for b in data) + "]"


def has_checksum(size: int) -> bool:
    """etcd's rule: 512 is the smallest sector size, and the hash is 32 bytes."""
    return size % 512 == DIGEST_LEN


# -- the file ----------------------------------------------------------------------------------
def _os_error(op: str, path: str, exc: OSError) -> RestoreError:
    text = exc.strerror or str(exc)
    return RestoreError(f"{op} {path}: {text[:1].lower() + text[1:]}")


def verify_file(fh: Any, path: str, size: int, skip_hash_check: bool) -> None:
    """etcdctl's hash rules on an open snapshot file."""
    if size < DIGEST_LEN:
        raise RestoreError(f"seek {path}: invalid argument")
    if not has_checksum(size):
        if not skip_hash_check:
            raise RestoreError("snapshot missing hash but --skip-hash-check=false")
        return
    if skip_hash_check:
        return
    fh.seek(size - DIGEST_LEN)
    want = fh.read(DIGEST_LEN)
    fh.seek(0)
    h = hashlib.sha256()
    left = size - DIGEST_LEN
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            raise RestoreError(f"read {path}: unexpected EOF")
        h.update(chunk)
        left -= len(chunk)
    got = h.digest()
    if got != want:
        raise RestoreError(f"expected sha256 {go_bytes(want)}, got {go_bytes(got)}")


def open_bolt(data: Any) -> Any:
    """The bbolt file, checked as ``snapshot status`` checks it."""
    from securekv.client.boltread import BoltError, BoltFile

    try:
        bolt = BoltFile(data)
        problems = bolt.check()
    except BoltError as exc:
        raise RestoreError(str(exc)) from None
    except (struct.error, ValueError, OverflowError) as exc:
        raise RestoreError(f"invalid database ({exc})") from None
    if problems:
        raise RestoreError(f"snapshot file integrity check failed. {len(problems)} errors found.\n"
                           + "\n".join(problems))
    return bolt


# -- directories -------------------------------------------------------------------------------
def _make_parents(path: str) -> list[str]:
    """``mkdir -p`` of ``path``'s parent; returns the directories created (deepest last)."""
    created: list[str] = []
    parent = os.path.dirname(os.path.abspath(path))
    todo = []
    while not os.path.isdir(parent):
        todo.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    for d in reversed(todo):
        os.mkdir(d, 0o700)
        created.append(d)
    return created


def _temp_beside(path: str) -> str:
    target = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(target),
                       f".{os.path.basename(target)}.restore-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp, 0o700)
    return tmp


def _inside(child: str, parent: str) -> str | None:
    """``child`` relative to ``parent`` if it lies inside it."""
    c, p = os.path.abspath(child), os.path.abspath(parent)
    rel = os.path.relpath(c, p)
    return None if rel == os.curdir or rel.startswith(os.pardir) else rel


# -- restore -----------------------------------------------------------------------------------
def restore(cfg: RestoreConfig, log: Log | None = None,
            open_file: Callable[[str, str], BinaryIO] | None = None) -> RestoreResult:
    """Build the data dir; RestoreError (etcdctl's text) when refused, nothing left behind.

    ``open_file(path, data_dir)`` supplies the plaintext snapshot as an open file (an encrypted
    snapshot is decrypted and authenticated there, beside the data dir, before anything here is
    written); by default the file at ``path`` is opened as is.
    """
    from securekv.server.bootstrap import cluster_ids
    from securekv.server.cluster import initial_members, validate_bootstrap

    emit: Log = log or (lambda msg, **fields: None)
    check_urls(cfg.peer_urls.split(","))
    peer_urls = [u.strip() for u in cfg.peer_urls.split(",")]
    cluster = parse_urls_map(cfg.initial_cluster)
    verify_bootstrap(cfg.name, peer_urls, cluster)
    pairs = [(name, u) for name, urls in cluster.items() for u in urls]
    members = initial_members(pairs, cfg.initial_cluster_token)
    try:
        validate_bootstrap(cfg.name, peer_urls, members)  # what `serve` will check with the same flags
    except Exception as exc:
        raise RestoreError(str(exc)) from None
    member_id, cluster_id = cluster_ids(cfg.name, pairs, cfg.initial_cluster_token)

    data_dir = cfg.data_dir or f"{cfg.name}.etcd"
    if os.path.exists(data_dir):
        raise RestoreError(f"data-dir {go_quote(data_dir)} exists")
    wal_dir = cfg.wal_dir or os.path.join(data_dir, "member", "wal")
    if cfg.wal_dir and os.path.exists(cfg.wal_dir):
        raise RestoreError(f"wal-dir {go_quote(cfg.wal_dir)} exists")
    shown = {"path": cfg.snapshot_path, "wal-dir": cfg.wal_dir or os.path.normpath(wal_dir), "data-dir": data_dir}
    emit("restoring snapshot", **shown)

    path = cfg.snapshot_path
    try:
        fh = open_file(path, data_dir) if open_file is not None else open(path, "rb")
    except OSError as exc:
        raise _os_error("open", path, exc) from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        verify_file(fh, path, size, cfg.skip_hash_check)
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise RestoreError(f"invalid database ({exc})") from None
        with data:
            bolt = open_bolt(data)
            summary = _write_dirs(bolt, data_dir, cfg.wal_dir, member_id, cluster_id, members, emit)
    if summary.compact_revision > 0:
        emit("restored last compact revision", **{"meta-bucket-name": "meta",
                                                  "meta-bucket-name-key": "finishedCompactRev",
                                                  "restored-compact-revision": summary.compact_revision})
    for m in sorted(members, key=lambda m: m.id):
        emit("added member", **{"cluster-id": f"{cluster_id:x}", "local-member-id": "0",
                                "added-peer-id": f"{m.id:x}", "added-peer-peer-urls": list(m.peer_urls)})
    emit("restored snapshot", **shown)
    return RestoreResult(data_dir, wal_dir, member_id, cluster_id, summary.revisions, summary.leases,
                         summary.compact_revision)


def _write_dirs(bolt: Any, data_dir: str, wal_flag: str, member_id: int, cluster_id: int, members: list,
                emit: Log) -> Any:
    from securekv.server.bootstrap import create_member_wal
    from securekv.server.cluster import META_KEY, Member, Membership
    from securekv.server.etcdimport import SnapshotImportError, import_snapshot
    from securekv.storage import Backend, WriteBatch

    created: list[str] = []
    temps: list[str] = []
    placed: list[str] = []
    try:
        created += _make_parents(data_dir)
        tmp_data = _temp_beside(data_dir)
        temps.append(tmp_data)
        member_dir = os.path.join(tmp_data, "member")
        os.mkdir(member_dir, 0o700)
        backend = Backend.open(os.path.join(member_dir, "db.sqlite"))
        try:
            summary = import_snapshot(bolt, backend, on_resume=lambda f, s: emit(
                "resume scheduled compaction", **{"meta-bucket-name": "meta",
                                                  "meta-bucket-name-key": "scheduledCompactRev",
                                                  "scheduled-compact-revision": s}))
            # The founders' membership as their bootstrap conf changes (1..n) leave it: the WAL
            # gets a snapshot marker at n (create_member_wal(restored=True)).
            founders = Membership(Member(m.id, m.name, m.peer_urls) for m in members)
            backend.commit(WriteBatch(meta={META_KEY: founders.encode()}, consistent_index=len(members)))
            backend.sync()
        except SnapshotImportError as exc:
            raise RestoreError(str(exc)) from None
        finally:
            backend.close()
        separate = None
        if not wal_flag:
            tmp_wal = os.path.join(member_dir, "wal")
        elif (rel := _inside(wal_flag, data_dir)) is not None:
            tmp_wal = os.path.join(tmp_data, rel)
            os.makedirs(os.path.dirname(tmp_wal), mode=0o700, exist_ok=True)
        else:
            created += _make_parents(wal_flag)
            holder = _temp_beside(wal_flag)
            temps.append(holder)
            tmp_wal = os.path.join(holder, "wal")
            separate = holder
        create_member_wal(tmp_wal, member_id, cluster_id, members, restored=True)
        fsync_dir(member_dir)
        fsync_dir(tmp_data)
        if separate is not None:
            if os.path.exists(wal_flag):
                raise RestoreError(f"wal-dir {go_quote(wal_flag)} exists")
            os.rename(tmp_wal, wal_flag)
            placed.append(wal_flag)
            fsync_dir(os.path.dirname(os.path.abspath(wal_flag)))
        if os.path.exists(data_dir):
            raise RestoreError(f"data-dir {go_quote(data_dir)} exists")
        os.rename(tmp_data, data_dir)
        temps.remove(tmp_data)
        fsync_dir(os.path.dirname(os.path.abspath(data_dir)))
        return summary
    except BaseException as exc:
        for d in placed:
            shutil.rmtree(d, ignore_errors=True)
        for d in temps:
            shutil.rmtree(d, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        if isinstance(exc, OSError) and exc.filename is not None:
            raise _os_error("restore", os.fspath(exc.filename), exc) from None
        if isinstance(exc, DiskFullError) or isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RestoreError(f"restore into {go_quote(data_dir)}: no space left on device ({exc}); "
                               "nothing was left behind") from None
        raise
    finally:
        for d in temps:
            if d != data_dir:
                shutil.rmtree(d, ignore_errors=True)


__all__ = ["RestoreConfig", "RestoreError", "RestoreResult", "restore", "verify_bootstrap"]
