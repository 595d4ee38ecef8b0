"""Crash-safe file writes: temp file + fsync + rename + directory fsync.

Every file securekv writes goes through here so a crash or power cut leaves either the old
file or the new one, never a torn mix. Temp files get random names and are created with
``O_EXCL | O_NOFOLLOW``: a name another user guessed in advance (or planted as a symlink to a
file of ours) makes the create fail instead of writing through it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterable

#: Flags of every temp file: new (never an existing file), never through a symlink.
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_temp(directory: str | os.PathLike[str], prefix: str, suffix: str = "", mode: int = 0o600) -> tuple[int, Path]:
    """A new file ``directory/<prefix><random><suffix>`` opened for writing: (fd, path).

    The mode is applied from the first byte (also ``fchmod``, so the umask cannot widen or
    narrow it).
    """
    for _ in range(64):
        path = Path(directory) / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(path, TEMP_FLAGS, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        return fd, path
    raise FileExistsError(f"could not create a temp file in {directory}")


def _random_link(target: Path, prefix: str) -> Path | None:
    """Hard-link ``target`` (the entry itself, never what a symlink points to) to a fresh random
    name beside it; None when ``target`` does not exist."""
    for _ in range(64):
        backup = target.parent / f"{prefix}{secrets.token_hex(8)}"
        try:
            os.link(target, backup, follow_symlinks=False)
            return backup
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
    raise FileExistsError(f"could not create a backup link beside {target}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist a directory entry change (create/rename/unlink) in ``path``."""
    fd = os.open(os.fspath(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(target: Path, data: bytes | str, mode: int) -> Path:
    """Write ``data`` to a fresh temp file beside ``target`` (mode applied from the first byte),
    fsynced; removed again if anything fails."""
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = create_temp(target.parent, f".{target.name}.tmp-", mode=mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    The temp file is created with ``mode`` already applied (never briefly world-readable),
    fsynced, renamed over the target, and the directory is fsynced.
    """
    target = Path(path)
    tmp = _write_temp(target, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_many(files: Iterable[tuple[str | os.PathLike[str], bytes | str, int]], *,
                      keep_owner: bool = False) -> None:
    """Write several files so that either all new contents are in place or none are.

    All temp files are written and fsynced first; only then are they renamed. A failure
    while writing leaves every target untouched; a failure during the renames puts back what
    was already replaced (old contents are kept as hard links until the last rename), so an
    error never leaves a mix of old and new files, nor stray temp files.

    ``keep_owner``: a file that exists keeps its owner and group (the temp file is given them
    before the rename): root replacing a service user's key must not leave it unreadable.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            target = Path(path)
            tmp = _write_temp(target, data, mode)
            staged.append((tmp, target))
            if keep_owner:
                try:
                    st = os.stat(target)
                except FileNotFoundError:
                    continue
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    os.chown(tmp, st.st_uid, st.st_gid)
    except BaseException:
        for tmp, _ in staged:
            _unlink(tmp)
        raise
    done: list[tuple[Path, Path | None]] = []  # (target, backup of its old contents or None)
    try:
        for tmp, target in staged:
            # None: no old file, so undo means removing the new one
            backup = _random_link(target, f".{target.name}.old-")
            done.append((target, backup))
            os.replace(tmp, target)
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            elif target.exists() and not target.is_dir():
                _unlink(target)
        for tmp, _ in staged:
            _unlink(tmp)
        raise
    finally:
        for _, backup in done:
            if backup is not None:
                _unlink(backup)
    for directory in {target.parent for _, target in staged}:
        fsync_dir(directory)


FileStamp = tuple[str, "int | None", "int | None", "int | None"]


def file_stamps(paths: Iterable[str]) -> tuple[FileStamp, ...]:
    """(path, inode, size, mtime) of each path, None for a missing one.

    Reloaders compare stamps instead of contents: a replaced file (new inode, as atomic_write
    makes) or an edited one shows up without reading it on every poll."""
    out: list[FileStamp] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None, None))
    return tuple(out)
