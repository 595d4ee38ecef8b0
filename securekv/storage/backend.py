"""The applied state on disk: a sqlite3 database of MVCC revisions, leases and metadata.

Pure data, no MVCC logic: the server keeps the store's key index in memory and reads values
and history from here on demand (:class:`BackendReader`, a second connection), and writes each
batch of applied entries as ONE transaction that also carries the applied ("consistent")
index, so a restart replays only WAL entries after it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import sqlite3
import threading
import zlib
from typing import Callable, Iterator, Sequence

import attrs

from ..errors import CorruptionError, DiskFullError, UsageError
from ..fsutil import create_temp, fsync_dir

SCHEMA_VERSION = 1
CONSISTENT_INDEX = "consistent_index"
TABLES = frozenset({"revision", "lease", "item", "meta"})
_PAGE_RE = re.compile(r"\bpage (\d+)", re.IGNORECASE)


def _code(exc: BaseException) -> int | None:
    """sqlite's primary result code of an error it raised (None for anything else)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_disk_full(exc: BaseException, directory: str | None = None) -> bool:
    """SQLITE_FULL; or an I/O error while the file system of ``directory`` has no room (sqlite
    reports a failed creation of its -shm/-wal files on a full disk as a disk I/O error)."""
    code = _code(exc)
    if code == sqlite3.SQLITE_FULL:
        return True
    if directory is None or code not in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
        return False
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


def is_corrupt(exc: BaseException) -> bool:
    return _code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def locate_corruption(path: str, limit: int = 8) -> str:
    """Where sqlite's own check finds damage in the database at ``path``: byte offsets, pages.

    sqlite has no per-page checksums; what it can find is structural damage (a btree page that
    is not one, a cell past the page, a broken free list, a bad header). Its check names pages;
    the byte offset of page N is (N - 1) x page size.
    """
    try:
        check = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"byte offset 0 (the file header): {exc}"
    try:
        try:
            page_size = int(check.execute("PRAGMA page_size").fetchone()[0])
            rows = [r[0] for r in check.execute(f"PRAGMA quick_check({int(limit)})")]
        except sqlite3.DatabaseError as exc:
            return f"byte offset 0 (the file header or schema page 1): {exc}"
    finally:
        check.close()
    lines = [line for r in rows for line in str(r).splitlines()
             if line and line != "ok" and not line.startswith("*** in database")]
    if not lines:
        return "no damage found by sqlite's check (the error came from a read it retried)"
    # Pages "never used" are the consequence (the damaged page's children became unreachable).
    problems = [line for line in lines if "never used" not in line] or lines
    pages = list(dict.fromkeys(int(m) for r in problems for m in _PAGE_RE.findall(r)))
    where = ", ".join(f"byte offset {(p - 1) * page_size} (page {p})" for p in pages[:limit]) \
        or "an unknown page"
    return f"{where}: " + "; ".join(problems[:3])


def corruption_error(path: str, exc: BaseException) -> CorruptionError:
    return CorruptionError(f"backend database {path} is corrupt at {locate_corruption(path)} "
                           f"(sqlite: {exc})")


def disk_full_error(path: str, exc: BaseException, what: str) -> DiskFullError:
    return DiskFullError(f"backend database {path}: disk full while {what} ({exc}); nothing "
                         "acknowledged is lost (the WAL holds it): free space and restart")

