"""Disaster recovery into a new 3-member securekv cluster: one snapshot file, restored three times
with `securekv ctl snapshot restore` (each member its own --name, the same --initial-cluster and
token), then the three members served with --initial-cluster-state new. They must form one
cluster holding the same data: the same keys and revisions on every member, the same
`endpoint hashkv`, the leases, and writes replicated after the restore."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from cluster_harness import REPO, TOKEN, Cluster, poll

from securekv.proto import kv_pb2
from securekv.server.etcdsnap import export_snapshot
from securekv.server.persist import encode_lease_data
from securekv.storage import Backend, Lease, Revision, WriteBatch

LEASE = 0x2A2A
KEYS = 200


def _snapshot(base: Path) -> Path:
    """A snapshot as the Snapshot RPC streams it (bbolt + SHA-256): KEYS keys at revisions 2..,
    one overwritten, one deleted, one leased, compacted at revision 10."""
    base.mkdir(parents=True)
    puts = []
    for i in range(KEYS):
        key = f"dr/{i:04d}".encode()
        puts.append(Revision(2 + i, 0, key, kv_pb2.KeyValue(key=key, create_revision=2 + i, mod_revision=2 + i,
                                                           version=1, value=b"v%d" % i).SerializeToString()))
    top = 2 + KEYS
    puts.append(Revision(top, 0, b"dr/0000", kv_pb2.KeyValue(key=b"dr/0000", create_revision=2, mod_revision=top,
                                                          version=2, value=b"new").SerializeToString()))
    puts.append(Revision(top + 1, 0, b"dr/0001", kv_pb2.KeyValue(key=b"dr/0001", mod_revision=top + 1)
                         .SerializeToString(), True))
    puts.append(Revision(top + 2, 0, b"leased", kv_pb2.KeyValue(key=b"leased", create_revision=top + 2,
                                                             mod_revision=top + 2, version=1, value=b"x",
                                                             lease=LEASE).SerializeToString()))
    with Backend.open(base / "db.sqlite") as db:
        db.commit(WriteBatch(puts=puts, lease_puts=[Lease(LEASE, 300, encode_lease_data(0))],
                             meta={"compact_revision": 10}, consistent_index=top + 7))
        db.backup_to(base / "copy.sqlite")
    export_snapshot(base / "copy.sqlite", base / "snap.db")
    data = (base / "snap.db").read_bytes()
    (base / "snap.db").write_bytes(data + hashlib.sha256(data).digest())
    return base / "snap.db"


def _get(node, *args: str) -> dict:
    out = json.loads(node.ctl("get", *args, "-w", "json").stdout)
    out["header"] = {"revision": out["header"]["revision"]}
    return out


def test_three_members_restored_from_one_snapshot_form_a_cluster(make_cluster, tmp_path: Path) -> None:
    snap = _snapshot(tmp_path / "backup")
    c: Cluster = make_cluster("securekv", start=False)
    names = ["m1", "m2", "m3"]
    nodes = [c.new_node(n) for n in names]
    ic = c.initial_cluster(names)
    for node in nodes:
        out = subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", str(snap),
                              "--data-dir", str(node.data_dir), "--name", node.name, "--initial-cluster", ic,
                              "--initial-cluster-token", TOKEN, "--initial-advertise-peer-urls", node.peer_url],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
    for node in nodes:
        node.start(ic, "new")
    for node in nodes:
        node.wait_healthy()
    for node in nodes:
        poll(lambda: sorted(m.get("name", "") for m in c.members(node)) == names, 30,
             f"{node.name}'s member list to show the three restored members")

    revision = c.wait_converged(timeout=30)
    assert revision == 2 + KEYS + 2  # the snapshot's current revision
    hashes = c.hashkvs()
    assert len(set(hashes.values())) == 1
    want = _get(nodes[0], "dr/", "--prefix", "--consistency=s")
    assert len(want["kvs"]) == KEYS - 1 and want["kvs"][0]["value"] == "bmV3"  # "new"
    for node in nodes[1:]:
        assert _get(node, "dr/", "--prefix", "--consistency=s") == want
    assert nodes[2].ctl("get", "dr/0005", "--rev", "9", check=False).returncode != 0  # compacted
    for node in nodes:
        assert node.ctl("lease", "list").stdout.split() == ["found", "1", "leases", f"{LEASE:016x}"]
    ttl = json.loads(nodes[1].ctl("lease", "timetolive", f"{LEASE:x}", "--keys", "-w", "json").stdout)
    assert ttl["granted-ttl"] == 300 and 250 < ttl["ttl"] <= 305 and ttl["keys"] == ["bGVhc2Vk"]

    # The new cluster writes on top of the restored revision, and every member applies it.
    leader = c.leader()
    follower = next(n for n in nodes if n is not leader)
    assert follower.ctl("put", "after", "restore").stdout.strip() == "OK"
    assert c.wait_converged(timeout=30) == revision + 1
    nodes[0].ctl("lease", "revoke", f"{LEASE:x}")
    c.wait_converged(timeout=30)
    for node in nodes:
        assert node.ctl("get", "leased", "--consistency=s").stdout == ""  # the revoke deleted its key
