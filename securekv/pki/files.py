"""The one way PKI commands put files on disk: check every target first, then write all at once.

``atomic_write_many`` guarantees all-or-nothing only once every rename can succeed; a target
that is a directory (or whose parent is not one) would fail half-way, after earlier files were
already replaced. Checking the targets up front keeps "a refused command writes nothing" true.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from securekv.errors import UsageError
from securekv.fsutil import atomic_write_many

FileSpec = tuple[Path, bytes | str, int]


def check_targets(paths: Iterable[str | os.PathLike]) -> None:
    """Raise UsageError unless every existing path can be replaced by a regular file.

    (A missing parent directory needs no check: it fails while staging, before any rename.)
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            raise UsageError(f"{path} is a directory; move it away or choose another name")
        if path.exists() and not path.is_file():
            raise UsageError(f"{path} exists and is not a regular file")


def write_files(files: list[FileSpec]) -> None:
    """All of ``files`` (path, data, mode) in place, or none of them."""
    check_targets(path for path, _, _ in files)
    atomic_write_many(files)
