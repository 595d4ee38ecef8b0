"""One process per data directory: a non-blocking ``flock`` on ``<dir>/LOCK``.

``flock`` locks belong to the open file description, so the lock disappears with the process
(kill -9 included) and a stale LOCK file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import UsageError

LOCK_NAME = "LOCK"


class DirLock:
    """An exclusive lock held until :meth:`release` (or process exit)."""

    def __init__(self, directory: str, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_data_dir(directory: str | os.PathLike[str], *, create: bool = True) -> DirLock:
    """Lock ``directory`` (created 0700 if missing) or raise :class:`UsageError`.

    The holder's pid is written into the LOCK file in place (not atomically: the file's
    inode must stay the same for ``flock`` to mean anything; its content is only a hint).
    """
    directory = os.fspath(directory)
    if create:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise UsageError(
            f"data directory {directory} is in use by {who} (lock {path} is held); "
            "stop that process or choose another --data-dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the pid is only a hint for the error message above
    return DirLock(directory, fd)


def _read_holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