#: Item buckets holding a member's own derived data (the persisted key index: see
#: securekv/mvcc/checkpoint.py), written at different moments on each member.
LOCAL_BUCKETS = ("kvindex", "kvindex_dropped")
#: Rows deleted per transaction when a batch deletes more (see Backend.commit).
DELETE_CHUNK = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revision (
    main INTEGER NOT NULL, sub INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    tombstone INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (main, sub)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lease (
    id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, data BLOB NOT NULL DEFAULT x'');
CREATE TABLE IF NOT EXISTS item (
    bucket TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (bucket, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


@attrs.frozen(slots=True)
class Revision:
    """One row per MVCC revision: ``value`` is the serialized KeyValue (opaque here)."""

    main: int
    sub: int
    key: bytes
    value: bytes
    tombstone: bool = False


@attrs.frozen(slots=True)
class Lease:
    id: int
    ttl: int
    data: bytes = b""


MetaValue = int | bytes


@attrs.define
class WriteBatch:
    """Everything one transaction changes. Deletes are applied before puts."""

    puts: list[Revision] = attrs.Factory(list)
    # (main, sub) pairs; any sequence (a compaction passes a packed one: securekv.mvcc.RevPairs)
    deletes: Sequence[tuple[int, int]] = attrs.Factory(list)
    lease_puts: list[Lease] = attrs.Factory(list)
    lease_deletes: list[int] = attrs.Factory(list)
    item_puts: list[tuple[str, bytes, bytes]] = attrs.Factory(list)
    item_deletes: list[tuple[str, bytes]] = attrs.Factory(list)
    meta: dict[str, MetaValue] = attrs.Factory(dict)
    consistent_index: int | None = None

    def put(self, rev: Revision) -> None:
        self.puts.append(rev)

    def delete(self, main: int, sub: int) -> None:
        self.deletes.append((main, sub))  # type: ignore[attr-defined]

    def put_lease(self, lease: Lease) -> None:
        self.lease_puts.append(lease)

    def delete_lease(self, lease_id: int) -> None:
        self.lease_deletes.append(lease_id)

    def put_item(self, bucket: str, key: bytes, value: bytes) -> None:
        self.item_puts.append((bucket, key, value))

    def delete_item(self, bucket: str, key: bytes) -> None:
        self.item_deletes.append((bucket, key))

    def set_meta(self, name: str, value: MetaValue) -> None:
        self.meta[name] = value


class Backend:
    """One sqlite3 database file. Not thread-safe: one caller at a time (any thread)."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> Backend:
        """Open or create the database (file mode 0600, directory 0700)."""
        path = os.path.abspath(os.fspath(path))
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise UsageError(f"unknown sqlite synchronous mode {synchronous!r}")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        created = not os.path.exists(path)
        if created:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CorruptionError(f"cannot open backend database {path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute("PRAGMA foreign_keys=OFF")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise UsageError(f"backend database {path} has schema version {version}; this securekv "
                                 f"reads version {SCHEMA_VERSION} (was it written by a newer release?). "
                                 "Nothing was changed.")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version != SCHEMA_VERSION or not TABLES <= tables:
                # Only a new (or half-created) database is written here; opening a current one
                # writes nothing beyond sqlite's own -wal/-shm files.
                conn.executescript("BEGIN;" + _SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_disk_full(exc, os.path.dirname(path)):
                raise disk_full_error(path, exc, "opening it") from None
            if is_corrupt(exc):
                raise corruption_error(path, exc) from None
            raise CorruptionError(f"backend database {path} is unreadable: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if created:
            fsync_dir(os.path.dirname(path))
        return cls(path, conn)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UsageError(f"backend {self.path} is closed")
        return self._conn

    # -- writes ----------------------------------------------------------------------------
    def commit(self, batch: WriteBatch) -> None:
        """Apply ``batch`` as one transaction: all of it or (on any error) none of it.

        Except a batch deleting more than ``DELETE_CHUNK`` rows (a large compaction): its item
        rows go first, then the deletions in transactions of ``DELETE_CHUNK`` rows (so sqlite's
        WAL is recycled between them instead of growing by the whole table), then the rest with
        the meta and the applied index. A crash in between leaves rows of a compaction whose
        entry is not applied yet; replaying it deletes the rest (deleting is idempotent).
        """
        self.commit_all((batch,))

    def commit_all(self, batches: Sequence[WriteBatch]) -> None:
        """Apply ``batches`` in order, as few transactions as possible: one for all of them
        unless one is a large compaction (split as :meth:`commit` says).

        Why: the node gathers a batch per Raft Ready for ``--backend-batch-interval``; a
        sqlite transaction each (locks, WAL frames, commit) was most of the committer thread's
        work and its GIL traffic, paid once per lone put. One transaction is also atomic for
        the whole group, as etcd's backend commits its batch transaction.
        """
        group: list[WriteBatch] = []
        for batch in batches:
            if len(batch.deletes) <= DELETE_CHUNK:
                group.append(batch)
                continue
            if group:
                self._transaction(group)
                group = []
            self._transaction([WriteBatch(item_puts=batch.item_puts, item_deletes=batch.item_deletes)])
            it = iter(batch.deletes)
            while chunk := list(itertools.islice(it, DELETE_CHUNK)):
                self._transaction([WriteBatch(deletes=chunk)])
            self._transaction([WriteBatch(puts=batch.puts, lease_puts=batch.lease_puts,
                                          lease_deletes=batch.lease_deletes, meta=batch.meta,
                                          consistent_index=batch.consistent_index)])
        if group:
            self._transaction(group)

    def _transaction(self, batches: list[WriteBatch]) -> None:
        """One transaction: each batch's rows in order (deletes before puts within a batch);
        the meta rows once at the end, each name with its last value."""
        conn = self.conn
        meta: dict[str, MetaValue] = {}
        for batch in batches:
            meta.update(batch.meta)
            if batch.consistent_index is not None:
                meta[CONSISTENT_INDEX] = batch.consistent_index
        for name, value in meta.items():
            if not isinstance(value, (int, bytes)) or isinstance(value, bool):
                raise UsageError(f"meta value for {name!r} must be int or bytes, "
                                 f"not {type(value).__name__}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for batch in batches:
                if batch.deletes:
                    conn.executemany("DELETE FROM revision WHERE main=? AND sub=?", batch.deletes)
                if batch.puts:
                    conn.executemany(
                        "INSERT OR REPLACE INTO revision(main, sub, key, value, tombstone) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(r.main, r.sub, bytes(r.key), bytes(r.value), int(r.tombstone))
                         for r in batch.puts])
                if batch.lease_deletes:
                    conn.executemany("DELETE FROM lease WHERE id=?", [(i,) for i in batch.lease_deletes])
                if batch.lease_puts:
                    conn.executemany("INSERT OR REPLACE INTO lease(id, ttl, data) VALUES (?, ?, ?)",
                                     [(x.id, x.ttl, bytes(x.data)) for x in batch.lease_puts])
                if batch.item_deletes:
                    conn.executemany("DELETE FROM item WHERE bucket=? AND key=?",
                                     [(b, bytes(k)) for b, k in batch.item_deletes])
                if batch.item_puts:
                    conn.executemany("INSERT OR REPLACE INTO item(bucket, key, value) VALUES (?, ?, ?)",
                                     [(b, bytes(k), bytes(v)) for b, k, v in batch.item_puts])
            if meta:
                conn.executemany("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                                 list(meta.items()))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:  # sqlite may already have rolled back (e.g. disk full)
                conn.execute("ROLLBACK")
            if is_disk_full(exc, os.path.dirname(self.path)):
                raise disk_full_error(self.path, exc, "committing") from exc
            if is_corrupt(exc):
                raise corruption_error(self.path, exc) from exc
            raise

    @contextlib.contextmanager
    def batch(self) -> Iterator[WriteBatch]:
        """Collect changes; commit them in one transaction when the block exits normally."""
        wb = WriteBatch()
        yield wb
        self.commit(wb)

    def sync(self) -> None:
        """Make every committed transaction durable (checkpoint the sqlite WAL, with fsyncs)."""
        try:
            busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc, os.path.dirname(self.path)):
                raise disk_full_error(self.path, exc, "checkpointing") from exc
            if is_corrupt(exc):
                raise corruption_error(self.path, exc) from exc
            raise
        if busy:
            raise UsageError(f"backend {self.path}: checkpoint blocked by another connection")

    # -- reads -----------------------------------------------------------------------------
    def iter_revisions(self, min_main: int = 0) -> Iterator[Revision]:
        """All revisions with ``main >= min_main`` in (main, sub) order, streamed."""
        cur = self.conn.execute(
            "SELECT main, sub, key, value, tombstone FROM revision WHERE main >= ? "
            "ORDER BY main, sub", (min_main,))
        for main, sub, key, value, tomb in cur:
            yield Revision(main, sub, key, value, bool(tomb))

    def iter_leases(self) -> Iterator[Lease]:
        for lid, ttl, data in self.conn.execute("SELECT id, ttl, data FROM lease ORDER BY id"):
            yield Lease(lid, ttl, data)

    def iter_items(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        cur = self.conn.execute("SELECT key, value FROM item WHERE bucket=? ORDER BY key",
                                (bucket,))
        yield from cur

    def get_meta(self, name: str, default: MetaValue | None = None) -> MetaValue | None:
        row = self.conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return default if row is None else row[0]

    def consistent_index(self) -> int:
        value = self.get_meta(CONSISTENT_INDEX, 0)
        assert isinstance(value, int)
        return value

    def revision_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM revision").fetchone()[0])

    # -- maintenance -----------------------------------------------------------------------
    def _pragma(self, name: str) -> int:
        return int(self.conn.execute(f"PRAGMA {name}").fetchone()[0])

    def size_bytes(self) -> int:
        """Allocated size of the database (pages x page size)."""
        return self._pragma("page_count") * self._pragma("page_size")

    def size_in_use(self) -> int:
        """Size minus free pages: what a defragment would shrink the file to (about)."""
        return (self._pragma("page_count") - self._pragma("freelist_count")) * self._pragma("page_size")

    def defragment(self) -> None:
        """Rewrite the database without free pages (VACUUM), then make it durable."""
        self.conn.execute("VACUUM")
        self.sync()

    def backup_to(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent point-in-time copy to ``path`` (temp + fsync + rename)."""
        path = os.path.abspath(os.fspath(path))
        tmp = ""
        try:
            fd, tmp_path = create_temp(os.path.dirname(path), f".{os.path.basename(path)}.tmp-")
            os.close(fd)
            tmp = str(tmp_path)
            dest = sqlite3.connect(tmp)
            try:
                self.conn.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException as exc:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if is_disk_full(exc, os.path.dirname(path)) or (
                    isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
                raise DiskFullError(f"cannot copy the backend to {path}: no space left on device") from exc
            raise
        fsync_dir(os.path.dirname(path))

    @staticmethod
    def restore(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
        """Replace the (closed) database at ``path`` by the copy ``source`` atomically.

        For installing a snapshot received from a leader or `snapshot restore`. ``source`` is
        checked (sqlite integrity, our schema) before anything at ``path`` changes.
        """
        source, path = os.fspath(source), os.path.abspath(os.fspath(path))
        try:
            check = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
            try:
                ok = check.execute("PRAGMA quick_check").fetchone()[0]
                version = check.execute("PRAGMA user_version").fetchone()[0]
                tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
            finally:
                check.close()
        except sqlite3.DatabaseError as exc:
            raise CorruptionError(f"snapshot database {source} is unreadable at "
                                  f"{locate_corruption(source)}") from exc
        if ok != "ok":
            raise CorruptionError(f"snapshot database {source} is corrupt at {locate_corruption(source)}")
        if version != SCHEMA_VERSION or not {"revision", "meta"} <= tables:
            raise CorruptionError(f"snapshot database {source} failed its check "
                                  f"(schema version {version}, tables {sorted(tables)})")
        tmp = ""
        try:
            with open(source, "rb") as src:
                fd, tmp_path = create_temp(os.path.dirname(path), f".{os.path.basename(path)}.tmp-")
                tmp = str(tmp_path)
                try:
                    while chunk := src.read(1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except BaseException as exc:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)  # the old database at `path` is untouched
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"cannot install snapshot {source} as {path}: no space left on "
                                    "device; the current database is unchanged") from exc
            raise
        for suffix in ("-wal", "-shm"):  # the old database's sqlite WAL must not be replayed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path))

    def snapshot_bytes(self) -> bytes:
        """The whole database as one consistent byte string (for small stores and tests)."""
        return self.conn.serialize()

    def content_hash(self, skip_meta: tuple[str, ...] = (CONSISTENT_INDEX,),
                     skip_buckets: tuple[str, ...] = LOCAL_BUCKETS) -> int:
        """crc32 over every row of every table in key order (meta names in ``skip_meta`` and
        item buckets in ``skip_buckets`` left out: the applied index and the persisted key
        index differ between members holding the same data)."""
        crc = 0
        conn = self.conn
        for table, order in (("revision", "main, sub"), ("lease", "id"),
                             ("item", "bucket, key"), ("meta", "name")):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                if table == "meta" and row[0] in skip_meta:
                    continue
                if table == "item" and row[0] in skip_buckets:
                    continue
                crc = zlib.crc32(repr(row).encode(), crc)
        return crc

    def reader(self, *, cache_kib: int = 8192) -> BackendReader:
        """A second, read-only connection for on-demand reads of committed rows (values and
        history) from the thread that owns the store, while commits run in a worker."""
        return BackendReader.open(self.path, cache_kib=cache_kib)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackendReader:
    """Reads committed revision rows by primary key: the MVCC store's ``RecordReader``.

    Its own connection, so reads never interleave with the writer's transaction on the
    committing thread. In WAL mode every statement sees the latest committed state without
    blocking the writer. Each call runs its statements to completion (no cursor stays open), so
    a checkpoint (``Backend.sync``) is never held up by a half-read result.
    """

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self.rows_read = 0
        #: Called with the CorruptionError before it is raised, when sqlite finds damage while
        #: reading: the server stops the member (a read must never be served around damage).
        self.on_corrupt: Callable[[CorruptionError], None] | None = None

    def _damaged(self, exc: sqlite3.DatabaseError) -> BaseException:
        if not is_corrupt(exc):
            return exc
        error = corruption_error(self.path, exc)
        if self.on_corrupt is not None:
            self.on_corrupt(error)
        return error

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache_kib: int = 8192) -> BackendReader:
        path = os.path.abspath(os.fspath(path))
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        except sqlite3.Error as exc:
            raise CorruptionError(f"cannot open backend database {path} for reading: {exc}") from None
        return cls(path, conn)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UsageError(f"backend reader {self.path} is closed")
        return self._conn

    def get_many(self, refs: Sequence[tuple[int, int]]) -> list[bytes | None]:
        try:
            return self._get_many(refs)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _get_many(self, refs: Sequence[tuple[int, int]]) -> list[bytes | None]:
        if not refs:
            return []
        mains = sorted({m for m, _ in refs})
        found: dict[tuple[int, int], bytes] = {}
        conn = self.conn
        if mains[-1] - mains[0] < 2 * len(mains):
            # Dense (keys written in key order, as a bulk load does): one range scan of the
            # primary key beats a probe per revision.
            rows = conn.execute("SELECT main, sub, value FROM revision WHERE main BETWEEN ? AND ?",
                                (mains[0], mains[-1])).fetchall()
            found = {(main, sub): value for main, sub, value in rows}
        else:
            for i in range(0, len(mains), 900):
                part = mains[i : i + 900]
                sql = f"SELECT main, sub, value FROM revision WHERE main IN ({','.join('?' * len(part))})"
                for main, sub, value in conn.execute(sql, part).fetchall():
                    found[(main, sub)] = value
        self.rows_read += len(refs)
        return [found.get((m, s)) for m, s in refs]

    def scan(self, start: tuple[int, int], last: int, limit: int) -> list[Revision]:
        try:
            rows = self.conn.execute(
                "SELECT main, sub, key, value, tombstone FROM revision "
                "WHERE (main, sub) >= (?, ?) AND main <= ? ORDER BY main, sub LIMIT ?",
                (start[0], start[1], last, limit)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        self.rows_read += len(rows)
        return [Revision(m, s, k, v, bool(t)) for m, s, k, v, t in rows]

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class IntegrityCheck:
    """sqlite's ``quick_check`` of a whole database on its own read-only connection.

    The store no longer reads every row at start (its index comes from a checkpoint), so damage
    in a page nothing has read yet would go unnoticed; the server runs this once after each
    start in a worker thread and stops the member if it finds any. ``interrupt()`` (from any
    thread) ends a check in progress, e.g. when the member stops.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._conn: sqlite3.Connection | None = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                                                check_same_thread=False)
        self._lock = threading.Lock()  # sqlite3_interrupt must never meet a closing connection

    def run(self) -> CorruptionError | None:
        """None if sqlite finds nothing wrong (or the check was interrupted), else the error
        naming the file, the page and the byte offset."""
        assert self._conn is not None
        try:
            try:
                rows = [r[0] for r in self._conn.execute("PRAGMA quick_check(1)")]
            except sqlite3.DatabaseError as exc:
                if _code(exc) == sqlite3.SQLITE_INTERRUPT:
                    return None
                if is_corrupt(exc):
                    return corruption_error(self.path, exc)
                raise
        finally:
            with self._lock:
                conn, self._conn = self._conn, None
                conn.close()
        if rows == ["ok"]:
            return None
        return CorruptionError(f"backend database {self.path} is corrupt at {locate_corruption(self.path)}")

    def interrupt(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.interrupt()
