"""Maintenance.Snapshot streams an etcd-format (bbolt) snapshot of our backend.

Proof by the real tools: ``etcdctl snapshot save`` checks the stream, ``etcdctl snapshot
status`` (bbolt's own consistency check and hash) reads it, ``etcdctl snapshot restore``
turns it into an etcd data dir, and the real ``etcd`` started on that dir serves every key
with the revisions, versions and leases securekv served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import sqlite3
import struct
import subprocess
from pathlib import Path

from server_harness import ETCDCTL, clean_stderr

from securekv.client import Client, boltread, op_put
from securekv.proto import auth_pb2, kv_pb2, rpc_pb2
from securekv.server.cluster import Member, Membership
from securekv.server.etcdsnap import LeasePB, export_snapshot, member_json, rev_key
from securekv.server.persist import encode_alarms, encode_lease_data
from securekv.storage import Backend, Lease, Revision, WriteBatch

ETCD_BUCKETS = [b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"key", b"lease", b"members",
                b"members_removed", b"meta"]


def status_json(path: Path) -> dict:
    out = subprocess.run([ETCDCTL, "snapshot", "status", str(path), "-w", "json"], capture_output=True, text=True,
                         timeout=60, env={"ETCDCTL_API": "3"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def buckets_of(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    bolt = boltread.BoltFile(path.read_bytes())
    assert bolt.check() == []
    out = {}
    for _f, name, value in bolt.bucket_items(bolt.root):
        root = struct.unpack_from("<Q", value)[0]
        out[name] = [(k, v) for _f2, k, v in bolt.bucket_items(root, value)]
    return out


def _kv(key: bytes, create: int, mod: int, version: int, value: bytes, lease: int = 0) -> bytes:
    return kv_pb2.KeyValue(key=key, create_revision=create, mod_revision=mod, version=version, value=value,
                           lease=lease).SerializeToString()


def test_conversion_maps_every_table_onto_etcd_buckets(tmp_path: Path) -> None:
    db = Backend.open(tmp_path / "db.sqlite")
    tomb = kv_pb2.KeyValue(key=b"a", mod_revision=4).SerializeToString()  # ours: key + mod revision
    members = Membership([Member(0x8E9E05C52164694D, "m1", ["https://127.0.0.1:2380"], ["https://127.0.0.1:2379"]),
                          Member(0x10, "", ["https://10.0.0.2:2380?a&b"], (), True)], [0x2A])
    user = auth_pb2.User(name=b"alice", password=b"$2a$10$x", roles=["r"]).SerializeToString()
    db.commit(WriteBatch(
        puts=[Revision(2, 0, b"a", _kv(b"a", 2, 2, 1, b"1")), Revision(3, 0, b"a", _kv(b"a", 2, 3, 2, b"2")),
              Revision(3, 1, b"b", _kv(b"b", 3, 3, 1, b"x", lease=7)), Revision(4, 0, b"a", tomb, True)],
        lease_puts=[Lease(7, 100), Lease(-5, 30), Lease(9, 60, encode_lease_data(42))],
        item_puts=[("auth_users", b"alice", user), ("private", b"x", b"y")],
        meta={"compact_revision": 3, "members": members.encode(), "alarms": encode_alarms(
            [rpc_pb2.AlarmMember(memberID=0x10, alarm=rpc_pb2.NOSPACE)]), "other": b"z"},
        consistent_index=12))
    db.backup_to(tmp_path / "copy.sqlite")
    db.close()
    summary = export_snapshot(tmp_path / "copy.sqlite", tmp_path / "snap.db")
    assert (tmp_path / "snap.db").stat().st_mode & 0o777 == 0o600
    got = buckets_of(tmp_path / "snap.db")
    assert list(got) == ETCD_BUCKETS and summary.keys == sum(len(v) for v in got.values()) == 17
    assert got[b"key"] == [(rev_key(2), _kv(b"a", 2, 2, 1, b"1")), (rev_key(3), _kv(b"a", 2, 3, 2, b"2")),
                           (rev_key(3, 1), _kv(b"b", 3, 3, 1, b"x", lease=7)),
                           (rev_key(4) + b"t", b"\n\x01a")]  # etcd's tombstone: only the key
    assert got[b"meta"] == [(b"consistent_index", struct.pack(">Q", 12)),
                            (b"finishedCompactRev", struct.pack(">Q1sQ", 3, b"_", 0)),
                            (b"scheduledCompactRev", struct.pack(">Q1sQ", 3, b"_", 0))]
    leases = [(struct.unpack(">q", k)[0], LeasePB.FromString(v)) for k, v in got[b"lease"]]
    assert [(i, pb.ID, pb.TTL, pb.RemainingTTL) for i, pb in leases] == [(7, 7, 100, 0), (9, 9, 60, 42),
                                                                         (-5, -5, 30, 0)]
    assert got[b"lease"][0][1] == b"\x08\x07\x10\x64"  # ID=7, TTL=100: exactly gogoproto's bytes
    assert got[b"members"] == [
        (b"10", b'{"id":16,"peerURLs":["https://10.0.0.2:2380?a\\u0026b"],"isLearner":true}'),
        (b"8e9e05c52164694d", b'{"id":10276657743932975437,"peerURLs":["https://127.0.0.1:2380"],"name":"m1",'
                              b'"clientURLs":["https://127.0.0.1:2379"]}')]
    assert member_json(members.members[0x10]) == got[b"members"][0][1]
    assert got[b"members_removed"] == [(b"2a", b"removed")]
    assert got[b"alarm"] == [(rpc_pb2.AlarmMember(memberID=0x10, alarm=rpc_pb2.NOSPACE).SerializeToString(), b"")]
    assert got[b"auth"] == [(b"authRevision", struct.pack(">Q", 1))] and got[b"authUsers"] == [(b"alice", user)]
    assert got[b"cluster"] == [(b"clusterVersion", b"3.4.0")] and got[b"authRoles"] == []
    st = status_json(tmp_path / "snap.db")
    assert st["revision"] == 4 and st["totalKey"] == 17 and st["totalSize"] == summary.size
    assert boltread.snapshot_status(tmp_path / "snap.db") == boltread.DBStatus(
        st["hash"], st["revision"], st["totalKey"], st["totalSize"])


def test_conversion_of_a_bad_copy_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "copy.sqlite").write_bytes(b"not a database" * 100)
    try:
        export_snapshot(tmp_path / "copy.sqlite", tmp_path / "snap.db")
    except sqlite3.DatabaseError:
        pass
    else:
        raise AssertionError("a non-database copy was converted")
    assert not (tmp_path / "snap.db").exists()


def _kvs(member, *args: str) -> tuple[int, list[dict]]:
    out = json.loads(member.ctl("get", *args, "-w", "json").stdout)
    return out["header"]["revision"], out.get("kvs", [])


def test_snapshot_restores_into_real_etcd(make_member, tmp_path: Path) -> None:
    m = make_member("securekv")
    c = m.certs
    with Client([m.endpoint], cacert=str(c.ca), cert=str(c.client_cert), key=str(c.client_key), timeout=20) as cl:
        cl.put("a", "1")
        cl.put("a", "2")
        cl.put("b", "gone")
        cl.delete("b")
        for batch in range(16):  # 1600 keys, sub revisions 0..99 within each revision
            cl.txn(success=[op_put(f"bulk/{batch:02d}/{i:03d}", f"v{batch}-{i}" * 3) for i in range(100)])
        compact_at = cl.put("a", "3").header.revision
        for i in range(12):  # values > 4 KiB: overflow pages
            cl.put(f"big/{i}", bytes([65 + i]) * (4096 + 1500 * i))
        cl.put("huge", random.Random(5).randbytes(1_000_000))
        lease = cl.lease_grant(600).ID
        cl.put("leased", "v", lease=lease)
        cl.compact(compact_at)
        cl.put("a", "4")
        cl.delete("bulk/15/", prefix=True)
        cl.put("after", "compaction")
    revision, served = _kvs(m, "", "--prefix")
    _, served_old = _kvs(m, "a", "--rev", str(compact_at))
    assert len(served) == 1500 + 12 + 4 and served_old[0]["value"] == base64.b64encode(b"3").decode()

    snap = tmp_path / "snap.db"
    m.ctl("snapshot", "save", str(snap))
    assert not list((m.data_dir / "member").glob(".snapshot-*"))  # both temp files removed
    data = snap.read_bytes()
    assert len(data) % 4096 == 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
    st = status_json(snap)
    assert st["revision"] == revision
    m.stop()
    with Backend.open(m.data_dir / "member" / "db.sqlite") as db:
        rows = db.revision_count()
    # key rows + meta (index, 2 compaction marks) + lease + member + cluster version + auth revision
    assert st["totalKey"] == rows + 3 + 1 + 1 + 1 + 1
    ours = boltread.snapshot_status(snap)
    assert (ours.hash, ours.revision, ours.total_key, ours.total_size) == (
        st["hash"], st["revision"], st["totalKey"], st["totalSize"])

    etcd = make_member("etcd", name="restored", start=False)
    peer = f"https://127.0.0.1:{etcd.peer_port}"
    out = subprocess.run([ETCDCTL, "snapshot", "restore", str(snap), "--data-dir", str(etcd.data_dir),
                          "--name", "m1", "--initial-cluster", f"m1={peer}", "--initial-advertise-peer-urls", peer],
                         capture_output=True, text=True, timeout=120, env={"ETCDCTL_API": "3"})
    assert out.returncode == 0, out.stderr
    etcd.start()
    assert _kvs(etcd, "", "--prefix") == (revision, served)  # every key, value, revision, version, lease
    assert _kvs(etcd, "a", "--rev", str(compact_at))[1] == served_old
    bad = etcd.ctl("get", "a", "--rev", str(compact_at - 1), check=False)
    assert clean_stderr(bad.stderr) == "Error: etcdserver: mvcc: required revision has been compacted"
    ttl = json.loads(etcd.ctl("lease", "timetolive", f"{lease:x}", "--keys", "-w", "json").stdout)
    assert ttl["id"] == lease and ttl["granted-ttl"] == 600 and [base64.b64decode(k) for k in ttl["keys"]] == [b"leased"]
    # etcd keeps writing into the file we built (bbolt allocating on top of our pages).
    etcd.ctl("put", "new", "x")
    after = _kvs(etcd, "", "--prefix")
    assert after[0] == revision + 1 and len(after[1]) == len(served) + 1
    etcd.ctl("defrag")  # bbolt copies every page of the tree into a new file
    assert _kvs(etcd, "", "--prefix") == after
