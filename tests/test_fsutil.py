"""Atomic file writes: modes from the first byte, and all-or-nothing for groups of files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from securekv.fsutil import atomic_write, atomic_write_many


def _listing(d: Path) -> dict[str, bytes | None]:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in sorted(d.iterdir())}


def test_atomic_write_replaces_with_mode(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(b"old")
    atomic_write(key, "new", mode=0o600)
    assert key.read_bytes() == b"new"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _listing(tmp_path) == {"key.pem": b"new"}


def test_many_writes_all_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old-a")
    atomic_write_many([(tmp_path / "a", b"new-a", 0o644), (tmp_path / "b", "new-b", 0o600)])
    assert _listing(tmp_path) == {"a": b"new-a", "b": b"new-b"}
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600


def test_many_failing_rename_puts_everything_back(tmp_path: Path) -> None:
    """The third target is a directory: its rename fails after two files were replaced or
    created; both are undone and no temp or backup file is left."""
    (tmp_path / "a").write_bytes(b"old-a")
    (tmp_path / "c").mkdir()
    before = _listing(tmp_path)
    with pytest.raises(OSError):
        atomic_write_many([(tmp_path / "a", b"new-a", 0o644), (tmp_path / "b", b"new-b", 0o644),
                           (tmp_path / "c", b"new-c", 0o644)])
    assert _listing(tmp_path) == before


def test_many_failing_write_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old-a")
    before = _listing(tmp_path)
    with pytest.raises(OSError):
        atomic_write_many([(tmp_path / "a", b"new-a", 0o644), (tmp_path / "missing" / "b", b"x", 0o644)])
    assert _listing(tmp_path) == before
    assert os.path.exists(tmp_path / "a")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_atomic_write_many_keep_owner(tmp_path: Path) -> None:
    """Root renewing a service user's key: the new file keeps the old owner (the service must
    still read it), and a new file is root's as usual."""
    key = tmp_path / "member-key.pem"
    key.write_bytes(b"old")
    os.chown(key, 65534, 65534)
    atomic_write_many([(key, b"new", 0o600), (tmp_path / "fresh.pem", b"x", 0o644)], keep_owner=True)
    st = key.stat()
    assert key.read_bytes() == b"new" and (st.st_uid, st.st_gid) == (65534, 65534) and st.st_mode & 0o777 == 0o600
    assert (tmp_path / "fresh.pem").stat().st_uid == 0
