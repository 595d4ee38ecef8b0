"""Scheduled encrypted backups taken by the member itself (``serve --backup-dir``).

Every ``--backup-interval`` the member writes ``<backup-dir>/securekv-backup-<UTC time>.snap``:
the etcd-format snapshot the Snapshot RPC streams (the same builder: a consistent sqlite copy
under the backend lock — commits wait for the copy, client requests do not, since they are
acknowledged after the WAL fsync and apply — converted to bbolt in a worker thread), encrypted
with ``--backup-encryption-key-file`` (re-read for every backup, so a rotated key needs no
restart), written atomically (temp + fsync + rename + directory fsync) and rotated to the newest
``--backup-retain``. One backup at a time: a trio lock in the member, and the directory's
``flock`` against other writers (another member, the systemd timer). Before each backup the
free space is checked against the expected size (the last backup's size or the backend's,
whichever is larger): the copy and the bbolt file in the member directory, the encrypted file
in the backup directory. A failure is one log line (never key material) and a metric; the
member goes on serving.

When due: one interval after the newest backup already in the directory (a restarting member
does not reset the clock), and at the earliest ``min(interval, 60 s)`` after start-up.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from securekv.config.model import BackupSettings
from securekv.errors import UsageError
from securekv.snapcrypt import backupdir
from securekv.snapcrypt.files import encrypt_bolt_file
from securekv.snapcrypt.format import SnapshotMeta
from securekv.snapcrypt.keys import read_key_file

log = logging.getLogger("securekv.backup")

FIRST_BACKUP_DELAY = 60.0  # at most this long after start-up when no backup exists yet
SPACE_MARGIN = 1.1  # the expected size is an estimate: ask for 10 % more


@attrs.frozen
class BackupResult:
    path: Path
    size: int  # bytes of the encrypted file
    revision: int
    seconds: float


class BackupMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.last_success = Gauge("securekv_backup_last_success_timestamp_seconds",
                                  "Unix time of the last successful scheduled backup.", registry=r)
        self.last_size = Gauge("securekv_backup_last_size_bytes", "Size of the last successful backup file.",
                               registry=r)
        self.last_duration = Gauge("securekv_backup_last_duration_seconds",
                                   "How long the last successful backup took.", registry=r)
        self.successes = Counter("securekv_backup_successes", "Scheduled backups written.", registry=r)
        self.failures = Counter("securekv_backup_failures", "Scheduled backups that failed or were refused.",
                                registry=r)
        self.in_progress = Gauge("securekv_backup_in_progress", "1 while a backup is being taken.", registry=r)


class BackupScheduler:
    def __init__(self, settings: BackupSettings, build: Callable[[], Awaitable[Any]], member_dir: str,
                 registry: CollectorRegistry, *, wall_clock: Callable[[], float] = time.time,
                 free_bytes: Callable[[str], int] = backupdir.free_bytes,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.settings = settings
        self.build = build  # EtcdServer.build_snapshot: the one call into the server
        self.member_dir = member_dir
        self.metrics = BackupMetrics(registry)
        self.wall_clock = wall_clock
        self.free_bytes = free_bytes
        self.random = random
        self._lock = trio.Lock()

    # -- schedule ---------------------------------------------------------------------------
    def _first_delay(self) -> float:
        interval = self.settings.interval
        first = min(interval, FIRST_BACKUP_DELAY)
        newest = backupdir.list_backups(self.settings.dir)
        if not newest:
            return first
        try:
            age = self.wall_clock() - newest[-1].stat().st_mtime
        except OSError:
            return first
        return max(first, min(interval, interval - age))

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            os.makedirs(self.settings.dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create --backup-dir {self.settings.dir}: {exc.strerror or exc}") from None
        delay = self._first_delay()
        log.info("scheduled encrypted backups into %s every %ss (keeping %d); next in %.0fs", self.settings.dir,
                 f"{self.settings.interval:g}", self.settings.retain, delay)
        task_status.started()
        while True:
            await trio.sleep(delay)
            await self.run_once()
            delay = self.settings.interval

    # -- one backup -------------------------------------------------------------------------
    def _expected_size(self) -> int:
        """The larger of the newest backup and the backend (database + its sqlite WAL)."""
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return 0

        last = max((size(p) for p in backupdir.list_backups(self.settings.dir)[-1:]), default=0)
        db = Path(self.member_dir) / "db.sqlite"
        return max(last, size(db) + size(Path(f"{db}-wal")))

    def _check_space(self) -> None:
        expected = int(self._expected_size() * SPACE_MARGIN) + (1 << 20)
        # the sqlite copy and the bbolt file beside the backend; the encrypted file in the backup dir
        backupdir.check_space({self.member_dir: 2 * expected, self.settings.dir: expected}, self.free_bytes)

    async def run_once(self) -> BackupResult | None:
        """Take one backup now; returns it, or None when it failed or another one is running."""
        if self._lock.locked():
            log.warning("a scheduled backup is still running; skipping this one")
            return None
        async with self._lock:
            self.metrics.in_progress.set(1)
            started = trio.current_time()
            try:
                result = await self._take(started)
            except Exception as exc:
                self.metrics.failures.inc()
                log.error("scheduled backup into %s failed: %s", self.settings.dir, exc)
                return None
            finally:
                self.metrics.in_progress.set(0)
            self.metrics.successes.inc()
            self.metrics.last_success.set(self.wall_clock())
            self.metrics.last_size.set(result.size)
            self.metrics.last_duration.set(result.seconds)
            log.info("backup %s written (revision %d, %d bytes, %.2fs)", result.path, result.revision, result.size,
                     result.seconds)
            return result

    async def _take(self, started: float) -> BackupResult:
        directory = self.settings.dir
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with backupdir.exclusive(directory):
            backupdir.remove_stale_parts(directory)
            key = await trio.to_thread.run_sync(read_key_file, self.settings.key_file)
            self._check_space()
            built = await self.build()
            try:
                target = backupdir.backup_path(directory, self.wall_clock())
                meta = SnapshotMeta(0, revision=built.revision, cluster_id=built.cluster_id,
                                    member_id=built.member_id, created=int(self.wall_clock()))
                header = await trio.to_thread.run_sync(encrypt_bolt_file, built.path, target, meta, key, self.random)
            finally:
                built.path.unlink(missing_ok=True)
            await trio.to_thread.run_sync(backupdir.rotate, directory, self.settings.retain)
        return BackupResult(target, header.encrypted_size, header.revision, trio.current_time() - started)


__all__ = ["BackupMetrics", "BackupResult", "BackupScheduler"]
