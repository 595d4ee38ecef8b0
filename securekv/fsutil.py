"""Crash-safe file writes: temp file + fsync + rename + directory fsync.

Every file securekv writes goes through here so a crash or power cut leaves either the old
file or the new one, never a torn mix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


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
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
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


def atomic_write_many(files: Iterable[tuple[str | os.PathLike[str], bytes | str, int]]) -> None:
    """Write several files so that either all new contents are in place or none are.

    All temp files are written and fsynced first; only then are they renamed. A failure
    while writing leaves every target untouched; a failure during the renames puts back what
    was already replaced (old contents are kept as hard links until the last rename), so an
    error never leaves a mix of old and new files, nor stray temp files.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            target = Path(path)
            staged.append((_write_temp(target, data, mode), target))
    except BaseException:
        for tmp, _ in staged:
            _unlink(tmp)
        raise
    done: list[tuple[Path, Path | None]] = []  # (target, backup of its old contents or None)
    try:
        for tmp, target in staged:
            backup: Path | None = target.parent / f".{target.name}.old-{os.getpid()}"
            try:
                _unlink(backup)
                os.link(target, backup)
            except FileNotFoundError:
                backup = None  # no old file: undo means remove the new one
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
