"""Scheduled encrypted backups by the member (``serve --backup-dir``).

Real process: a member backing up every second while clients write, rotation, metrics, a
failure (the key file broken under it) logged and counted while the member keeps serving, and
the newest backup restored into a new member that serves everything written before it. In
process (trio): the free-space refusal and one-backup-at-a-time, with the real snapshot
exporter and a real backend standing in for the server's builder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry
from server_harness import REPO

from securekv.config.model import BackupSettings
from securekv.proto import kv_pb2
from securekv.server.backup import BackupScheduler
from securekv.server.etcdserver import BuiltSnapshot
from securekv.server.etcdsnap import export_snapshot
from securekv.snapcrypt import backupdir, files
from securekv.snapcrypt.keys import keygen, read_key_file
from securekv.storage import Backend, Revision, WriteBatch


def metrics(member) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{member.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(securekv_backup_\w+) (\S+)$", text, re.M)}


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_member_backs_up_on_schedule(make_member, tmp_path: Path) -> None:
    key = tmp_path / "backup.key"
    keygen(key)
    backups = tmp_path / "backups"
    m = make_member("securekv", name="m", extra=["--backup-dir", str(backups), "--backup-interval", "1s",
                                                 "--backup-retain", "2", "--backup-encryption-key-file", str(key)])
    # Clients keep writing while backups are taken: every put is acknowledged.
    for i in range(30):
        m.ctl("put", f"k/{i:03d}", f"value-{i}")
    written_at = time.time()
    wait_for(lambda: metrics(m).get("securekv_backup_last_success_timestamp_seconds", 0) > written_at + 0.5, 30,
             "a backup taken after the writes")
    for i in range(30, 40):
        m.ctl("put", f"k/{i:03d}", f"value-{i}")
    first = metrics(m)
    assert first["securekv_backup_failures_total"] == 0 and first["securekv_backup_last_size_bytes"] > 0
    assert 0 < first["securekv_backup_last_duration_seconds"] < 30

    # A broken key file: the next backups fail with one log line each, the member goes on.
    key.write_bytes(b"oops")
    wait_for(lambda: metrics(m)["securekv_backup_failures_total"] >= 1, 30, "a failed backup")
    assert m.ctl("put", "during", "failure").stdout.strip() == "OK"
    assert re.search(r"scheduled backup into \S+ failed: key file \S+ must hold 32 bytes", m.output())
    assert "Traceback" not in m.output()
    keygen_again = tmp_path / "new.key"
    keygen(keygen_again)
    key.write_bytes(keygen_again.read_bytes())  # a rotated key: used without a restart
    ok_before = metrics(m)["securekv_backup_successes_total"]
    wait_for(lambda: metrics(m)["securekv_backup_successes_total"] >= ok_before + 1, 30, "backups to resume")
    m.stop()

    kept = backupdir.list_backups(backups)
    assert len(kept) == 2  # rotated to --backup-retain
    assert not [p for p in os.listdir(backups) if ".part-" in p]
    newest = kept[-1]
    assert os.stat(newest).st_mode & 0o777 == 0o600 and files.detect(newest) is files.Kind.ENCRYPTED
    header = files.read_file_header(newest)
    assert header.revision >= 41 and not header.revision_is_lower_bound

    dst = make_member("securekv", name="restored", start=False)
    peer = f"https://127.0.0.1:{dst.peer_port}"
    out = subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", str(newest), "--data-dir",
                          str(dst.data_dir), "--name", "m1", "--initial-cluster", f"m1={peer}",
                          "--initial-advertise-peer-urls", peer, "--encryption-key-file", str(key)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    dst.start()
    got = json.loads(dst.ctl("get", "k/", "--prefix", "-w", "json").stdout)["kvs"]
    assert len(got) == 40
    assert dst.ctl("get", "during", "--print-value-only").stdout.strip() == "failure"


def test_backup_flags_are_validated_before_anything_is_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "short.key").write_bytes(b"123")
    for extra, message in [
        (["--backup-dir", str(tmp_path / "b")], "--backup-dir needs --backup-encryption-key-file"),
        (["--backup-encryption-key-file", str(tmp_path / "short.key")], "needs --backup-dir"),
        (["--backup-dir", str(tmp_path / "b"), "--backup-encryption-key-file", str(tmp_path / "short.key")],
         "must hold 32 bytes"),
        (["--backup-dir", str(tmp_path / "b"), "--backup-encryption-key-file", str(tmp_path / "missing")],
         "cannot read key file"),
    ]:
        out = subprocess.run([sys.executable, "-m", "securekv", "serve", "--data-dir", str(data), *extra],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["short.key"]


# -- in process -------------------------------------------------------------------------------------------
@pytest.fixture
def member_dir(tmp_path: Path) -> Path:
    d = tmp_path / "member"
    d.mkdir()
    with Backend.open(d / "db.sqlite") as db:
        db.commit(WriteBatch(puts=[Revision(2 + i, 0, b"k%d" % i, kv_pb2.KeyValue(
            key=b"k%d" % i, create_revision=2 + i, mod_revision=2 + i, version=1, value=b"v" * 500).SerializeToString())
            for i in range(200)], consistent_index=300))
    return d


def _builder(member_dir: Path, gate: trio.Event | None = None):
    calls: list[int] = []

    async def build() -> BuiltSnapshot:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        copy, out = member_dir / ".snapshot-t.sqlite", member_dir / ".snapshot-t.db"
        with Backend.open(member_dir / "db.sqlite") as db:
            db.backup_to(copy)
        await trio.to_thread.run_sync(export_snapshot, str(copy), str(out))
        copy.unlink()
        return BuiltSnapshot(out, 201, 1, 2, 3)

    return build, calls


def _settings(tmp_path: Path) -> BackupSettings:
    key = tmp_path / "k"
    if not key.exists():
        keygen(key)
    return BackupSettings(dir=str(tmp_path / "backups"), interval=1.0, retain=2, key_file=str(key))


def _value(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_refused_when_free_space_is_short(member_dir: Path, tmp_path: Path, caplog) -> None:
    registry = CollectorRegistry()
    build, calls = _builder(member_dir)
    sched = BackupScheduler(_settings(tmp_path), build, str(member_dir), registry, free_bytes=lambda d: 4096)
    assert await sched.run_once() is None
    assert calls == []  # refused before the snapshot was built
    assert _value(registry, "securekv_backup_failures_total") == 1
    assert any("not enough free space" in r.getMessage() and "the backup needs about" in r.getMessage()
               for r in caplog.records)
    assert backupdir.list_backups(tmp_path / "backups") == []

    ok = BackupScheduler(_settings(tmp_path), build, str(member_dir), CollectorRegistry())
    result = await ok.run_once()
    assert result is not None and result.revision == 201 and result.size == os.path.getsize(result.path)
    assert not (member_dir / ".snapshot-t.db").exists()  # the plaintext bbolt file is gone
    assert files.read_file_header(result.path).member_id == 2


async def test_one_backup_at_a_time(member_dir: Path, tmp_path: Path, caplog) -> None:
    gate = trio.Event()
    build, calls = _builder(member_dir, gate)
    registry = CollectorRegistry()
    sched = BackupScheduler(_settings(tmp_path), build, str(member_dir), registry)
    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(sched, results))
        while not calls:
            await trio.sleep(0.01)
        assert await sched.run_once() is None  # the first is still running
        assert _value(registry, "securekv_backup_in_progress") == 1
        gate.set()
    assert len(results) == 1 and results[0] is not None and len(calls) == 1
    assert any("still running" in r.getMessage() for r in caplog.records)
    # another writer (the systemd timer, another member) holding the directory: refused, counted
    with backupdir.exclusive(tmp_path / "backups"):
        assert await sched.run_once() is None
    assert _value(registry, "securekv_backup_failures_total") == 1
    assert read_key_file(str(tmp_path / "k"))  # untouched


async def _collect(sched: BackupScheduler, results: list) -> None:
    results.append(await sched.run_once())
