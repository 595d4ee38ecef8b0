"""Damaged backend files are refused with the file and the byte offset sqlite's check points at,
and refusing changes nothing (the WAL's own damage tests are in test_storage_wal.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from securekv.errors import CorruptionError
from securekv.storage import Backend, Revision, WriteBatch


def make_db(path: Path, rows: int = 400) -> None:
    with Backend.open(path) as backend:
        for i in range(1, rows + 1):
            backend.commit(WriteBatch(puts=[Revision(i, 0, f"k{i}".encode(), os.urandom(1024))],
                                      consistent_index=i))
        backend.sync()


def damage_leaf_page(path: Path) -> int:
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    for page in range(pages // 2, pages):
        off = page * page_size
        if data[off] in (0x0A, 0x0D):
            data[off:off + 8] = b"\xff" * 8
            path.write_bytes(bytes(data))
            return off
    raise AssertionError("no leaf page")


def test_damaged_snapshot_is_refused_with_file_and_offset_and_changes_nothing(tmp_path: Path) -> None:
    snap, target = tmp_path / "snap.sqlite", tmp_path / "db.sqlite"
    make_db(snap)
    make_db(target, rows=3)
    before = target.read_bytes()
    offset = damage_leaf_page(snap)
    with pytest.raises(CorruptionError) as info:
        Backend.restore(snap, target)
    text = str(info.value)
    assert str(snap) in text and f"byte offset {offset} (page {offset // 4096 + 1})" in text
    assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_damaged_header_is_refused_at_offset_zero(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    make_db(db, rows=5)
    data = bytearray(db.read_bytes())
    data[0:16] = b"not a database!\0"
    db.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        Backend.open(db)
    assert str(db) in str(info.value) and "byte offset 0" in str(info.value)


def test_damaged_page_found_while_reading(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    make_db(db)
    offset = damage_leaf_page(db)
    from securekv.storage.backend import corruption_error, is_corrupt

    with Backend.open(db) as backend:
        import sqlite3

        with pytest.raises(sqlite3.DatabaseError) as info:
            list(backend.iter_revisions())
        assert is_corrupt(info.value)
        text = str(corruption_error(str(db), info.value))
    assert f"byte offset {offset}" in text and str(db) in text
