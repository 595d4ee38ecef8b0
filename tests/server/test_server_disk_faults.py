"""`securekv serve` on a full disk and on damaged files, as real processes.

* The disk fills up under a member taking writes: it stops with ``Error: disk full: ...`` naming
  the file (exit status 3, no traceback); a restart while the disk is still full says the same;
  once space is back it starts and every acknowledged write is there.
* A damaged backend page is refused with the file and the byte offset (exit status 2), never
  served around.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server_harness import REPO, Member

from securekv.client import Client, ClientError
from securekv.torture.members import TmpfsMount, can_mount


def client(m: Member, timeout: float = 5.0) -> Client:
    c = m.certs
    return Client([m.endpoint], cacert=str(c.ca), cert=str(c.client_cert), key=str(c.client_key),
                  timeout=timeout)


def run_once(m: Member, timeout: float = 60) -> subprocess.CompletedProcess:
    """Start the member's exact command line and wait for it to exit by itself."""
    return subprocess.run(m.argv(), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
def test_member_stops_on_a_full_disk_and_recovers_when_space_returns(make_member, tmp_path: Path) -> None:
    disk = TmpfsMount(tmp_path / "disk", size_mb=16)
    try:
        # Freed at the end ("space returns"): enough for sqlite to checkpoint its WAL into the
        # database file (both hold the rows for a while: its WAL held 4.3-4.6 MB when the disk
        # filled), which a member needs before it can commit again. 2 MiB was not always enough.
        spare = disk.path / "ballast"
        spare.write_bytes(b"\0" * (6 << 20))
        m = make_member(name="disk/data", start=False)
        m.log = tmp_path / "member.log"  # its stderr is not on the disk that fills up
        m.start()
        acked: dict[str, bytes] = {}
        value = os.urandom(8 * 1024)
        with client(m) as c:
            for i in range(5000):
                key = f"full/{i:05d}"
                try:
                    c.put(key, value)
                except ClientError:
                    break
                acked[key] = value
            else:
                raise AssertionError("5000 puts of 8 KiB fit in 10 MiB?")
        assert len(acked) > 50
        assert m.proc is not None
        code = m.proc.wait(timeout=30)  # the member stops by itself
        out = m.output()
        assert code == 3, out[-3000:]
        assert "Error: disk full:" in out and "no space left on device" in out.lower() or "disk full while" in out
        assert "Traceback" not in out, out[-3000:]

        # Restarted while the disk is still full: it may start (its files already hold the
        # space it needs) but stops at the first write it cannot make, with the same message.
        # Which file met the full disk first in the run above is a race (the WAL's small
        # appends or the backend's batched commit): when it was the backend, entries the
        # backend misses must be replayed into it at start, which cannot be written either,
        # so the member stops while starting -- with the same message and exit code.
        disk.fill()
        try:
            m.start()
        except RuntimeError:
            assert m.early_exit == 3, m.output()[-3000:]  # it stopped before it listened
        else:
            with client(m, timeout=3) as c:
                for i in range(200):
                    try:
                        c.put(f"still-full/{i}", value)
                    except ClientError:
                        break
            assert m.proc is not None and m.proc.wait(timeout=30) == 3
        out = m.output()
        assert out.count("Error: disk full:") == 2 and "Traceback" not in out
        assert "corrupt" not in out.lower()

        disk.free()
        spare.unlink()
        m.start()
        with client(m) as c:
            got = {kv.key.decode(): kv.value for kv in c.get("full/", prefix=True).kvs}
            assert set(acked) <= set(got)
            assert all(got[k] == v for k, v in acked.items())
            c.put("full/after", "space is back")
            assert c.get("full/after").kvs[0].value == b"space is back"
        m.kill()
    finally:
        disk.close()


def _corrupt_a_revision_page(db: Path) -> int:
    """Overwrite the header of a b-tree leaf page in the middle of the file; returns its offset."""
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    for page in range(pages // 2, pages):
        off = page * page_size
        if data[off] in (0x0A, 0x0D):  # leaf index / leaf table page
            data[off:off + 8] = b"\xff" * 8
            db.write_bytes(bytes(data))
            return off
    raise AssertionError("no leaf page found")


def test_damaged_backend_page_is_refused_with_file_and_offset(make_member) -> None:
    m = make_member()
    with client(m) as c:
        for i in range(400):
            c.put(f"page/{i:04d}", os.urandom(1024))
    m.stop()  # clean stop: sqlite folds its -wal into the database file
    db = m.data_dir / "member" / "db.sqlite"
    offset = _corrupt_a_revision_page(db)
    proc = run_once(m)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Error: data corruption: backend database" in proc.stderr
    assert str(db) in proc.stderr and f"byte offset {offset}" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_damaged_wal_record_is_refused_with_file_and_offset(make_member) -> None:
    import re

    m = make_member()
    with client(m) as c:
        for i in range(40):
            c.put(f"wal/{i}", "v" * 200)
    m.kill()
    segment = sorted((m.data_dir / "member" / "wal").glob("*.wal"))[0]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, inside a record followed by intact ones
    segment.write_bytes(bytes(data))
    proc = run_once(m)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(rf"Error: data corruption: WAL corruption in {re.escape(str(segment))} at byte offset \d+",
                     proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
def test_snapshot_and_restore_on_a_full_disk(make_member, tmp_path: Path) -> None:
    """The Snapshot RPC fails cleanly while the member keeps serving (no temp file left);
    `ctl snapshot restore` into a full file system fails and leaves nothing; both work once
    space is back."""
    disk = TmpfsMount(tmp_path / "disk", size_mb=8)
    try:
        m = make_member(name="disk/data", start=False)
        m.log = tmp_path / "member.log"  # its stderr is not on the disk that fills up
        m.start()
        with client(m, timeout=20) as c:
            for i in range(200):
                c.put(f"snap/{i:03d}", os.urandom(512))
            # The backend commits in batches (etcd's 100 ms window; the WAL holds acknowledged
            # writes meanwhile): Status reads the backend, so it commits the pending batch now.
            # A batch committed after the disk filled would stop the member, which is the test
            # above, not this one.
            c.status()
            disk.fill()
            with pytest.raises(ClientError):
                c.snapshot_save(str(tmp_path / "snap.db"))
            assert m.proc is not None and m.proc.poll() is None  # still running, still serving
            assert len(c.get("snap/", prefix=True, keys_only=True).kvs) == 200
            assert not list((m.data_dir / "member").glob(".snapshot-*"))
            assert not (tmp_path / "snap.db").exists()
            disk.free()
            c.snapshot_save(str(tmp_path / "snap.db"))
        m.kill()

        target = disk.path / "restored"
        argv = [sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", str(tmp_path / "snap.db"),
                "--data-dir", str(target)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        disk.fill()
        before = sorted(p.name for p in disk.path.iterdir())
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode != 0 and "no space left on device" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in disk.path.iterdir()) == before  # nothing left behind
        disk.free()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (target / "member" / "db.sqlite").exists()
    finally:
        disk.close()


def test_a_member_whose_orderly_stop_hangs_after_a_fatal_error_exits_anyway() -> None:
    """The bound serve_cmd puts on stopping after the WAL or backend failed (here: a process
    that arms it and then never returns)."""
    code = ("import time, securekv.cli.serve_cmd as s\n"
            "from securekv.errors import DiskFullError\n"
            "s.FATAL_STOP_SECONDS = 0.3\n"
            "s._exit_if_stop_hangs(DiskFullError('WAL /x: no space left on device'))\n"
            "time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 3
    assert "Error: WAL /x: no space left on device" in proc.stderr
    assert "did not stop within 0s" in proc.stderr or "did not stop within" in proc.stderr
