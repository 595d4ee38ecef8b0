"""`securekv serve` on a data dir written by the real etcd 3.4: one made by `etcdctl snapshot
restore`, and one a killed etcd member left (its bbolt file behind its WAL). Every key,
revision and lease is served as etcd served it; the original is kept aside untouched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from server_harness import ETCDCTL, Certs, Member, etcdctl, free_port


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def everything(m: Member) -> dict:
    """Keys with their revisions, versions and leases; the store revision; the leases' TTLs."""
    got = json.loads(m.ctl("get", "", "--from-key", "-w", "json").stdout)
    kvs = sorted((kv["key"], kv.get("value", ""), kv["create_revision"], kv["mod_revision"], kv["version"],
                  kv.get("lease", 0)) for kv in got.get("kvs", []))
    leases = json.loads(m.ctl("lease", "list", "-w", "json").stdout).get("leases") or []
    return {"kvs": kvs, "revision": got["header"]["revision"], "leases": sorted(int(x["id"]) for x in leases)}


def write_history(m: Member) -> int:
    """A history with overwrites, a delete, a compaction and a lease with a key; the lease ID."""
    for i in range(5):
        m.ctl("put", f"k{i}", f"v{i}")
    m.ctl("put", "k1", "again")
    m.ctl("del", "k2")
    lease = int(m.ctl("lease", "grant", "600", "-w", "json").stdout and
                json.loads(m.ctl("lease", "grant", "600", "-w", "json").stdout)["ID"])
    m.ctl("put", "leased", "x", "--lease", f"{lease:x}")
    rev = json.loads(m.ctl("get", "k0", "-w", "json").stdout)["header"]["revision"]
    m.ctl("compaction", str(rev - 2))
    for i in range(5, 12):
        m.ctl("put", f"k{i}", f"v{i}")
    return lease


def serve_on(tmp_path: Path, certs: Certs, data_dir: Path, name: str, peer_port: int) -> Member:
    m = Member("securekv", data_dir, certs)
    m.peer_port = peer_port
    original_argv = m.argv

    def argv() -> list[str]:
        args = original_argv()
        i = args.index("--name")
        args[i + 1] = name
        return args

    m.argv = argv  # type: ignore[method-assign]
    return m


def test_data_dir_from_etcdctl_snapshot_restore(make_member, tmp_path: Path, certs: Certs) -> None:
    etcd = make_member("etcd", name="etcd")
    lease = write_history(etcd)
    want = everything(etcd)
    snap = tmp_path / "backup.db"
    etcd.ctl("snapshot", "save", str(snap))
    etcd.kill()
    restored = tmp_path / "restored"
    peer = free_port()
    r = subprocess.run([ETCDCTL, "snapshot", "restore", str(snap), "--data-dir", str(restored), "--name", "m1",
                        "--initial-cluster", f"m1=https://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
                        f"https://127.0.0.1:{peer}"], capture_output=True, text=True, env={"ETCDCTL_API": "3"},
                       timeout=60)
    assert r.returncode == 0, r.stderr
    before = tree_digest(restored)
    m = serve_on(tmp_path, certs, restored, "m1", peer)
    m.start()
    try:
        got = everything(m)
        assert got["kvs"] == want["kvs"] and got["revision"] == want["revision"]
        assert lease in got["leases"]
        ttl = json.loads(m.ctl("lease", "timetolive", f"{lease:x}", "--keys", "-w", "json").stdout)
        assert ttl["ttl"] > 0 and ttl["granted-ttl"] == 600
        # the compaction survived, and writes continue after the restored revision
        assert "required revision has been compacted" in m.ctl("get", "k0", "--rev", "2", check=False).stderr
        assert json.loads(m.ctl("put", "new", "1", "-w", "json").stdout)["header"]["revision"] == want["revision"] + 1
        assert "converted an etcd 3.4 data dir" in m.output()
    finally:
        m.kill()
    aside = Path(str(restored) + ".etcd-original")
    assert tree_digest(aside) == before  # kept aside, untouched
    assert (restored / "member" / "db.sqlite").exists()
    # a restart opens the converted dir as securekv's own (no second conversion)
    m.start()
    try:
        assert everything(m)["kvs"][0][0] == want["kvs"][0][0]
        assert m.output().count("converted an etcd 3.4 data dir") == 1
    finally:
        m.kill()


def test_data_dir_of_a_killed_etcd_member_includes_its_wal_tail(make_member, tmp_path: Path, certs: Certs) -> None:
    """The bbolt file lags the log (a long batch interval, then kill -9): the committed entries
    only in etcd's WAL must come back too, as etcd would replay them."""
    etcd = make_member("etcd", name="etcd", extra=["--backend-batch-interval", "1h", "--backend-batch-limit",
                                                  "1000000", "--snapshot-count", "8"])
    lease = write_history(etcd)
    want = everything(etcd)
    data = etcd.data_dir
    etcd.kill()  # SIGKILL: nothing flushed beyond what etcd already made durable (the WAL)
    snaps = sorted((data / "member" / "snap").glob("*.snap"))
    assert snaps, "etcd wrote no .snap (the test needs the snapshot + WAL tail path)"
    before = tree_digest(data)
    m = serve_on(tmp_path, certs, data, "m1", etcd.peer_port)
    m.start()
    try:
        got = everything(m)
        assert got["kvs"] == want["kvs"], (got, want)
        assert got["revision"] == want["revision"]
        assert lease in got["leases"]
        status = json.loads(m.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
        assert status["raftIndex"] >= want["revision"]  # the log continues where etcd's stopped
        m.ctl("put", "after", "conversion")
        assert m.ctl("get", "after", "--print-value-only").stdout.strip() == "conversion"
    finally:
        m.kill()
    assert tree_digest(Path(str(data) + ".etcd-original")) == before


def test_running_etcd_is_refused(make_member, tmp_path: Path, certs: Certs) -> None:
    etcd = make_member("etcd", name="etcd")
    m = serve_on(tmp_path, certs, etcd.data_dir, "m1", free_port())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    r = subprocess.run(m.argv(), capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "still running" in r.stderr, r.stderr
    assert not Path(str(etcd.data_dir) + ".etcd-original").exists()
    etcd.ctl("put", "still", "fine")


def test_wal_reader_rejects_corruption_in_the_middle(tmp_path: Path, make_member) -> None:
    from securekv.errors import CorruptionError
    from securekv.server.etcddatadir import read_wal

    etcd = make_member("etcd", name="etcd")
    for i in range(20):
        etcd.ctl("put", f"k{i}", "v")
    etcd.kill()
    wal_dir = etcd.data_dir / "member" / "wal"
    log_ = read_wal(wal_dir)
    assert log_.member_id and log_.cluster_id and log_.commit >= 20 and log_.entries
    seg = sorted(wal_dir.glob("*.wal"))[0]
    data = bytearray(seg.read_bytes())
    data[data.index(b"k10") + 1] ^= 0x01  # inside an entry's payload: its CRC no longer matches
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / seg.name).write_bytes(bytes(data))
    (bad / "0000000000000001-0000000000000100.wal").write_bytes(b"\0" * 64)  # not the last segment any more
    with pytest.raises(CorruptionError, match=r"etcd WAL .*\.wal at offset \d+: crc mismatch"):
        read_wal(bad)
