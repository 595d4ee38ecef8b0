"""``securekv ctl snapshot restore``: an etcd 3.4 snapshot (securekv's or the real etcd's) → a new
securekv data dir that ``securekv serve`` starts as a new cluster holding the same data.

Real processes: ``/usr/bin/etcd`` and ``securekv serve`` on free loopback ports with mutual TLS,
the real ``etcdctl`` to save snapshots and to read what is served, and the real ``etcdctl
snapshot restore`` side by side with ours for messages and exit codes. The refusal tests need no
server (the snapshot is built in-process by the exporter the Snapshot RPC uses).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import ETCDCTL, REPO, clean_stderr

from securekv.client import Client, op_put
from securekv.proto import kv_pb2
from securekv.server.etcdsnap import LeasePB, export_snapshot, rev_key
from securekv.server.persist import encode_lease_data
from securekv.storage import Backend, Lease, Revision, WriteBatch
from securekv.storage.boltwrite import write_bolt

LEASE_TTL = 600


def skv_restore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def etcd_restore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, "snapshot", "restore", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})


def log_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def error_line(stderr: str) -> str:
    return clean_stderr(stderr)


def _kv(key: bytes, create: int, mod: int, version: int, value: bytes, lease: int = 0) -> bytes:
    return kv_pb2.KeyValue(key=key, create_revision=create, mod_revision=mod, version=version, value=value,
                           lease=lease).SerializeToString()


def with_digest(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data + hashlib.sha256(data).digest())
    return path


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small snapshot as the Snapshot RPC streams it (bbolt + SHA-256), built in-process: a key
    overwritten, one deleted, a txn's sub revisions, a leased key, a compaction at revision 3."""
    d = tmp_path_factory.mktemp("snapfile")
    with Backend.open(d / "db.sqlite") as db:
        tomb = kv_pb2.KeyValue(key=b"gone", mod_revision=5).SerializeToString()
        db.commit(WriteBatch(
            puts=[Revision(3, 0, b"a", _kv(b"a", 2, 3, 2, b"2")),
                  Revision(4, 0, b"gone", _kv(b"gone", 4, 4, 1, b"x")), Revision(5, 0, b"gone", tomb, True),
                  Revision(6, 0, b"t/1", _kv(b"t/1", 6, 6, 1, b"1")), Revision(6, 1, b"t/2", _kv(b"t/2", 6, 6, 1, b"2")),
                  Revision(7, 0, b"leased", _kv(b"leased", 7, 7, 1, b"v", lease=0x1234))],
            lease_puts=[Lease(0x1234, LEASE_TTL, encode_lease_data(0))],
            meta={"compact_revision": 3}, consistent_index=9))
        db.backup_to(d / "copy.sqlite")
    export_snapshot(d / "copy.sqlite", d / "snap.db")
    return with_digest(d / "snap.db")


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- refusals: nothing created, nothing changed ---------------------------------------------------
def test_corrupted_snapshot_is_refused_and_leaves_nothing(snapshot_file: Path, tmp_path: Path) -> None:
    data = bytearray(snapshot_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    before = listing(tmp_path)
    out = skv_restore(str(bad), "--data-dir", str(tmp_path / "new" / "restored"))
    assert out.returncode == 1 and out.stdout == ""
    computed = hashlib.sha256(bytes(data[:-32])).digest()
    assert error_line(out.stderr) == ("Error: expected sha256 [" + " ".join(map(str, data[-32:])) + "], got ["
                                      + " ".join(map(str, computed)) + "]")
    assert listing(tmp_path) == before  # no data dir, no temp dir, not even the parent made for it

    # Past the hash (skipped), bbolt's own consistency check still refuses a damaged page layout.
    raw = bytearray(snapshot_file.read_bytes()[:-32])
    struct.pack_into("<Q", raw, 4096 * 3, 999)  # a leaf page that claims another page id
    broken = tmp_path / "broken.db"
    broken.write_bytes(bytes(raw))
    before = listing(tmp_path)
    out = skv_restore(str(broken), "--data-dir", str(tmp_path / "r2"), "--skip-hash-check")
    assert out.returncode == 1
    assert error_line(out.stderr).startswith("Error: snapshot file integrity check failed. ")
    assert listing(tmp_path) == before


def test_existing_data_dir_or_wal_dir_is_refused_unchanged(snapshot_file: Path, tmp_path: Path) -> None:
    existing = tmp_path / "data"
    (existing / "member").mkdir(parents=True)
    (existing / "member" / "keep").write_text("mine")
    before = listing(tmp_path)
    out = skv_restore(str(snapshot_file), "--data-dir", str(existing))
    assert (out.returncode, error_line(out.stderr)) == (1, f'Error: data-dir "{existing}" exists')
    assert log_lines(out.stderr) == []  # refused before anything is read (as etcdctl)
    wal = tmp_path / "wal"
    wal.mkdir()
    out = skv_restore(str(snapshot_file), "--data-dir", str(tmp_path / "fresh"), "--wal-dir", str(wal))
    assert (out.returncode, error_line(out.stderr)) == (1, f'Error: wal-dir "{wal}" exists')
    assert listing(tmp_path) == before + ["wal"] and (existing / "member" / "keep").read_text() == "mine"


def test_hashless_snapshot_needs_skip_hash_check(snapshot_file: Path, tmp_path: Path) -> None:
    hashless = tmp_path / "copied-db"  # e.g. member/snap/db copied out of a data dir
    hashless.write_bytes(snapshot_file.read_bytes()[:-32])
    out = skv_restore(str(hashless), "--data-dir", str(tmp_path / "r1"))
    assert (out.returncode, error_line(out.stderr)) == (1, "Error: snapshot missing hash but --skip-hash-check=false")
    assert not (tmp_path / "r1").exists()
    out = skv_restore(str(hashless), "--data-dir", str(tmp_path / "r1"), "--skip-hash-check")
    assert out.returncode == 0, out.stderr
    with Backend.open(tmp_path / "r1" / "member" / "db.sqlite") as db:
        assert [(r.main, r.sub, r.key, r.tombstone) for r in db.iter_revisions()] == [
            (3, 0, b"a", False), (4, 0, b"gone", False), (5, 0, b"gone", True), (6, 0, b"t/1", False),
            (6, 1, b"t/2", False), (7, 0, b"leased", False)]
        assert [(x.id, x.ttl) for x in db.iter_leases()] == [(0x1234, LEASE_TTL)]
        assert db.get_meta("compact_revision") == 3
        # The old cluster's membership is dropped (as etcd); the new founders' is there, at the
        # index of their bootstrap entries, where the WAL's snapshot marker is.
        assert db.consistent_index() == 1
        members = json.loads(db.get_meta("members"))["members"]
        assert [(m["name"], m["peerURLs"]) for m in members] == [("default", ["http://localhost:2380"])]
    from securekv.storage import WAL

    wal, state = WAL.open(str(tmp_path / "r1" / "member" / "wal"))
    wal.close()
    assert (state.snapshot.index, list(state.snapshot.voters)) == (1, [members[0]["id"]])


def test_unfinished_compaction_is_finished_on_import(tmp_path: Path) -> None:
    """A snapshot taken while etcd was still compacting (scheduledCompactRev > finishedCompactRev):
    etcd finishes the compaction when it starts; the import does it with our store's rule."""
    rows = [(rev_key(2), _kv(b"k", 2, 2, 1, b"1")), (rev_key(3), _kv(b"k", 2, 3, 2, b"2")),
            (rev_key(4), _kv(b"k", 2, 4, 3, b"3"))]
    rev = struct.Struct(">Q1sQ")
    lease = LeasePB(ID=5, TTL=30, RemainingTTL=12).SerializeToString()
    with open(tmp_path / "snap.db", "w+b") as out:
        write_bolt(out, [(b"key", rows), (b"lease", [(struct.pack(">q", 5), lease)]),
                         (b"meta", [(b"consistent_index", struct.pack(">Q", 40)),
                                    (b"finishedCompactRev", rev.pack(2, b"_", 0)),
                                    (b"scheduledCompactRev", rev.pack(3, b"_", 0))])])
    out = skv_restore(str(with_digest(tmp_path / "snap.db")), "--data-dir", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert [line["msg"] for line in log_lines(out.stderr)] == [
        "restoring snapshot", "resume scheduled compaction", "restored last compact revision", "added member",
        "restored snapshot"]
    with Backend.open(tmp_path / "r" / "member" / "db.sqlite") as db:
        assert [(r.main, r.key) for r in db.iter_revisions()] == [(3, b"k"), (4, b"k")]
        assert db.get_meta("compact_revision") == 3
        assert [(x.id, x.ttl, x.data) for x in db.iter_leases()] == [(5, 30, encode_lease_data(12))]


# -- the same messages and exit codes as etcdctl --------------------------------------------------
def test_messages_and_exit_codes_match_etcdctl(snapshot_file: Path, tmp_path: Path) -> None:
    """Both tools, same arguments, own working directories. The same stdout (nothing), exit code,
    ``Error:`` line and the same sequence of log messages with the same fields — except
    ``snap-dir``, which etcd writes and we do not. What is written differs on purpose: etcd makes
    ``member/snap/db`` + a ``.snap`` file and, on failure, leaves its half-made data dir behind;
    we make ``member/db.sqlite`` + ``member/wal`` and leave nothing on failure."""
    snap = str(snapshot_file)
    hashless = tmp_path / "hashless.db"
    hashless.write_bytes(snapshot_file.read_bytes()[:-32])
    bad = bytearray(snapshot_file.read_bytes())
    bad[100] ^= 1
    (tmp_path / "bad.db").write_bytes(bytes(bad))
    three = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3"
    scenarios = [
        ("defaults", [snap]),
        ("three", [snap, "--data-dir", "d", "--name", "b", "--initial-cluster", three, "--initial-cluster-token",
                   "tok", "--initial-advertise-peer-urls", "http://127.0.0.1:2"]),
        ("wal-dir", [snap, "--data-dir", "d", "--wal-dir", "w/wal"]),
        ("exists", [snap, "--data-dir", "existing"]),
        ("wal-exists", [snap, "--data-dir", "d", "--wal-dir", "existing"]),
        ("bad hash", [str(tmp_path / "bad.db"), "--data-dir", "d"]),
        ("no hash", [str(hashless), "--data-dir", "d"]),
        ("no hash, skipped", [str(hashless), "--data-dir", "d", "--skip-hash-check"]),
        ("missing file", [str(tmp_path / "missing.db"), "--data-dir", "d"]),
        ("no file argument", []),
        ("name not in cluster", [snap, "--name", "m1"]),
        ("advertise differs", [snap, "--initial-advertise-peer-urls", "http://127.0.0.1:1"]),
        ("advertise extra", [snap, "--initial-advertise-peer-urls", "http://localhost:2380,http://127.0.0.1:1"]),
        ("duplicate url", [snap, "--initial-cluster", "default=http://localhost:2380,x=http://localhost:2380"]),
        ("url with path", [snap, "--initial-cluster", "default=http://localhost:2380/p"]),
        ("bad scheme", [snap, "--initial-advertise-peer-urls", "ftp://localhost:2380"]),
        ("no port", [snap, "--initial-cluster", "default=http://localhost"]),
    ]
    for label, args in scenarios:
        runs = {}
        for tool, run in (("etcdctl", etcd_restore), ("securekv", skv_restore)):
            cwd = tmp_path / tool / label.replace(" ", "_").replace(",", "")
            (cwd / "existing").mkdir(parents=True)
            runs[tool] = (run(*args, cwd=cwd), cwd)
        (theirs, their_dir), (ours, our_dir) = runs["etcdctl"], runs["securekv"]
        assert (ours.returncode, ours.stdout, error_line(ours.stderr)) == (
            theirs.returncode, theirs.stdout, error_line(theirs.stderr)), label
        strip = [{k: v for k, v in line.items() if k not in ("ts", "caller", "snap-dir")}
                 for line in log_lines(theirs.stderr)]
        assert [{k: v for k, v in line.items() if k not in ("ts", "caller")} for line in log_lines(ours.stderr)] \
            == strip, label
        made_theirs, made_ours = listing(their_dir), listing(our_dir)
        if theirs.returncode == 0:
            top = {p.split("/")[0] for p in made_theirs}
            assert {p.split("/")[0] for p in made_ours} == top, label  # same directories made
            assert any(p.endswith("member/db.sqlite") for p in made_ours), label
            assert any(p.endswith(".wal") for p in made_ours), label
        else:
            assert made_ours == ["existing"], label  # etcd may leave a partial data dir; we never do


# -- real servers -----------------------------------------------------------------------------------
def _kvs(member, *args: str) -> dict:
    out = json.loads(member.ctl("get", *args, "-w", "json").stdout)
    for field in ("cluster_id", "member_id", "raft_term"):
        out["header"].pop(field, None)
    return out


def _restore_for(member, snapshot: Path) -> subprocess.CompletedProcess:
    peer = f"https://127.0.0.1:{member.peer_port}"
    out = skv_restore(str(snapshot), "--data-dir", str(member.data_dir), "--name", "m1",
                      "--initial-cluster", f"m1={peer}", "--initial-advertise-peer-urls", peer)
    assert out.returncode == 0 and out.stdout == "", out.stderr
    return out


def _write_history(member) -> tuple[int, int]:
    """Overwrites, a delete, a txn of many sub revisions, a leased key, a compaction, then more
    writes. Returns (lease ID, compaction revision)."""
    c = member.certs
    with Client([member.endpoint], cacert=str(c.ca), cert=str(c.client_cert), key=str(c.client_key),
                timeout=20) as cl:
        cl.put("a", "1")
        cl.put("a", "2")
        cl.put("b", "gone")
        cl.delete("b")
        cl.txn(success=[op_put(f"bulk/{i:03d}", f"value-{i}") for i in range(50)])
        compact_at = cl.put("a", "3").header.revision
        lease = cl.lease_grant(LEASE_TTL).ID
        cl.put("leased", "v", lease=lease)
        cl.put("big", "x" * 9000)  # an overflow page in bbolt
        cl.compact(compact_at)
        cl.put("a", "4")
        cl.delete("bulk/04", prefix=True)
    return lease, compact_at


def _served(member, compact_at: int) -> dict:
    served = {"all": _kvs(member, "", "--prefix"), "old": _kvs(member, "a", "--rev", str(compact_at)),
              "leases": member.ctl("lease", "list").stdout,
              "compacted": error_line(member.ctl("get", "a", "--rev", str(compact_at - 1), check=False).stderr)}
    # a, 40 of the 50 bulk keys, leased, big; "a" as of the compaction is its third version
    assert len(served["all"]["kvs"]) == 43 and served["old"]["kvs"][0]["version"] == 3
    assert served["leases"].startswith("found 1 leases\n")
    return served


def _lease_ttl(member, lease: int) -> dict:
    return json.loads(member.ctl("lease", "timetolive", f"{lease:x}", "--keys", "-w", "json").stdout)


def test_real_etcd_snapshot_restores_into_securekv(make_member, tmp_path: Path) -> None:
    etcd = make_member("etcd", name="etcd")
    lease, compact_at = _write_history(etcd)
    want = _served(etcd, compact_at)
    assert want["compacted"] == "Error: etcdserver: mvcc: required revision has been compacted"
    snap = tmp_path / "etcd.db"
    etcd.ctl("snapshot", "save", str(snap))
    etcd.stop()

    skv = make_member("securekv", name="restored", start=False)
    _restore_for(skv, snap)
    skv.start()
    assert _served(skv, compact_at) == want  # every key, value, revision, version, lease; current revision
    ttl = _lease_ttl(skv, lease)
    assert ttl["granted-ttl"] == LEASE_TTL and [k for k in ttl["keys"]] == ["bGVhc2Vk"]
    assert LEASE_TTL - 30 < ttl["ttl"] <= LEASE_TTL + 5  # renewed with its TTL on the new leader
    skv.ctl("put", "after", "restore")
    assert _kvs(skv, "after")["header"]["revision"] == want["all"]["header"]["revision"] + 1


def test_securekv_save_restore_serve_round_trip(make_member, tmp_path: Path) -> None:
    src = make_member("securekv", name="source")
    lease, compact_at = _write_history(src)
    want = _served(src, compact_at)
    hashkv = json.loads(src.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]
    snap = tmp_path / "backup.db"
    c = src.certs
    saved = subprocess.run([sys.executable, "-m", "securekv", "ctl", "--endpoints", src.endpoint, "--cacert", str(c.ca),
                            "--cert", str(c.client_cert), "--key", str(c.client_key), "snapshot", "save", str(snap),
                            "--plaintext"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert saved.returncode == 0, saved.stderr
    src.stop()

    dst = make_member("securekv", name="restored", start=False)
    _restore_for(dst, snap)
    dst.start()
    assert _served(dst, compact_at) == want
    got = json.loads(dst.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]
    assert (got["hash"], got["compact_revision"]) == (hashkv["hash"], hashkv["compact_revision"])
    assert _lease_ttl(dst, lease)["granted-ttl"] == LEASE_TTL
    dst.stop()
    # The restored member keeps its data across a restart (the WAL and the backend agree).
    dst.start()
    assert _served(dst, compact_at) == want
