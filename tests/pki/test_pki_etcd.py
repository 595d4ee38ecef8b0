"""Proof with the real etcd 3.4 and etcdctl: securekv certificates drive mutual TLS on the
client and peer ports, and the wrong (or no, or revoked) certificate is refused."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from securekv.pki.ca import init_ca, init_intermediate
from securekv.pki.issue import issue_cert
from securekv.pki.revoke import revoke, write_crl
from securekv.pki.tls import client_context
from securekv.pki.verify import load_cert

from pki_helpers import tool


from ports import free_port  # noqa: E402  (tests/ports.py: outside the ephemeral range)


class Etcd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"https://127.0.0.1:{self.client_port}"

    def ctl(self, *args: str, cert: str | None = None, ca: Path | None = None, timeout: str = "3s", dial: str = "2s"):
        cmd = [tool("etcdctl"), f"--endpoints={self.endpoint}", f"--cacert={ca or self.pki / 'ca.pem'}",
               f"--dial-timeout={dial}", f"--command-timeout={timeout}"]
        if cert is not None:
            cert_path = Path(cert) if os.sep in cert else self.pki / f"{cert}.pem"
            key_path = cert_path.with_name(cert_path.stem + "-key.pem")
            cmd += [f"--cert={cert_path}", f"--key={key_path}"]
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=30)


@contextlib.contextmanager
def running_etcd(node: Etcd, *extra: str):
    """Start etcd with the member cert of ``node.pki`` and mutual TLS on both ports; always stop it."""
    p = node.pki
    args = [
        tool("etcd"), "--name", "m1", "--data-dir", str(node.root / "data"),
        "--listen-client-urls", node.endpoint, "--advertise-client-urls", node.endpoint,
        "--listen-peer-urls", f"https://127.0.0.1:{node.peer_port}",
        "--initial-advertise-peer-urls", f"https://127.0.0.1:{node.peer_port}",
        "--initial-cluster", f"m1=https://127.0.0.1:{node.peer_port}",
        "--cert-file", str(p / "member.pem"), "--key-file", str(p / "member-key.pem"),
        "--trusted-ca-file", str(p / "ca.pem"), "--client-cert-auth",
        "--peer-cert-file", str(p / "member.pem"), "--peer-key-file", str(p / "member-key.pem"),
        "--peer-trusted-ca-file", str(p / "ca.pem"), "--peer-client-cert-auth", *extra,
    ]
    log_path = node.root / "etcd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 40
            while True:
                assert proc.poll() is None, f"etcd exited: {log_path.read_text()[-2000:]}"
                if node.ctl("endpoint", "health", cert="alice").returncode == 0:
                    break
                assert time.monotonic() < deadline, f"etcd not healthy: {log_path.read_text()[-2000:]}"
                time.sleep(0.2)  # poll interval of a bounded readiness loop, not synchronisation
            yield node
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    root = tmp_path_factory.mktemp("etcd")
    node = Etcd(root)
    init_ca(node.pki)
    issue_cert(node.pki, "peer", "member", hosts=["127.0.0.1", "localhost"])
    issue_cert(node.pki, "client", "alice")
    issue_cert(node.pki, "client", "revoked-user")
    revoke(node.pki, "revoked-user", reason="keyCompromise")
    issue_cert(node.pki, "peer", "revoked-peer", hosts=["127.0.0.1"])
    revoke(node.pki, "revoked-peer", reason="cessationOfOperation")
    write_crl(node.pki)
    init_intermediate(root / "inter", node.pki)
    issue_cert(root / "inter", "client", "bob")
    init_ca(root / "other")
    issue_cert(root / "other", "client", "mallory")
    crl = str(node.pki / "crl.pem")
    with running_etcd(node, "--client-crl-file", crl, "--peer-crl-file", crl):
        yield node


def test_etcdctl_with_securekv_client_cert(etcd) -> None:
    put = etcd.ctl("put", "greeting", "hello", cert="alice")
    assert put.returncode == 0 and put.stdout.strip() == "OK", put.stderr
    get = etcd.ctl("get", "greeting", "--print-value-only", cert="alice")
    assert get.returncode == 0 and get.stdout.strip() == "hello"


def test_etcdctl_without_cert_refused(etcd) -> None:
    proc = etcd.ctl("get", "greeting", timeout="1s", dial="1s")
    assert proc.returncode != 0
    assert "context deadline exceeded" in proc.stderr or "bad certificate" in proc.stderr


def test_etcdctl_with_other_ca_cert_refused(etcd) -> None:
    proc = etcd.ctl("get", "greeting", cert=str(etcd.root / "other" / "mallory.pem"), timeout="1s", dial="1s")
    assert proc.returncode != 0
    assert "context deadline exceeded" in proc.stderr or "bad certificate" in proc.stderr


def test_etcdctl_with_revoked_cert_refused(etcd) -> None:
    proc = etcd.ctl("get", "greeting", cert="revoked-user", timeout="1s", dial="1s")
    assert proc.returncode != 0
    assert "context deadline exceeded" in proc.stderr or "bad certificate" in proc.stderr
    serial = load_cert(etcd.pki / "revoked-user.pem").serial_number
    as_bytes = serial.to_bytes((serial.bit_length() + 7) // 8, "big").hex()  # etcd prints %x of the bytes
    assert f"certificate serial {as_bytes} revoked" in (etcd.root / "etcd.log").read_text()  # refused for the CRL


def test_intermediate_issued_client_cert_carries_its_chain(etcd) -> None:
    """etcd trusts only the root; bob.pem holds leaf + intermediate, so it is accepted."""
    proc = etcd.ctl("put", "from-bob", "1", cert=str(etcd.root / "inter" / "bob.pem"))
    assert proc.returncode == 0, proc.stderr


def test_etcdctl_refuses_server_from_other_ca(etcd) -> None:
    proc = etcd.ctl("get", "greeting", cert="alice", ca=etcd.root / "other" / "ca.pem", timeout="1s", dial="1s")
    assert proc.returncode != 0


def _peer_request(etcd, cert: Path | None) -> bytes:
    """One HTTPS request to the peer port; b"" if the TLS layer refused us."""
    ctx = client_context(etcd.pki / "ca.pem", cert, cert.with_name(cert.stem + "-key.pem") if cert else None)
    try:
        with socket.create_connection(("127.0.0.1", etcd.peer_port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                # with TLS 1.3 a refused client certificate shows up on the first read
                tls.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return tls.recv(4096)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return b""


def test_peer_port_requires_client_cert(etcd) -> None:
    assert _peer_request(etcd, etcd.pki / "member.pem").startswith(b"HTTP/1.1 200")
    assert _peer_request(etcd, None) == b""
    assert _peer_request(etcd, etcd.root / "other" / "mallory.pem") == b""
    # same CA and hosts as member.pem, refused only because the securekv CRL lists it (--peer-crl-file)
    assert _peer_request(etcd, etcd.pki / "revoked-peer.pem") == b""


def test_client_cert_cn_is_the_rbac_user(tmp_path) -> None:
    """With auth on and no password, etcd takes the user from the securekv client cert's CN."""
    node = Etcd(tmp_path)
    init_ca(node.pki)
    issue_cert(node.pki, "peer", "member", hosts=["127.0.0.1"])
    issue_cert(node.pki, "client", "alice")
    issue_cert(node.pki, "client", "root")
    with running_etcd(node):
        for args in (["user", "add", "root", "--new-user-password=rootpw"],
                     ["user", "add", "alice", "--new-user-password=alicepw"],
                     ["role", "add", "reader"],
                     ["role", "grant-permission", "reader", "read", "shared"],
                     ["user", "grant-role", "alice", "reader"],
                     ["put", "shared", "v1"],
                     ["auth", "enable"]):
            proc = node.ctl(*args, cert="root")
            assert proc.returncode == 0, (args, proc.stderr)
        read = node.ctl("get", "shared", "--print-value-only", cert="alice")
        assert read.returncode == 0 and read.stdout.strip() == "v1", read.stderr
        write = node.ctl("put", "shared", "v2", cert="alice")
        assert write.returncode != 0 and "permission denied" in write.stderr
        assert node.ctl("put", "shared", "v2", cert="root").returncode == 0
