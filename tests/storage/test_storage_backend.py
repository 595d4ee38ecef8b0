"""The sqlite backend: batches are atomic, the applied index rides along, copies are consistent."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from securekv.errors import CorruptionError, UsageError
from securekv.storage import Backend, Lease, Revision, WriteBatch
from storage_helpers import drain_acks, read_acks


@pytest.fixture
def db(tmp_path: Path):
    backend = Backend.open(tmp_path / "member" / "db.sqlite")
    yield backend
    backend.close()


def revs(lo: int, hi: int, size: int = 10) -> list[Revision]:
    return [Revision(i, 0, b"key%05d" % i, bytes([i % 256]) * size, tombstone=i % 5 == 0)
            for i in range(lo, hi + 1)]


def test_round_trip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Backend.open(path) as b:
        assert b.consistent_index() == 0 and list(b.iter_revisions()) == []
        b.commit(WriteBatch(
            puts=revs(1, 20) + [Revision(20, 1, b"\x00bin", b"\xff\x00")],
            lease_puts=[Lease(7, 60, b"x"), Lease(9, 5)],
            item_puts=[("auth_users", b"root", b"pw"), ("auth_roles", b"root", b"all")],
            meta={"compact_revision": 3, "auth_state": b"\x01enabled"},
            consistent_index=42))
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    with Backend.open(path) as b:
        assert b.consistent_index() == 42
        assert list(b.iter_revisions()) == revs(1, 20) + [Revision(20, 1, b"\x00bin", b"\xff\x00")]
        assert [r.main for r in b.iter_revisions(min_main=18)] == [18, 19, 20, 20]
        assert list(b.iter_leases()) == [Lease(7, 60, b"x"), Lease(9, 5, b"")]
        assert list(b.iter_items("auth_users")) == [(b"root", b"pw")]
        assert b.get_meta("compact_revision") == 3
        assert b.get_meta("auth_state") == b"\x01enabled"
        assert b.get_meta("missing", 5) == 5


def test_deletes_and_overwrites(db: Backend) -> None:
    db.commit(WriteBatch(puts=revs(1, 10), lease_puts=[Lease(1, 10)],
                         item_puts=[("b", b"k", b"v")]))
    with db.batch() as b:
        for main in range(1, 6):
            b.delete(main, 0)
        b.put(Revision(6, 0, b"key00006", b"new"))
        b.delete_lease(1)
        b.delete_item("b", b"k")
        b.consistent_index = 11
    assert [r.main for r in db.iter_revisions()] == [6, 7, 8, 9, 10]
    assert next(db.iter_revisions()).value == b"new"
    assert list(db.iter_leases()) == [] and list(db.iter_items("b")) == []
    assert db.consistent_index() == 11


def test_exception_inside_batch_commits_nothing(db: Backend) -> None:
    db.commit(WriteBatch(puts=revs(1, 3), consistent_index=3))
    before = db.content_hash(skip_meta=())
    with pytest.raises(RuntimeError):
        with db.batch() as b:
            b.put(Revision(4, 0, b"k", b"v"))
            b.consistent_index = 4
            raise RuntimeError("apply failed")
    assert db.content_hash(skip_meta=()) == before and db.consistent_index() == 3


def test_failure_midway_through_commit_rolls_everything_back(db: Backend) -> None:
    """The rows before the failing one were already executed inside the transaction."""
    db.commit(WriteBatch(puts=revs(1, 3), consistent_index=3))
    before = db.content_hash(skip_meta=())
    bad = WriteBatch(puts=revs(4, 100), deletes=[(1, 0)], lease_puts=[Lease(1, 1)],
                     meta={"ok": 1, "bad": 1.5}, consistent_index=100)  # type: ignore[dict-item]
    with pytest.raises(UsageError, match="'bad' must be int or bytes"):
        db.commit(bad)
    assert db.content_hash(skip_meta=()) == before and db.consistent_index() == 3
    # sqlite itself fails on the last row, after inserting the ones before it
    sqlite_bad = WriteBatch(puts=revs(4, 50) + [Revision(2**70, 0, b"k", b"v")],
                            consistent_index=51)
    with pytest.raises(OverflowError):
        db.commit(sqlite_bad)
    assert db.content_hash(skip_meta=()) == before and db.consistent_index() == 3
    db.commit(WriteBatch(puts=revs(4, 4), consistent_index=4))  # still usable
    assert db.consistent_index() == 4


def test_sizes_and_defragment(db: Backend) -> None:
    db.commit(WriteBatch(puts=revs(1, 2000, size=500)))
    full = db.size_bytes()
    assert full > 1_000_000 and db.size_in_use() <= full
    db.commit(WriteBatch(deletes=[(i, 0) for i in range(1, 1901)]))
    assert db.size_bytes() == full  # sqlite keeps freed pages in the file
    assert db.size_in_use() < full // 2
    db.defragment()
    assert db.size_bytes() < full // 2
    assert [r.main for r in db.iter_revisions()][:2] == [1901, 1902]


def test_backup_is_a_consistent_standalone_copy(db: Backend, tmp_path: Path) -> None:
    db.commit(WriteBatch(puts=revs(1, 300), lease_puts=[Lease(3, 30)], meta={"m": b"x"},
                         consistent_index=300))
    copy = tmp_path / "snap" / "copy.db"
    copy.parent.mkdir()
    db.backup_to(copy)
    db.commit(WriteBatch(puts=revs(301, 310), consistent_index=310))  # after the copy
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in copy.parent.iterdir()] == ["copy.db"]  # no temp, no -wal file
    with Backend.open(copy) as c:
        assert c.consistent_index() == 300 and c.revision_count() == 300
    # the bytes form is a database too
    raw = tmp_path / "raw.db"
    raw.write_bytes(db.snapshot_bytes())
    with Backend.open(raw) as c:
        assert c.consistent_index() == 310
        assert c.content_hash() == db.content_hash()


def test_restore_replaces_the_database(tmp_path: Path) -> None:
    snap = tmp_path / "snap.db"
    with Backend.open(tmp_path / "leader.db") as leader:
        leader.commit(WriteBatch(puts=revs(1, 50), consistent_index=50))
        leader.backup_to(snap)
    path = tmp_path / "follower.db"
    with Backend.open(path) as follower:
        follower.commit(WriteBatch(puts=revs(1, 3, size=1), consistent_index=3))
    Backend.restore(snap, path)
    with Backend.open(path) as follower:
        assert follower.consistent_index() == 50 and follower.revision_count() == 50
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"x" * 4096)
    with pytest.raises(CorruptionError, match="junk.db"):
        Backend.restore(junk, path)
    with Backend.open(path) as follower:  # untouched by the refused restore
        assert follower.consistent_index() == 50


def test_content_hash_ignores_applied_index_only(db: Backend, tmp_path: Path) -> None:
    with Backend.open(tmp_path / "other.db") as other:
        for b, ci in ((db, 5), (other, 9)):
            b.commit(WriteBatch(puts=revs(1, 5), consistent_index=ci))
        assert db.content_hash() == other.content_hash()
        other.commit(WriteBatch(meta={"compact_revision": 2}))
        assert db.content_hash() != other.content_hash()


def test_not_a_database_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptionError, match=str(path)):
        Backend.open(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Backend.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(UsageError, match="schema version 99"):
        Backend.open(path)


def test_closed_backend_refuses_use(tmp_path: Path) -> None:
    b = Backend.open(tmp_path / "db")
    b.close()
    with pytest.raises(UsageError, match="closed"):
        b.consistent_index()


def test_kill_9_keeps_committed_batches(tmp_path: Path, spawn) -> None:
    """synchronous=NORMAL loses nothing committed when only the process dies."""
    path = str(tmp_path / "db.sqlite")
    for want in (50, 200):
        proc = spawn("storage_child.py", "backend-writer", path)
        acked = read_acks(proc, want)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
        acked = drain_acks(proc, acked)
        with Backend.open(path) as b:
            ci = b.consistent_index()
            assert ci >= acked
            assert [r.main for r in b.iter_revisions()] == list(range(1, ci + 1))
    assert not os.path.exists(path + ".tmp")


def test_large_deletion_runs_in_chunks_with_items_first_and_meta_last(tmp_path: Path, monkeypatch) -> None:
    """A compaction dropping more than DELETE_CHUNK rows commits in several transactions: its
    item rows before any deletion, the applied index only with the last one."""
    from securekv.storage import backend as backend_mod

    monkeypatch.setattr(backend_mod, "DELETE_CHUNK", 10)
    with Backend.open(tmp_path / "db.sqlite") as db:
        db.commit(WriteBatch(puts=[Revision(m, 0, b"k%d" % m, b"v") for m in range(1, 36)], consistent_index=1))
        seen = []
        real = db._transaction

        def spy(batches):
            assert len(batches) == 1
            seen.append((len(batches[0].deletes), len(batches[0].item_puts), batches[0].consistent_index))
            real(batches)

        monkeypatch.setattr(db, "_transaction", spy)
        db.commit(WriteBatch(deletes=[(m, 0) for m in range(1, 31)], item_puts=[("kvindex_dropped", b"x", b"y")],
                             meta={"compact_revision": 30}, consistent_index=2))
        assert seen == [(0, 1, None), (10, 0, None), (10, 0, None), (10, 0, None), (0, 0, 2)]
        assert db.revision_count() == 5 and db.consistent_index() == 2 and db.get_meta("compact_revision") == 30


def test_commit_all_is_one_transaction_in_order(tmp_path: Path, monkeypatch) -> None:
    """The node's committer hands a run of batches (one per Raft Ready) to ``commit_all``: one
    transaction for all of them, each batch's changes in order (a revision put by one and
    compacted by a later one stays deleted; the last meta value wins); a large compaction
    among them still commits in chunks, between the groups before and after it."""
    from securekv.storage import backend as backend_mod

    monkeypatch.setattr(backend_mod, "DELETE_CHUNK", 10)
    with Backend.open(tmp_path / "db.sqlite") as db:
        sizes = []
        real = db._transaction

        def spy(batches):
            sizes.append(len(batches))
            real(batches)

        monkeypatch.setattr(db, "_transaction", spy)
        db.commit_all([WriteBatch(puts=revs(1, 3), lease_puts=[Lease(1, 10)], consistent_index=1),
                       WriteBatch(deletes=[(1, 0)], lease_deletes=[1], item_puts=[("b", b"k", b"v1")],
                                  meta={"compact_revision": 1}, consistent_index=2),
                       WriteBatch(puts=[Revision(2, 0, b"key00002", b"new")], item_puts=[("b", b"k", b"v2")],
                                  meta={"compact_revision": 2}, consistent_index=3)])
        assert sizes == [3]  # one transaction
        assert [(r.main, r.value) for r in db.iter_revisions()] == [(2, b"new"), (3, bytes([3]) * 10)]
        assert list(db.iter_leases()) == [] and list(db.iter_items("b")) == [(b"k", b"v2")]
        assert (db.consistent_index(), db.get_meta("compact_revision")) == (3, 2)

        sizes.clear()
        db.commit_all([WriteBatch(puts=revs(10, 40), consistent_index=4), WriteBatch(consistent_index=5),
                       WriteBatch(deletes=[(m, 0) for m in range(10, 35)], consistent_index=6),
                       WriteBatch(puts=revs(50, 50), consistent_index=7), WriteBatch(consistent_index=8)])
        assert sizes == [2, 1, 1, 1, 1, 1, 2]  # the group, items, 3 chunks of deletes, the rest, the group
        assert db.revision_count() == 2 + 6 + 1 and db.consistent_index() == 8

        # all or nothing: a bad batch at the end undoes the good ones before it
        before = db.content_hash(skip_meta=())
        with pytest.raises(UsageError, match="'bad' must be int or bytes"):
            db.commit_all([WriteBatch(puts=revs(60, 61), consistent_index=9),
                           WriteBatch(meta={"bad": 1.5}, consistent_index=10)])  # type: ignore[dict-item]
        with pytest.raises(OverflowError):
            db.commit_all([WriteBatch(puts=revs(60, 61), consistent_index=9),
                           WriteBatch(puts=[Revision(2**70, 0, b"k", b"v")], consistent_index=10)])
        assert db.content_hash(skip_meta=()) == before and db.consistent_index() == 8


def test_reader_and_integrity_check_report_damage_with_offset(tmp_path: Path) -> None:
    """On-demand reads (the MVCC store's) and the post-start check name the file and offset."""
    from securekv.storage.backend import BackendReader, IntegrityCheck

    path = tmp_path / "db.sqlite"
    with Backend.open(path) as db:
        db.commit(WriteBatch(puts=[Revision(m, 0, b"k%05d" % m, os.urandom(900)) for m in range(1, 400)],
                             consistent_index=1))
        db.sync()
    assert IntegrityCheck(path).run() is None
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    offset = next(p * page_size for p in range(len(data) // page_size // 2, len(data) // page_size)
                  if data[p * page_size] in (0x0A, 0x0D))  # a leaf page in the middle: revision rows
    data[offset:offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    error = IntegrityCheck(path).run()
    # (which offset sqlite's check can name depends on the damage: the process test in
    # tests/server/test_server_disk_faults.py checks it end to end)
    assert isinstance(error, CorruptionError) and str(path) in str(error) and "corrupt at byte offset" in str(error)
    reader = BackendReader.open(path)
    seen: list[CorruptionError] = []
    reader.on_corrupt = seen.append
    try:
        with pytest.raises(CorruptionError) as info:
            reader.scan((1, 0), 10**6, 10**6)
        assert str(path) in str(info.value) and "corrupt at byte offset" in str(info.value)
        assert seen == [info.value]
    finally:
        reader.close()
