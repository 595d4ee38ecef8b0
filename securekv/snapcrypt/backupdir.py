"""A directory of rotated backups, shared by the member's scheduled backups
(``serve --backup-dir``) and ``securekv ctl snapshot save --backup-dir`` (the systemd timer).

- names ``securekv-backup-<UTC YYYYmmddTHHMMSSZ>[-N].snap`` (``-2``, ``-3``… for more in the
  same second), listed in time order;
- one writer at a time: an exclusive ``flock`` on ``.securekv-backup.lock`` in the directory
  (two members sharing a directory, or the timer and a member, never interleave; the lock
  disappears with the process, so a crash never leaves it stuck);
- rotation keeps the newest N backups and touches no other file;
- a backup is refused when a filesystem it writes to has less free space than it needs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping

from securekv.errors import UsageError
from securekv.fsutil import fsync_dir

PREFIX = "securekv-backup-"
SUFFIX = ".snap"
LOCK_NAME = ".securekv-backup.lock"


class BackupBusy(UsageError):
    """Another backup is being written into the same directory."""


class NotEnoughSpace(UsageError):
    """A filesystem the backup writes to has less free space than the backup needs."""


def backup_path(directory: str | os.PathLike[str], now: float) -> Path:
    """A new, unused name for a backup taken at ``now`` (Unix seconds)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = Path(directory)
    path = base / f"{PREFIX}{stamp}{SUFFIX}"
    n = 1
    while os.path.lexists(path):
        n += 1
        path = base / f"{PREFIX}{stamp}-{n}{SUFFIX}"
    return path


def list_backups(directory: str | os.PathLike[str]) -> list[Path]:
    """The backups in ``directory``, oldest first."""
    base = Path(directory)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = [n for n in names if n.startswith(PREFIX) and n.endswith(SUFFIX)]
    return [base / n for n in sorted(found, key=_order)]


def _order(name: str) -> tuple[str, int]:
    """(time stamp, sequence): ``...Z-2.snap`` was taken after ``...Z.snap`` in the same second."""
    stem = name[len(PREFIX):-len(SUFFIX)]
    stamp, _, seq = stem.partition("-")
    return stamp, int(seq) if seq.isdigit() else 1


def rotate(directory: str | os.PathLike[str], retain: int) -> list[Path]:
    """Delete all but the newest ``retain`` backups; returns what was deleted."""
    backups = list_backups(directory)
    doomed = backups[: max(0, len(backups) - retain)]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if doomed:
        fsync_dir(directory)
    return doomed


def remove_stale_parts(directory: str | os.PathLike[str]) -> None:
    """Temp files of backups cut short by a crash (call only while holding the lock)."""
    for name in os.listdir(directory):
        if name.startswith("." + PREFIX) and ".part-" in name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the directory's backup lock, or raise BackupBusy at once."""
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BackupBusy(f"another backup is being written into {directory}") from None
            raise
        yield
    finally:
        os.close(fd)


def free_bytes(path: str | os.PathLike[str]) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_space(needs: Mapping[str, int], free: Callable[[str], int] = free_bytes) -> None:
    """``needs`` maps directories to the bytes written there; directories on one filesystem add up."""
    by_dev: dict[int, tuple[str, int]] = {}
    for directory, size in needs.items():
        dev = os.stat(directory).st_dev
        first, total = by_dev.get(dev, (directory, 0))
        by_dev[dev] = (first, total + size)
    for directory, total in by_dev.values():
        available = free(directory)
        if available < total:
            raise NotEnoughSpace(f"not enough free space in {directory}: {_mib(available)} free, "
                                 f"the backup needs about {_mib(total)}")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


__all__ = ["BackupBusy", "NotEnoughSpace", "backup_path", "check_space", "exclusive", "free_bytes",
           "list_backups", "remove_stale_parts", "rotate"]
