"""Upgrade safety: every data dir fixture ever committed (tests/fixtures/datadir-v<wal>.<schema>,
made by tests/fixtures/make_datadir_fixture.py with the release of its day) still opens.

Checked twice: through the storage layer (format versions, IDs, no repair needed) and through a
real `securekv serve` on a copy, which must serve exactly the keys, revisions, versions, lease
and compaction point the fixture recorded, and then take new writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from securekv.storage import WAL, Backend
from securekv.storage import records as rec
from securekv.storage.backend import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[2]
FIXTURES = sorted((REPO / "tests" / "fixtures").glob("datadir-v*"))


def test_a_fixture_exists_for_the_current_formats() -> None:
    """Changing the WAL format or the backend schema needs a new fixture (and keeps the old)."""
    names = [p.name for p in FIXTURES]
    assert f"datadir-v{rec.WAL_FORMAT_VERSION}.{SCHEMA_VERSION}" in names, (
        "run PYTHONPATH=. python tests/fixtures/make_datadir_fixture.py and commit the result")


@pytest.fixture(params=FIXTURES, ids=lambda p: p.name)
def fixture_copy(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict]:
    src: Path = request.param
    data_dir = tmp_path / "data"
    shutil.copytree(src / "member", data_dir / "member")
    for path in data_dir.rglob("*"):  # as a member leaves them; git does not keep modes
        path.chmod(0o700 if path.is_dir() else 0o600)
    data_dir.chmod(0o700)
    return data_dir, json.loads((src / "expected.json").read_text())


def test_fixture_opens_in_the_storage_layer(fixture_copy: tuple[Path, dict]) -> None:
    data_dir, expected = fixture_copy
    wal, state = WAL.open(data_dir / "member" / "wal")
    try:
        assert state.repaired == 0
        assert state.metadata.member_id == expected["member_id"]
        assert state.metadata.cluster_id == expected["cluster_id"]
        assert state.hard_state.commit == expected["raft_index"]
        assert state.snapshot is not None and state.snapshot.index > 0  # a WAL snapshot marker is in there
        for segment in wal.segments():
            with open(segment, "rb") as f:
                head = f.read(64)
            seed_len = int.from_bytes(head[0:4], "little")
            seed = rec.decode_seed(head[16:16 + seed_len])
            assert seed.version == expected["format"]["wal"]
    finally:
        wal.close()
    with Backend.open(data_dir / "member" / "db.sqlite") as backend:
        version = backend.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == expected["format"]["backend_schema"]
        assert backend.consistent_index() <= expected["raft_index"]
        assert int(backend.get_meta("compact_revision")) == expected["compact_revision"]
        assert {lease.id for lease in backend.iter_leases()} == {l["id"] for l in expected["leases"]}


def test_fixture_is_served_by_this_release(fixture_copy: tuple[Path, dict], tmp_path: Path) -> None:
    from securekv.client import Client, ClientError
    from securekv.torture.members import free_port, make_pki

    data_dir, expected = fixture_copy
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    peer = expected["initial_cluster"].split("=", 1)[1]
    argv = [sys.executable, "-m", "securekv", "serve", "--name", expected["name"], "--data-dir", str(data_dir),
            "--listen-client-urls", url, "--advertise-client-urls", url, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", expected["initial_cluster"], "--initial-cluster-token", expected["token"],
            "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
            "--trusted-ca-file", str(pki.ca), "--client-cert-auth"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        with Client([url], cacert=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key),
                    timeout=30) as c:
            resp = c.get("/", prefix=True)
            assert resp.header.member_id == expected["member_id"]
            assert resp.header.cluster_id == expected["cluster_id"]
            assert resp.header.revision == expected["revision"]
            got = [{"key": kv.key.hex(), "value": kv.value.hex(), "create_revision": kv.create_revision,
                    "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease} for kv in resp.kvs]
            assert got == expected["keys"]
            for lease in expected["leases"]:
                ttl = c.lease_timetolive(lease["id"], keys=True)
                assert ttl.TTL > 0 and ttl.grantedTTL == lease["granted_ttl"]
                assert sorted(k.decode() for k in ttl.keys) == lease["keys"]
            with pytest.raises(ClientError, match="compacted"):
                c.get("/fixture/k00", revision=expected["compact_revision"] - 1)
            put = c.put("/fixture/new", "written by this release")
            assert put.header.revision == expected["revision"] + 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
