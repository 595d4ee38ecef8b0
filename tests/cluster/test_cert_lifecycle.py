"""Issue 16, the certificate lifecycle on a running 3-member cluster under client load:

* renewal: every member renews its server and peer certificates through the CSR path
  (``securekv cluster renew``, authenticated by its current peer certificate, no CA key on the
  member) and serves the new ones without a restart;
* CA rotation (docs/pki.md): trust both CAs -> the signing member switches to the new CA (its
  files replaced, no restart) and every member renews through the CSR path -> trust only the
  new CA.

Two bounded load loops run throughout: one long-lived gRPC client, and one that opens a new TLS
connection for every request (it sees each reload). Proof: zero failed requests, same member
processes, and the certificate and CA metrics / ``ctl endpoint certs`` show the new expiry.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path

import pytest

from join_helpers import JoinCluster

LOAD_SECONDS = 120.0  # upper bound; the loops stop as soon as the scenario is over
LOAD_OPS = 50_000


class Load:
    """Two client loops, bounded in count and time, counting every failure."""

    def __init__(self, c: JoinCluster, trust: Path, cert: Path, key: Path) -> None:
        self.c = c
        self.trust = trust
        self.creds = (cert, key)  # swapped by the test when clients get new-CA certificates
        self.stop = threading.Event()
        self.ok = {"grpc": 0, "fresh": 0}
        self.failures: list[str] = []
        self.fresh_round = threading.Event()
        self.threads = [threading.Thread(target=self._grpc, daemon=True),
                        threading.Thread(target=self._fresh, daemon=True)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _grpc(self) -> None:
        from securekv.client.client import Client

        cert, key = self.creds
        deadline = time.monotonic() + LOAD_SECONDS
        with Client(",".join(m.endpoint for m in self.c.members), cacert=str(self.trust), cert=str(cert),
                    key=str(key), timeout=10.0) as client:
            for i in range(LOAD_OPS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    client.put(f"load/grpc/{i % 100}", str(i))
                    assert client.get(f"load/grpc/{i % 100}").kvs[0].value == str(i).encode()
                    self.ok["grpc"] += 1
                except Exception as exc:  # counted, reported by the test
                    self.failures.append(f"grpc #{i}: {exc!r}")

    def _fresh(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        members = self.c.members
        for i in range(LOAD_OPS):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            cert, key = self.creds
            m = members[i % len(members)]
            ctx = ssl.create_default_context(cafile=str(self.trust))
            ctx.load_cert_chain(str(cert), str(key))
            conn = http.client.HTTPSConnection("127.0.0.1", m.client_port, context=ctx, timeout=10)
            try:
                body = json.dumps({"key": "ZnJlc2g=", "value": "MQ=="})
                conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise AssertionError(f"HTTP {resp.status}: {data[:200]!r}")
                self.ok["fresh"] += 1
                if self.creds == (cert, key):
                    self.fresh_round.set()
            except Exception as exc:
                self.failures.append(f"fresh #{i} to {m.name}: {exc!r}")
            finally:
                conn.close()

    def wait_progress(self, kind: str, more: int = 5, timeout: float = 30) -> None:
        start = self.ok[kind]
        deadline = time.monotonic() + timeout
        while self.ok[kind] < start + more:
            assert time.monotonic() < deadline and not self.failures, (kind, self.ok, self.failures[:5])
            time.sleep(0.05)


def _served_serial(port: int, cert: Path, key: Path) -> int:
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert), str(key))
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _health(port: int, trust: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(trust))
    ctx.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path):
    c = JoinCluster(tmp_path)
    try:
        yield c.start()
    finally:
        c.close()


def test_renewal_and_ca_rotation_under_load(cluster: JoinCluster, tmp_path: Path) -> None:
    from securekv.fsutil import atomic_write, atomic_write_many
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.verify import load_cert

    c = cluster
    old_ca, new_ca = c.ca, tmp_path / "newca"
    init_ca(new_ca, cn="join test CA 2")
    issue_cert(new_ca, "client", "root")
    old_pem, new_pem = (old_ca / "ca.pem").read_bytes(), (new_ca / "ca.pem").read_bytes()
    # Step 0 of the procedure: clients trust both CAs before any member changes.
    client_trust = tmp_path / "client-trust.pem"
    client_trust.write_bytes(old_pem + new_pem)
    pids = [m.proc.pid for m in c.members]

    with Load(c, client_trust, old_ca / "root.pem", old_ca / "root-key.pem") as load:
        load.wait_progress("grpc")
        load.wait_progress("fresh")

        # -- renewal through the CSR path, each member by its own peer certificate ------------
        # Not due yet (what a daily timer sees most days): nothing changes.
        m1_files = [(old_ca / f"m1-{p}.pem").read_bytes() for p in ("server", "server-key", "peer", "peer-key")]
        idle = c.cli("cluster", "renew", "--endpoints", c.members[0].endpoint, "--cacert", str(c.trust),
                     "--server-cert", str(old_ca / "m1-server.pem"), "--server-key", str(old_ca / "m1-server-key.pem"),
                     "--peer-cert", str(old_ca / "m1-peer.pem"), "--peer-key", str(old_ca / "m1-peer-key.pem"),
                     "--before", "30d")
        assert "not due" in idle.stdout
        assert m1_files == [(old_ca / f"m1-{p}.pem").read_bytes() for p in ("server", "server-key", "peer", "peer-key")]
        for m in c.members:
            before = _served_serial(m.client_port, c.cert, c.key)
            out = c.cli("cluster", "renew", "--endpoints", c.members[0].endpoint, "--cacert", str(c.trust),
                        "--server-cert", str(old_ca / f"{m.name}-server.pem"),
                        "--server-key", str(old_ca / f"{m.name}-server-key.pem"),
                        "--peer-cert", str(old_ca / f"{m.name}-peer.pem"),
                        "--peer-key", str(old_ca / f"{m.name}-peer-key.pem"))
            assert out.stdout.count("renewed") == 4, out
            new_serial = load_cert(old_ca / f"{m.name}-server.pem").serial_number
            assert new_serial != before
            _until(lambda: _served_serial(m.client_port, c.cert, c.key) == new_serial, f"{m.name} to serve its "
                   "renewed certificate")
        load.wait_progress("fresh")
        load.wait_progress("grpc")

        # A client certificate is not a member's: renewal refused.
        refused = c.cli("cluster", "renew", "--endpoints", c.members[0].endpoint, "--cacert", str(c.trust),
                        "--server-cert", str(old_ca / "m2-server.pem"), "--server-key", str(old_ca / "m2-server-key.pem"),
                        "--peer-cert", str(old_ca / "root.pem"), "--peer-key", str(old_ca / "root-key.pem"),
                        check=False)
        assert refused.returncode != 0 and "peer certificate" in refused.stderr, refused.stderr

        # -- CA rotation: 1. trust both ---------------------------------------------------------
        atomic_write(c.trust, old_pem + new_pem)
        for m in c.members:
            _until(lambda: _health(m.client_port, client_trust, new_ca / "root.pem", new_ca / "root-key.pem"),
                   f"{m.name} to trust the new CA")
        # 2. reissue: the signing member switches to the new CA (its files replaced, no restart)
        #    and every member renews through the CSR path, still authenticated by its old-CA
        #    peer certificate; clients get new-CA certificates from the operator.
        atomic_write_many([(c.signing_cert, new_pem, 0o644),
                           (c.signing_key, (new_ca / "ca-key.pem").read_bytes(), 0o600)])
        new_issuer = load_cert(new_ca / "ca.pem").subject
        for m in c.members:
            c.cli("cluster", "renew", "--endpoints", c.members[0].endpoint, "--cacert", str(c.trust),
                  "--server-cert", str(old_ca / f"{m.name}-server.pem"),
                  "--server-key", str(old_ca / f"{m.name}-server-key.pem"),
                  "--peer-cert", str(old_ca / f"{m.name}-peer.pem"), "--peer-key", str(old_ca / f"{m.name}-peer-key.pem"))
            for part in ("server", "peer"):
                assert load_cert(old_ca / f"{m.name}-{part}.pem").issuer == new_issuer
        for m in c.members:
            served = load_cert(old_ca / f"{m.name}-server.pem").serial_number
            _until(lambda: _served_serial(m.client_port, new_ca / "root.pem", new_ca / "root-key.pem") == served,
                   f"{m.name} to serve its new-CA certificate")
        load.creds = (new_ca / "root.pem", new_ca / "root-key.pem")
        load.fresh_round.clear()
        assert load.fresh_round.wait(30)
        load.wait_progress("fresh")
        load.wait_progress("grpc")
        # 3. drop the old CA
        atomic_write(c.trust, new_pem)
        for m in c.members:
            _until(lambda: not _health(m.client_port, client_trust, old_ca / "root.pem", old_ca / "root-key.pem"),
                   f"{m.name} to stop trusting the old CA")
        load.wait_progress("fresh", more=10)
        load.wait_progress("grpc", more=10)

    assert load.failures == [], load.failures[:10]
    assert load.ok["grpc"] > 0 and load.ok["fresh"] > 0
    print(f"load: {load.ok} requests, 0 failed")
    # Remaining lifetime of every certificate file, peer and CA ones included, in /metrics.
    ctx = ssl.create_default_context(cafile=str(c.trust))
    ctx.load_cert_chain(str(new_ca / "root.pem"), str(new_ca / "root-key.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", c.members[1].client_port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    finally:
        conn.close()
    expiry = [line for line in metrics.splitlines() if line.startswith("securekv_server_certificate_expiry_seconds{")]
    assert any("m2-peer.pem" in line for line in expiry) and any("trust.pem" in line for line in expiry), expiry
    assert [m.proc.pid for m in c.members] == pids and all(m.proc.poll() is None for m in c.members)

    # The cluster still works end to end with the new CA only (peers re-dial with new certs too).
    from securekv.client.client import Client

    with Client(",".join(m.endpoint for m in c.members), cacert=str(c.trust), cert=str(new_ca / "root.pem"),
                key=str(new_ca / "root-key.pem"), timeout=10.0) as client:
        client.put("after-rotation", "ok")
        assert sorted(m.name for m in client.member_list().members) == ["m1", "m2", "m3"]
    for m in c.members:
        with Client(m.endpoint, cacert=str(c.trust), cert=str(new_ca / "root.pem"), key=str(new_ca / "root-key.pem"),
                    timeout=10.0) as client:
            assert client.get("after-rotation", serializable=True).kvs[0].value == b"ok"
    certs = c.cli("ctl", "--endpoints", ",".join(m.endpoint for m in c.members), "--cacert", str(c.trust),
                  "--cert", str(new_ca / "root.pem"), "--key", str(new_ca / "root-key.pem"), "-w", "json",
                  "endpoint", "certs")
    rows = json.loads(certs.stdout)
    assert {r["member"] for r in rows} == {"m1", "m2", "m3"}
    peer_rows = [r for r in rows if r["role"] == "peer"]
    assert len(peer_rows) == 3 and all("join test CA 2" in r["issuer"] and r["remaining_seconds"] > 0 for r in peer_rows)
