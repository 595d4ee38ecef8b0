"""Issue 12, every listener probed as an attacker would with `openssl s_client` and etcdctl:
the client port started with etcd's default flags (no --client-cert-auth, or an explicit
false) still refuses anonymous clients; an https:// metrics listener follows the client
port's policy (certificate required, CRL enforced) and serves /health, /version and /metrics
only; an http:// metrics listener off loopback is refused at start. (The peer port, which
serves no HTTP at all, is probed in tests/cluster/test_cluster_peer_auth.py.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from server_harness import ETCDCTL, REPO, Certs, Member, free_port, have

pytestmark = pytest.mark.timeout(120)

OPENSSL = "/usr/bin/openssl"


def request(path: str, method: str = "GET", body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def s_client(port: int, certs: Certs, data: bytes, cert: Path | None = None, key: Path | None = None,
             alpn: str = "http/1.1", *extra: str) -> subprocess.CompletedProcess:
    have(OPENSSL)
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs.ca), "-alpn", alpn,
            "-ign_eof", *extra]
    if cert is not None:
        argv += ["-cert", str(cert), "-key", str(key)]
    return subprocess.run(argv, input=data, capture_output=True, timeout=20)


def without_client_cert_auth(m: Member, *replacement: str) -> None:
    """The member's command line as etcd's defaults write it: no --client-cert-auth (or ``replacement``)."""
    argv = [a for a in m.argv() if a != "--client-cert-auth"] + list(replacement)
    m.argv = lambda: argv  # type: ignore[method-assign]


def anonymous_etcdctl(m: Member) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL, "--endpoints", m.endpoint, "--cacert", str(m.certs.ca), "--dial-timeout", "3s",
                           "--command-timeout", "5s", "get", "x"], capture_output=True, text=True, timeout=30,
                          env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@pytest.mark.parametrize("flags", [(), ("--client-cert-auth=false",)], ids=["etcd-default", "explicit-false"])
def test_client_port_with_etcds_defaults_refuses_anonymous_clients(make_member, certs: Certs, flags) -> None:
    m = make_member(start=False)
    without_client_cert_auth(m, *flags)
    m.start()
    c = m.certs
    anon = s_client(m.port, c, request("/health"))
    assert b'"health"' not in anon.stdout and b"HTTP/1.1" not in anon.stdout, anon.stdout
    r = anonymous_etcdctl(m)
    assert r.returncode != 0 and "x" not in r.stdout, r.stdout
    ok = s_client(m.port, c, request("/health"), c.client_cert, c.client_key)
    assert b'{"health":"true"}' in ok.stdout, ok.stderr
    if flags:
        assert "--client-cert-auth=false (from flag) is ignored" in m.output()
        assert "--insecure-skip-client-cert-auth" in m.output()


def test_https_metrics_listener_follows_the_client_policy_and_serves_metrics_only(make_member,
                                                                                   certs: Certs) -> None:
    mport = free_port()
    m = make_member(start=False, extra=["--client-crl-file", str(certs.crl)])
    argv = m.argv()
    argv[argv.index("--listen-metrics-urls") + 1] = f"https://127.0.0.1:{mport}"
    m.argv = lambda: argv  # type: ignore[method-assign]
    m.start()
    c = m.certs
    metrics = request("/metrics")
    assert b"etcd_server_has_leader" not in s_client(mport, c, metrics).stdout  # anonymous
    revoked = s_client(mport, c, metrics, c.other_cert, c.other_key)  # alice: revoked by the CRL
    assert b"etcd_server_has_leader" not in revoked.stdout
    foreign = s_client(mport, c, metrics, c.foreign_cert, c.foreign_key)
    assert b"etcd_server_has_leader" not in foreign.stdout
    ok = s_client(mport, c, metrics, c.client_cert, c.client_key)
    assert b"HTTP/1.1 200" in ok.stdout and b"etcd_server_has_leader 1" in ok.stdout, ok.stderr
    # Only /health, /version and /metrics: no gateway, no gRPC, no debug pages here.
    for path, method, body in [("/v3/kv/range", "POST", b'{"key":"eA=="}'), ("/v3/kv/put", "POST",
                               b'{"key":"eA==","value":"eQ=="}'), ("/debug/pprof/", "GET", b""),
                               ("/members", "GET", b"")]:
        out = s_client(mport, c, request(path, method, body), c.client_cert, c.client_key)
        assert b"HTTP/1.1 404" in out.stdout, (path, out.stdout)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS
    h2 = s_client(mport, c, preface, c.client_cert, c.client_key, "h2", "-quiet")
    assert h2.stdout == b"", h2.stdout  # closed without a byte of HTTP/2 (gRPC is never served here)
    assert m.ctl("get", "x", "--print-value-only").stdout == ""  # the put above never happened


def test_plaintext_metrics_listener_off_loopback_is_refused(tmp_path: Path, certs: Certs) -> None:
    m = Member("securekv", tmp_path / "d", certs)
    argv = m.argv()
    argv[argv.index("--listen-metrics-urls") + 1] = f"http://0.0.0.0:{free_port()}"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 1, proc.stderr
    assert "refusing plaintext metrics listener http://0.0.0.0" in proc.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
