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


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    The temp file is created with ``mode`` already applied (never briefly world-readable),
    fsynced, renamed over the target, and the directory is fsynced.
    """
    if isinstance(data, str):
        data = data.encode()
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_many(files: Iterable[tuple[str | os.PathLike[str], bytes | str, int]]) -> None:
    """Write several files so that either all new contents are in place or none are.

    All temp files are written and fsynced first; only then are they renamed. A failure
    before the renames leaves every target untouched.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            if isinstance(data, str):
                data = data.encode()
            target = Path(path)
            tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            staged.append((tmp, target))
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    directories = set()
    for tmp, target in staged:
        os.replace(tmp, target)
        directories.add(target.parent)
    for directory in directories:
        fsync_dir(directory)
