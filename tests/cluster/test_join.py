"""Issue 16, joining without the CA key: a 4th member joins a running 3-member cluster with a
join token; a reused, expired, forged token and a wrong CA fingerprint are refused with clear
messages and write nothing; connections without a client certificate reach the join endpoints
and nothing else. Real processes, real TLS, sd_notify readiness.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

import pytest

from join_helpers import JoinCluster, Member
from ports import free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    c = JoinCluster(tmp_path_factory.mktemp("join"))
    try:
        yield c.start()
    finally:
        c.close()


def _token(c: JoinCluster, ttl: str = "1h") -> str:
    out = c.cli("cluster", "token", "--endpoints", c.members[0].endpoint, "--cacert", str(c.cacert), "--cert",
                str(c.cert), "--key", str(c.key), "create", "--ttl", ttl, "--description", "test")
    token = out.stdout.strip()
    assert "@sha256:" in token and "sha256:" in out.stderr, out
    return token


# The unit's program, named explicitly: by default join refuses a securekv that lives under /tmp
# or a home directory (the unit's sandbox hides them), and CI's checkout and venv may be there.
JOIN_EXEC = "/usr/bin/env securekv"


def _join(c: JoinCluster, token: str, root: Path, name: str = "n4", check: bool = False, via: int = 0, **ports: int):
    client_port, peer_port = ports.get("client", free_port()), ports.get("peer", free_port())
    return c.cli("cluster", "join", "--token", token, "--endpoints", c.members[via].endpoint, "--name", name,
                 "--address", "127.0.0.1", "--client-port", str(client_port), "--peer-port", str(peer_port),
                 "--root", str(root), "--exec", JOIN_EXEC, check=check), client_port, peer_port


def _written(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _anonymous(port: int, path: str, alpn: str = "http/1.1") -> tuple[int, bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_refusals_write_nothing(cluster: JoinCluster, tmp_path: Path) -> None:
    from securekv.cluster.token import parse_token, spki_hash
    from securekv.pki.ca import init_ca
    from securekv.pki.verify import load_cert

    good = _token(cluster)
    parsed = parse_token(good)
    init_ca(tmp_path / "other", cn="another CA")
    wrong_hash = spki_hash(load_cert(tmp_path / "other" / "ca.pem"))

    cases = {
        "wrong CA fingerprint": f"{parsed.id}.{parsed.secret}@{wrong_hash}",
        "forged": f"{parsed.id}.{'x' * 16}@{parsed.ca_cert_hash}",
        "unknown id": f"zzzzzz.{parsed.secret}@{parsed.ca_cert_hash}",
    }
    expected = {"wrong CA fingerprint": "wrong CA fingerprint", "forged": "join token is not valid",
                "unknown id": "join token is not valid"}
    for case, token in cases.items():
        root = tmp_path / case.replace(" ", "-")
        (proc, _, _) = _join(cluster, token, root)
        assert proc.returncode != 0, (case, proc.stdout)
        assert expected[case] in proc.stderr, (case, proc.stderr)
        assert _written(root) == [], (case, _written(root))

    # Bad input: a name already in the cluster; refused before the token is spent.
    root = tmp_path / "taken-name"
    proc, _, _ = _join(cluster, good, root, name="m2")
    assert proc.returncode != 0 and "a member named 'm2' is already in the cluster" in proc.stderr, proc.stderr
    assert _written(root) == []

    # A member without a signing CA: the handshake needs a certificate, and the answer says why.
    root = tmp_path / "no-signer"
    proc, _, _ = _join(cluster, good, root, via=1)
    assert proc.returncode != 0 and "--signing-ca-cert-file" in proc.stderr, proc.stderr
    assert _written(root) == []

    short = _token(cluster, ttl="1s")
    time.sleep(1.5)  # the token's own lifetime: nothing to wait on but the clock
    root = tmp_path / "expired"
    proc, _, _ = _join(cluster, short, root)
    assert proc.returncode != 0 and "join token has expired" in proc.stderr, proc.stderr
    assert _written(root) == []

    revoked = _token(cluster)
    cluster.cli("cluster", "token", *cluster.client_flags(), "revoke", revoked.split("@")[0])
    root = tmp_path / "revoked"
    proc, _, _ = _join(cluster, revoked, root)
    assert proc.returncode != 0 and "join token is not valid" in proc.stderr, proc.stderr
    assert _written(root) == []

    # None of the refused joins changed the membership; the good token is still usable.
    with cluster.client() as client:
        assert sorted(m.name for m in client.member_list().members) == ["m1", "m2", "m3"]
    listing = cluster.cli("cluster", "token", *cluster.client_flags(), "list").stdout
    assert f"{parsed.id}" in listing and "valid" in listing and parsed.secret not in listing


def test_anonymous_connections_reach_only_the_join_endpoints(cluster: JoinCluster) -> None:
    signer, plain = cluster.members[0], cluster.members[1]
    status, body = _anonymous(signer.client_port, "/v3/kv/range")
    assert status == 403 and b"no client certificate" in body
    status, body = _anonymous(signer.client_port, "/health")
    assert status == 403
    status, body = _anonymous(signer.client_port, "/v3/securekv/join/ca-bundle")
    assert status == 200 and b"BEGIN CERTIFICATE" in body
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        _anonymous(signer.client_port, "/etcdserverpb.KV/Range", alpn="h2")
    # A member without a signing CA still requires a certificate in the handshake.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
        _anonymous(plain.client_port, "/v3/securekv/join/ca-bundle")


def test_anonymous_join_connections_are_capped_per_address(cluster: JoinCluster) -> None:
    """Issue 12: connections without a certificate are unauthenticated; one address may hold
    at most ANONYMOUS_PER_HOST of them (idle keep-alive join connections from one address
    could otherwise fill --max-connections-per-listener for everyone). The next one is closed
    after the handshake; another address, and a client with a certificate, still get in."""
    import socket

    from securekv.server.listener import ANONYMOUS_PER_HOST

    signer = cluster.members[0]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])

    def connect(source: str = "127.0.0.1") -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", signer.client_port), timeout=10, source_address=(source, 0))
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")

    def bundle(s: ssl.SSLSocket) -> bool:
        """A keep-alive POST of the CA bundle on ``s``: True when answered."""
        try:
            s.sendall(b"POST /v3/securekv/join/ca-bundle HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            data = b""
            while b"END CERTIFICATE" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    return False
                data += chunk
            return True
        except (ssl.SSLError, OSError):
            return False

    held = [connect() for _ in range(ANONYMOUS_PER_HOST)]
    try:
        assert all(bundle(s) for s in held)
        with connect() as extra:
            assert not bundle(extra)
        with connect("127.0.0.2") as other:
            assert bundle(other)
        cluster.cli("ctl", *cluster.client_flags(signer.endpoint), "endpoint", "health")  # with a certificate
    finally:
        for s in held:
            s.close()


def test_fourth_member_joins_with_a_token(cluster: JoinCluster, tmp_path: Path) -> None:
    token = _token(cluster)
    root = tmp_path / "n4"
    proc, client_port, peer_port = _join(cluster, token, root)
    assert proc.returncode == 0, proc.stderr
    files = _written(root)
    names = sorted(p.name for p in files)
    assert names == ["ca.pem", "n4-key.pem", "n4-peer-key.pem", "n4-peer.pem", "n4.pem", "securekv-renew.service",
                     "securekv-renew.timer", "securekv.conf", "securekv.service", "securekv.yaml"], names
    units = root / "etc" / "systemd" / "system"
    renew_unit = (units / "securekv-renew.service").read_text()
    assert "cluster renew --endpoints " + cluster.members[0].endpoint in renew_unit and "--before 30d" in renew_unit
    import shutil
    import subprocess
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "securekv-renew.service"),
                                str(units / "securekv-renew.timer")], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    for p in files:  # no CA key on the new member: its only private keys are its own two
        if b"PRIVATE KEY" in p.read_bytes():
            assert p.name in ("n4-key.pem", "n4-peer-key.pem"), p
            assert p.stat().st_mode & 0o777 == 0o600
    # Staged as `install bundle --root` stages (DESTDIR: the config names /etc/securekv/...,
    # /var/lib/securekv): run it from the staging tree by rewriting those prefixes.
    staged = (root / "etc" / "securekv" / "securekv.yaml").read_text()
    assert "initial-cluster-state: existing" in staged and "/etc/securekv/pki/n4-peer.pem" in staged
    config = tmp_path / "n4.yaml"
    config.write_text(staged.replace("/etc/securekv/", f"{root}/etc/securekv/")
                      .replace("/var/lib/securekv", f"{root}/var/lib/securekv"))

    # Second use of the same token: refused, nothing written.
    again = tmp_path / "again"
    proc, _, _ = _join(cluster, token, again, name="n5")
    assert proc.returncode != 0 and "already used" in proc.stderr, proc.stderr
    assert _written(again) == []

    n4 = Member("n4", client_port, peer_port)
    cluster.members.append(n4)
    import sys
    cluster.spawn(n4, [sys.executable, "-m", "securekv", "serve", "--config-file", str(config)])
    n4.notify.wait_ready(n4.proc, n4.log)

    def promoted() -> bool:
        with cluster.client(cluster.members[0].endpoint) as client:
            ms = {m.name: m for m in client.member_list().members}
        return "n4" in ms and not ms["n4"].isLearner

    deadline = time.monotonic() + 60
    while not promoted():
        assert time.monotonic() < deadline, n4.log.read_text()[-3000:]
        time.sleep(0.2)
    with cluster.client(cluster.members[0].endpoint) as client:
        client.put("joined", "yes")
    with cluster.client(n4.endpoint) as client:
        assert client.get("joined").kvs[0].value == b"yes"
    listing = cluster.cli("cluster", "token", *cluster.client_flags(), "list").stdout
    assert "used by n4" in listing

    # Every issue is in the signing member's audit log (flushed about once a second).
    audit = cluster.base / "audit.log"
    token_id = token.split(".")[0]
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []
        reasons = [(e["rpc"], e["decision"], e["reason"]) for e in lines]
        if any(r[0].endswith("/Join") and r[1] == "allow" and f"join token {token_id} admitted member n4" in r[2]
               for r in reasons):
            break
        assert time.monotonic() < deadline, reasons[-20:]
        time.sleep(0.2)
    assert any(r[0].endswith("/JoinTokenCreate") and f"join token {token_id} created" in r[2] for r in reasons)
    assert any(r[0].endswith("/Join") and r[1] == "deny" and "already used" in r[2] for r in reasons)
    assert token.split("@")[0].split(".")[1] not in audit.read_text()  # never the secret
