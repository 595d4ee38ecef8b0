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


def test_temp_files_have_random_names_and_never_write_through_a_planted_symlink(tmp_path: Path) -> None:
    """Issue 12: temp names were predictable (``.name.part-<pid>``), so another user could plant
    a symlink there and have securekv write through it. Now: 64 random bits per name, and the
    create is O_EXCL|O_NOFOLLOW, so even a guessed name fails instead of following the link."""
    from securekv.fsutil import TEMP_FLAGS, create_temp

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    # What an attacker could plant under the old scheme: every pid's name.
    for pid in range(os.getpid() - 50, os.getpid() + 50):
        (shared / f".snap.db.part-{pid}").symlink_to(victim)
    names = set()
    for _ in range(50):
        fd, path = create_temp(shared, ".snap.db.part-")
        os.close(fd)
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
        suffix = path.name.removeprefix(".snap.db.part-")
        assert len(suffix) == 16 and int(suffix, 16) >= 0
        names.add(path.name)
    assert len(names) == 50
    # A name guessed right is refused, not followed: the flags every temp file is created with.
    planted = shared / ".snap.db.part-0123456789abcdef"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        os.open(planted, TEMP_FLAGS, 0o600)
    dangling = shared / ".dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(FileExistsError):
        os.open(dangling, TEMP_FLAGS, 0o600)
    assert not (tmp_path / "would-be-created").exists()
    atomic_write(shared / "snap.db", b"new")
    assert (shared / "snap.db").read_bytes() == b"new" and victim.read_bytes() == b"precious"
