"""The issue's round trip: a member's data saved as an encrypted snapshot (a key file, and a
passphrase) with `securekv ctl snapshot save`, restored into three data dirs with a new
--initial-cluster; the three members form a cluster, hold every key, and agree
(`etcdctl endpoint hashkv`) — with the source's own hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_harness import REPO, TOKEN, Cluster, grpc_put_many, poll

KEYS = 300


def skv(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "securekv", *args], capture_output=True, text=True, timeout=120,
                          env=e)


@pytest.fixture(scope="module")
def saved(pki, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One source member (a one-member cluster), written to and saved twice, then stopped."""
    tmp_path = tmp_path_factory.mktemp("encrypted-source")
    src = Cluster("securekv", pki, tmp_path / "cluster")
    try:
        src.start(names=["src"])
        return _fill_and_save(src, tmp_path)
    finally:
        src.close()


def _fill_and_save(src: Cluster, tmp_path: Path) -> dict:
    node = src.nodes["src"]
    keys = [f"rt/{i:04d}".encode() for i in range(KEYS)]
    assert grpc_put_many(node, src.pki, keys, b"payload-" + b"x" * 200) == KEYS
    node.ctl("put", "rt/0000", "overwritten")
    node.ctl("del", "rt/0001")
    lease = json.loads(node.ctl("lease", "grant", "600", "-w", "json").stdout)["ID"]
    node.ctl("put", "leased", "v", "--lease", f"{lease:x}")
    rev = json.loads(node.ctl("get", "rt/0002", "-w", "json").stdout)["header"]["revision"]
    node.ctl("compaction", str(rev - 5))
    want = json.loads(node.ctl("get", "", "--prefix", "-w", "json").stdout)
    hashkv = src.hashkvs()["src"]

    key = tmp_path / "backup.key"
    assert skv("ctl", "snapshot", "keygen", str(key)).returncode == 0
    pw = tmp_path / "passphrase"
    pw.write_text("a long and memorable passphrase\n")
    pw.chmod(0o600)
    base = ["ctl", "--endpoints", node.endpoint, "--cacert", str(src.pki.ca), "--cert", str(src.pki.client_cert),
            "--key", str(src.pki.client_key), "snapshot", "save"]
    files = {"key": (tmp_path / "k.snap", ["--encryption-key-file", str(key)]),
             "passphrase": (tmp_path / "p.snap", ["--passphrase-file", str(pw)])}
    for path, flags in files.values():
        out = skv(*base, str(path), *flags)
        assert out.returncode == 0, out.stderr
    return {"want": want, "hashkv": hashkv, "files": files, "lease": lease}


@pytest.mark.parametrize("how", ["key", "passphrase"])
def test_encrypted_snapshot_restores_into_a_new_three_member_cluster(how: str, saved: dict, make_cluster) -> None:
    path, flags = saved["files"][how]
    c: Cluster = make_cluster("securekv", start=False)
    names = ["n1", "n2", "n3"]
    nodes = [c.new_node(n) for n in names]
    ic = c.initial_cluster(names)
    for node in nodes:
        out = skv("ctl", "snapshot", "restore", str(path), "--data-dir", str(node.data_dir), "--name", node.name,
                  "--initial-cluster", ic, "--initial-cluster-token", TOKEN,
                  "--initial-advertise-peer-urls", node.peer_url, *flags)
        assert out.returncode == 0, out.stderr
    for node in nodes:
        node.start(ic, "new")
    for node in nodes:
        node.wait_healthy()
    for node in nodes:
        poll(lambda: sorted(m.get("name", "") for m in c.members(node)) == names, 30,
             f"{node.name}'s member list to show the three restored members")
    revision = c.wait_converged(timeout=60)
    want = saved["want"]
    assert revision == want["header"]["revision"]
    hashes = c.hashkvs()
    assert set(hashes.values()) == {saved["hashkv"]}  # the three agree, and with the source
    for node in nodes:
        got = json.loads(node.ctl("get", "", "--prefix", "-w", "json", "--consistency=s").stdout)
        assert got["kvs"] == want["kvs"] and got["count"] == KEYS  # every key (one deleted, one leased added)
        assert node.ctl("lease", "list").stdout.split()[-1] == f"{saved['lease']:016x}"
    # and the new cluster goes on from there
    assert nodes[1].ctl("put", "after", "restore").stdout.strip() == "OK"
    assert c.wait_converged(timeout=30) == revision + 1
