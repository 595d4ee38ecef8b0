"""Issue 12 on a running `securekv serve`: the client port's CRL (CRLs only, a revoked client's
live connection closed within a reload period, an expired CRL kept in force and reported) and
https:// client URLs that require client certificates unless explicitly opted out."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from server_harness import REPO, Certs

VERSION = b"GET /version HTTP/1.1\r\nHost: localhost\r\n\r\n"


def run_serve(member, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(member.argv(), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def tls_socket(port: int, certs: Certs, cert: Path | None, key: Path | None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def served(sock: ssl.SSLSocket) -> bool:
    """GET /version on a keep-alive connection: answered?"""
    sock.sendall(VERSION)
    data = b""
    while b'"etcdcluster"' not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return b'"etcdcluster"' in data


def test_crl_file_with_a_ca_certificate_appended_refuses_to_start(make_member, certs: Certs, tmp_path: Path) -> None:
    from securekv.pki.ca import init_ca

    rogue = tmp_path / "rogue"
    init_ca(rogue, cn="rogue CA")
    crl = tmp_path / "crl.pem"
    crl.write_bytes(certs.crl.read_bytes() + (rogue / "ca.pem").read_bytes())
    m = make_member(extra=["--client-crl-file", str(crl)], start=False)
    proc = run_serve(m)
    assert proc.returncode == 1, proc.stderr
    assert "contains a CERTIFICATE block: a CRL file must contain only CRLs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (m.data_dir / "member").exists()  # refused before anything was created


def test_revoked_clients_live_connection_closed_within_a_reload_period(make_member, certs: Certs,
                                                                       tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import revoke, write_crl

    ca = tmp_path / "ca"  # a private copy: the session's CA directory stays as it is
    shutil.copytree(certs.dir, ca)
    out = tmp_path / "carol"
    out.mkdir()
    issue_cert(ca, "client", "carol", out_dir=out)
    live = tmp_path / "live-crl.pem"
    shutil.copy(ca / "crl.pem", live)
    m = make_member(extra=["--client-crl-file", str(live)])
    carol = tls_socket(m.port, certs, out / "carol.pem", out / "carol-key.pem")
    root = tls_socket(m.port, certs, certs.client_cert, certs.client_key)
    with carol, root:
        assert served(carol)  # a live keep-alive connection
        assert served(root)
        from cryptography import x509

        serial = x509.load_pem_x509_certificate((out / "carol.pem").read_bytes()).serial_number
        revoke(ca, f"{serial:x}")
        write_crl(ca)
        shutil.copy(ca / "crl.pem", live)
        revoked_at = time.monotonic()
        carol.settimeout(10)
        try:
            assert carol.recv(1) == b""  # the server closes carol's connection ...
        except (ssl.SSLError, ConnectionResetError):
            pass
        closed_after = time.monotonic() - revoked_at
        assert closed_after < 5, closed_after  # reload period is 1 s
        assert served(root)  # ... and only hers
    assert "closing the connection of certificate CN 'carol'" in m.output()
    assert "was revoked" in m.output()


def test_expired_crl_stays_enforced_with_an_error_and_a_metric(make_member, certs: Certs, tmp_path: Path) -> None:
    import re

    from securekv.pki.revoke import write_crl

    copy = tmp_path / "ca"
    shutil.copytree(certs.dir, copy)
    past = datetime.now(timezone.utc) - timedelta(days=3)
    write_crl(copy, now=past, next_update=timedelta(days=1))  # alice revoked; expired two days ago
    m = make_member(extra=["--client-crl-file", str(copy / "crl.pem")])
    with tls_socket(m.port, certs, certs.client_cert, certs.client_key) as ok:
        assert served(ok)
    try:
        with tls_socket(m.port, certs, certs.other_cert, certs.other_key) as bad:
            answered = served(bad)
    except (ssl.SSLError, ConnectionResetError):
        answered = False
    assert not answered
    assert re.search(r"--client-crl-file .* expired at .*its \d+ revocation\(s\) stay enforced", m.output())
    with socket.create_connection(("127.0.0.1", m.metrics_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := s.recv(65536):
            body += chunk
    text = body.decode()
    line = next(x for x in text.splitlines() if x.startswith("securekv_tls_crl_next_update_timestamp_seconds{"))
    assert 'port="client"' in line and float(line.rsplit(" ", 1)[1]) < time.time() - 86400
    assert re.search(r'securekv_tls_crl_expired\{.*port="client".*\} 1\.0', text)


def test_https_client_urls_require_certificates_unless_opted_out(make_member, certs: Certs) -> None:
    m = make_member(start=False)
    plain = [a for a in m.argv() if a not in ("--client-cert-auth",)]
    i = plain.index("--trusted-ca-file")
    del plain[i:i + 2]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(plain, capture_output=True, text=True, timeout=30, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert "https:// client URLs require client certificates" in proc.stderr
    # With the explicit opt-out it serves anonymous TLS clients, and says so at every start.
    anon = make_member(name="anon", extra=["--insecure-skip-client-cert-auth"], start=False)
    argv = [a for a in anon.argv() if a != "--client-cert-auth"]
    i = argv.index("--trusted-ca-file")
    del argv[i:i + 2]
    anon.argv = lambda: argv  # type: ignore[method-assign]
    anon.start()
    for _ in range(2):
        with tls_socket(anon.port, certs, None, None) as s:
            assert served(s)
        assert anon.output().count("--insecure-skip-client-cert-auth: the client port") >= 1
        anon.stop()
        anon.start()
    assert anon.output().count("--insecure-skip-client-cert-auth: the client port") >= 2
