"""TLS front door: real handshakes with `openssl s_client`, CRLs, timeouts, reload, trust boundary."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from server_harness import Certs, have

OPENSSL = "/usr/bin/openssl"
HEALTH_REQ = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def s_client(port: int, certs: Certs, *extra: str, cert: Path | None = None, key: Path | None = None,
             data: bytes = HEALTH_REQ) -> subprocess.CompletedProcess:
    """Connect, send ``data``; with data, keep reading until the server closes (-ign_eof)."""
    have(OPENSSL)
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(certs.ca), *extra]
    if data:
        argv.append("-ign_eof")
    if cert is not None:
        argv += ["-cert", str(cert), "-key", str(key)]
    return subprocess.run(argv, input=data, capture_output=True, timeout=20)


def served(proc: subprocess.CompletedProcess) -> bool:
    return b'{"health":"true"}' in proc.stdout


def test_handshake_checks(server) -> None:
    c = server.certs
    ok = s_client(server.port, c, "-alpn", "http/1.1", cert=c.client_cert, key=c.client_key)
    assert served(ok), ok.stderr
    assert b"TLSv1.3" in ok.stdout
    assert served(s_client(server.port, c, cert=c.client_cert, key=c.client_key))  # no ALPN: sniffed
    assert not served(s_client(server.port, c, "-alpn", "http/1.1"))  # no client certificate
    assert not served(s_client(server.port, c, "-alpn", "http/1.1", "-tls1_2"))
    foreign = s_client(server.port, c, "-alpn", "http/1.1", cert=c.foreign_cert, key=c.foreign_key)
    assert not served(foreign)
    old = s_client(server.port, c, "-tls1_1", cert=c.client_cert, key=c.client_key)
    assert not served(old) and old.returncode != 0
    h2 = s_client(server.port, c, "-alpn", "h2", cert=c.client_cert, key=c.client_key, data=b"")
    assert b"ALPN protocol: h2" in h2.stdout


def test_tls12_offers_aead_only(member) -> None:
    c = member.certs
    cbc = s_client(member.port, c, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA",
                   cert=c.client_cert, key=c.client_key)
    assert not served(cbc) and cbc.returncode != 0
    gcm = s_client(member.port, c, "-tls1_2", "-alpn", "http/1.1", cert=c.client_cert, key=c.client_key)
    assert served(gcm)
    assert re.search(rb"Cipher\s*:\s*ECDHE-\w+-(AES\d+-GCM|CHACHA20)", gcm.stdout)


def test_revoked_certificate_refused_by_crl(make_member, certs: Certs) -> None:
    m = make_member(extra=["--client-crl-file", str(certs.crl)])
    assert not served(s_client(m.port, certs, "-alpn", "http/1.1", cert=certs.other_cert, key=certs.other_key))
    assert served(s_client(m.port, certs, "-alpn", "http/1.1", cert=certs.client_cert, key=certs.client_key))
    bad = m.ctl("put", "a", "b", cert=certs.other_cert, key=certs.other_key, check=False)
    assert bad.returncode != 0


def test_handshake_timeout_closes_silent_clients(make_member) -> None:
    m = make_member(extra=["--tls-handshake-timeout", "1"])
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # the server hangs up; no bytes ever sent by us
        assert time.monotonic() - start < 8


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its socket inodes matched against /proc/net/tcp*)."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_internal_port(member) -> None:
    """gRPC is served by the TLS listener itself: the member listens on its client and metrics
    URLs only (a one-member cluster has no peer port), nothing on an internal port."""
    deadline = time.monotonic() + 10
    while True:  # the metrics listener opens right after the client one: wait for it
        try:
            socket.create_connection(("127.0.0.1", member.metrics_port), timeout=10).close()
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the metrics listener never opened"
            time.sleep(0.05)
    assert _listening_ports(member.proc.pid) == {member.port, member.metrics_port}
    assert "internal gRPC" not in member.output()


def _serial(proc: subprocess.CompletedProcess) -> str:
    pem = re.search(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", proc.stdout, re.S)
    assert pem, proc.stdout
    out = subprocess.run([OPENSSL, "x509", "-noout", "-serial"], input=pem.group(0), capture_output=True)
    return out.stdout.decode().strip()


def test_certificate_files_reload_without_restart(make_member, certs: Certs, tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert

    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server-key.pem"
    shutil.copy(certs.server_cert, cert)
    shutil.copy(certs.server_key, key)
    m = make_member(extra=["--cert-file", str(cert), "--key-file", str(key)])
    first = _serial(s_client(m.port, certs, cert=certs.client_cert, key=certs.client_key, data=b""))
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    issue_cert(certs.dir, "server", "server2", hosts=["127.0.0.1", "localhost"], out_dir=new_dir)
    # Replace both files (key first; a mismatched pair in between must be tolerated).
    shutil.copy(new_dir / "server2-key.pem", key)
    shutil.copy(new_dir / "server2.pem", cert)
    deadline = time.monotonic() + 15
    second = first
    while second == first and time.monotonic() < deadline:
        time.sleep(0.2)
        second = _serial(s_client(m.port, certs, cert=certs.client_cert, key=certs.client_key, data=b""))
    assert second != first
    # A broken file is refused: the listener keeps serving with the last good pair.
    complaints = m.output().count("keeping the previous ones")
    cert.write_text("not a certificate\n")
    deadline = time.monotonic() + 15
    while m.output().count("keeping the previous ones") == complaints and time.monotonic() < deadline:
        time.sleep(0.2)
    assert m.output().count("keeping the previous ones") > complaints
    assert _serial(s_client(m.port, certs, cert=certs.client_cert, key=certs.client_key, data=b"")) == second
    assert m.ctl("put", "after", "reload").returncode == 0


def test_crl_reload_refuses_newly_revoked_certificates(make_member, certs: Certs, tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import revoke, write_crl

    out = tmp_path / "bob"
    out.mkdir()
    issue_cert(certs.dir, "client", "bob", out_dir=out)
    live = tmp_path / "live-crl.pem"
    shutil.copy(certs.crl, live)
    m = make_member(extra=["--client-crl-file", str(live)])
    bob = (out / "bob.pem", out / "bob-key.pem")
    assert served(s_client(m.port, certs, "-alpn", "http/1.1", cert=bob[0], key=bob[1]))
    revoke(certs.dir, "0x%x" % _serial_of(bob[0]))
    write_crl(certs.dir)
    shutil.copy(certs.dir / "crl.pem", live)
    deadline = time.monotonic() + 15
    while served(s_client(m.port, certs, "-alpn", "http/1.1", cert=bob[0], key=bob[1])):
        assert time.monotonic() < deadline, "the new CRL was not picked up"
        time.sleep(0.2)
    assert served(s_client(m.port, certs, "-alpn", "http/1.1", cert=certs.client_cert, key=certs.client_key))


def _serial_of(path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
