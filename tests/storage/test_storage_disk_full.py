"""A full disk under the WAL, the backend, a backend copy and a snapshot install: the write that
failed raises DiskFullError naming the file, nothing written before is damaged, and everything
works again once space is back. Real files on a small tmpfs (mounting needs root)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from securekv.errors import DiskFullError, UsageError
from securekv.storage import WAL, Backend, HardState, Metadata, Revision, WalEntry, WriteBatch
from securekv.torture.members import TmpfsMount, can_mount

pytestmark = pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[TmpfsMount]:
    mount = TmpfsMount(tmp_path / "disk", size_mb=2)
    try:
        yield mount
    finally:
        mount.close()


def ballast(disk: TmpfsMount, size: int = 256 * 1024) -> Path:
    """Space taken now and handed back later ("the operator frees some space")."""
    path = disk.path / "ballast"
    path.write_bytes(b"\0" * size)
    return path


def entry(i: int) -> WalEntry:
    return WalEntry(i, 1, f"entry {i} ".encode() * 400)


def test_wal_append_on_a_full_disk_then_recovery(disk: TmpfsMount) -> None:
    spare = ballast(disk)
    wal = WAL.create(disk.path / "wal", Metadata(1, 2))
    synced: list[int] = []
    with pytest.raises(DiskFullError) as info:
        for i in range(1, 10_000):
            wal.append([entry(i)], HardState(1, 1, i))
            wal.sync()
            synced.append(i)
    assert "no space left on device" in str(info.value) and str(disk.path / "wal") in str(info.value)
    assert len(synced) > 10
    with pytest.raises(UsageError, match="failed earlier"):  # never writes after a failed write
        wal.append([entry(len(synced) + 1)])
    wal.close()

    spare.unlink()  # space is back
    wal, state = WAL.open(disk.path / "wal")
    with wal:
        assert [e.index for e in state.entries] == synced  # nothing synced lost, nothing torn kept
        assert all(e == entry(e.index) for e in state.entries)
        assert state.hard_state.commit == synced[-1]
        wal.append([entry(synced[-1] + 1)], HardState(1, 1, synced[-1] + 1))
        wal.sync()
    wal, state = WAL.open(disk.path / "wal")
    wal.close()
    assert state.entries[-1].index == synced[-1] + 1


def test_wal_segment_cut_on_a_full_disk_leaves_no_half_segment(disk: TmpfsMount) -> None:
    spare = ballast(disk)
    wal = WAL.create(disk.path / "wal", Metadata(1, 2), segment_size=64 * 1024)
    synced = 0
    with pytest.raises(DiskFullError):
        for i in range(1, 10_000):
            wal.append([entry(i)], HardState(1, 1, i))
            wal.sync()
            synced = i
    wal.close()
    assert not [n for n in os.listdir(disk.path / "wal") if n.endswith(".tmp")]
    spare.unlink()
    wal, state = WAL.open(disk.path / "wal")
    wal.close()
    assert state.entries[-1].index >= synced and len(wal.segments()) > 1


def test_wal_create_on_a_full_disk(disk: TmpfsMount) -> None:
    disk.fill()
    with pytest.raises(DiskFullError, match="no space left"):
        WAL.create(disk.path / "wal", Metadata(1, 2))
    assert not (disk.path / "wal").exists() and not (disk.path / "wal.tmp").exists()
    disk.free()
    WAL.create(disk.path / "wal", Metadata(1, 2)).close()


def batch(i: int) -> WriteBatch:
    return WriteBatch(puts=[Revision(i, 0, f"k{i}".encode(), os.urandom(2048))], consistent_index=i)


def test_backend_commit_on_a_full_disk_then_recovery(disk: TmpfsMount) -> None:
    spare = ballast(disk)
    path = disk.path / "db.sqlite"
    committed = 0
    with Backend.open(path) as backend:
        with pytest.raises(DiskFullError) as info:
            for i in range(1, 10_000):
                backend.commit(batch(i))
                committed = i
                if i % 50 == 0:
                    backend.sync()
        assert str(path) in str(info.value) and "disk full" in str(info.value)
        assert committed > 10
        assert backend.consistent_index() == committed  # the failed batch left nothing behind
        assert backend.revision_count() == committed
    spare.unlink()
    with Backend.open(path) as backend:
        assert backend.consistent_index() == committed
        assert backend.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        backend.commit(batch(committed + 1))
        backend.sync()
        assert backend.revision_count() == committed + 1


def test_backend_on_a_full_disk_refuses_to_open_clearly_then_recovers(disk: TmpfsMount) -> None:
    path = disk.path / "db.sqlite"
    with Backend.open(path) as backend:
        for i in range(1, 6):
            backend.commit(batch(i))
        backend.sync()
    disk.fill()
    # sqlite cannot even create its -shm file: a clear "disk full", never "corrupt".
    with pytest.raises(DiskFullError, match="disk full while opening it"):
        Backend.open(path)
    disk.free()
    with Backend.open(path) as backend:
        assert backend.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r.main for r in backend.iter_revisions()] == [1, 2, 3, 4, 5]
        backend.commit(batch(6))


def test_backend_copy_and_snapshot_install_on_a_full_disk(disk: TmpfsMount, tmp_path: Path) -> None:
    source = tmp_path / "source.sqlite"  # the leader's copy, on a disk with room
    with Backend.open(source) as backend:
        for i in range(1, 200):
            backend.commit(batch(i))
        backend.sync()
    path = disk.path / "db.sqlite"
    with Backend.open(path) as backend:
        backend.commit(batch(1))
        backend.sync()
    disk.fill()
    with Backend.open(source) as backend, pytest.raises(DiskFullError, match="copy.sqlite"):
        backend.backup_to(disk.path / "copy.sqlite")
    assert not [n for n in os.listdir(disk.path) if n.startswith("copy.sqlite")]
    with pytest.raises(DiskFullError, match="current database is unchanged"):
        Backend.restore(source, path)
    assert not [n for n in os.listdir(disk.path) if ".tmp-" in n]
    disk.free()
    with Backend.open(path) as backend:
        assert backend.consistent_index() == 1
    Backend.restore(source, path)
    with Backend.open(path) as backend:
        assert backend.consistent_index() == 199
