"""The one TLS policy (securekv.tlspolicy): CRL files hold CRLs only and are verified, revocation
covers leaf and intermediates, an expired CRL stays enforced and is reported every minute, live
connections of newly revoked certificates are closed, names and hostnames match as documented.
Handshakes are real OpenSSL handshakes over memory BIOs."""

from __future__ import annotations

import logging
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from securekv.errors import PeerError, UsageError
from securekv.pki.ca import init_ca, init_intermediate
from securekv.pki.issue import issue_cert
from securekv.pki.revoke import revoke, write_crl
from securekv.tlspolicy import (
    CRLWatcher,
    ServerTLS,
    TLSFiles,
    VerifiedPeer,
    binding_refusal,
    hostname_matches,
    load_revocation_list,
    member_uri,
    simple_client_context,
)
from securekv.tlspolicy import crl as crl_module

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "127.0.0.1") -> ssl.SSLObject:
    """Run a full handshake in memory; the server's SSLObject (raises ssl.SSLError on refusal)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if done[name]:
                continue
            try:
                obj.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server's verdict on the client certificate reaches the client later
            try:
                client.read(1)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            return server
    raise AssertionError("handshake did not finish")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tlspolicy")
    root, inter = base / "root", base / "inter"
    init_ca(root, cn="policy root")
    issue_cert(root, "server", "server", hosts=["127.0.0.1"])
    for name in ("alice", "bob", "carol"):
        issue_cert(root, "client", name)
    init_intermediate(inter, root, cn="policy intermediate")
    issue_cert(inter, "client", "dave")
    issue_cert(inter, "server", "iserver", hosts=["127.0.0.1"])
    write_crl(root)
    write_crl(inter)
    return base


def files(pki: Path, crl: Path | None, server: str = "root/server") -> TLSFiles:
    d, name = server.split("/")
    return TLSFiles(str(pki / d / f"{name}.pem"), str(pki / d / f"{name}-key.pem"), str(pki / "root" / "ca.pem"),
                    str(crl) if crl else "")


def client(pki: Path, who: str) -> ssl.SSLContext:
    d, name = who.split("/")
    return simple_client_context(pki / "root" / "ca.pem", pki / d / f"{name}.pem", pki / d / f"{name}-key.pem")


# ------------------------------------------------------------------------------------- CRL files

def test_crl_with_a_ca_certificate_appended_is_refused(pki: Path, tmp_path: Path) -> None:
    """The attack the issue found: a CA appended to the CRL file became a trusted CA."""
    rogue = tmp_path / "rogue"
    init_ca(rogue, cn="rogue CA")
    bad = tmp_path / "crl.pem"
    bad.write_bytes((pki / "root" / "crl.pem").read_bytes() + (rogue / "ca.pem").read_bytes())
    with pytest.raises(UsageError, match="contains a CERTIFICATE block: a CRL file must contain only CRLs"):
        ServerTLS(files(pki, bad))
    bad.write_bytes((rogue / "ca.pem").read_bytes())
    with pytest.raises(UsageError, match="contains a CERTIFICATE block"):
        ServerTLS(files(pki, bad))


def test_crl_must_be_signed_by_a_trusted_ca(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other, cn="policy root")  # same name, different key
    write_crl(other)
    with pytest.raises(UsageError, match="has a bad signature"):
        ServerTLS(files(pki, other / "crl.pem"))
    stranger = tmp_path / "stranger"
    init_ca(stranger, cn="stranger CA")
    write_crl(stranger)
    with pytest.raises(UsageError, match="is not from a trusted CA"):
        ServerTLS(files(pki, stranger / "crl.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(UsageError, match="is not a CRL"):
        ServerTLS(files(pki, junk))
    half = tmp_path / "half.pem"
    half.write_bytes((pki / "root" / "crl.pem").read_bytes()[:-30])
    with pytest.raises(UsageError, match="malformed PEM block"):
        ServerTLS(files(pki, half))


def test_der_crl_and_several_crls_in_one_file(pki: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    crl = x509.load_pem_x509_crl((pki / "root" / "crl.pem").read_bytes())
    der = tmp_path / "crl.der"
    der.write_bytes(crl.public_bytes(Encoding.DER))
    assert load_revocation_list(str(der), [x509.load_pem_x509_certificate((pki / "root" / "ca.pem").read_bytes())])
    both = tmp_path / "both.pem"
    both.write_bytes((pki / "root" / "crl.pem").read_bytes() + (pki / "inter" / "crl.pem").read_bytes())
    # the intermediate's CRL verifies through the intermediate in our own (intermediate-issued) chain
    tls = ServerTLS(files(pki, both, server="inter/iserver"))
    assert len(tls.revocations.crls) == 2
    # ... but not for a server whose chain does not contain that intermediate
    with pytest.raises(UsageError, match="is not from a trusted CA"):
        ServerTLS(files(pki, both))


# ------------------------------------------------------------------------------ enforcement

def test_revoked_leaf_and_intermediate_refused(tmp_path: Path) -> None:
    root, inter = tmp_path / "root", tmp_path / "inter"
    init_ca(root, cn="r")
    issue_cert(root, "server", "server", hosts=["127.0.0.1"])
    issue_cert(root, "client", "alice")
    issue_cert(root, "client", "mallory")
    init_intermediate(inter, root, cn="i")
    issue_cert(inter, "client", "dave")
    revoke(root, "mallory")
    write_crl(root)
    crl = root / "crl.pem"
    tls = ServerTLS(TLSFiles(str(root / "server.pem"), str(root / "server-key.pem"), str(root / "ca.pem"), str(crl)))

    def connect(d: Path, name: str) -> VerifiedPeer:
        ctx = simple_client_context(root / "ca.pem", d / f"{name}.pem", d / f"{name}-key.pem")
        return tls.admit(handshake(tls.current, ctx))

    assert connect(root, "alice").common_name == "alice"
    assert len(connect(inter, "dave").chain) == 3  # leaf, intermediate, root: the verified chain
    with pytest.raises(PeerError, match="certificate CN 'mallory' .* is revoked"):
        connect(root, "mallory")
    # Revoke the intermediate CA itself (in the root's CRL): its leaves are refused.
    inter_serial = x509.load_pem_x509_certificate((inter / "ca.pem").read_bytes()).serial_number
    revoke(root, f"{inter_serial:x}")
    write_crl(root)
    tls.check()
    with pytest.raises(PeerError, match=f"certificate CN 'dave' .*serial {inter_serial:x} is revoked"):
        connect(inter, "dave")
    assert connect(root, "alice").common_name == "alice"


def test_reload_closes_live_connections_of_newly_revoked_certificates(tmp_path: Path, caplog) -> None:
    root = tmp_path / "root"
    init_ca(root, cn="r")
    issue_cert(root, "server", "server", hosts=["127.0.0.1"])
    for name in ("alice", "bob"):
        issue_cert(root, "client", name)
    write_crl(root)
    tls = ServerTLS(TLSFiles(str(root / "server.pem"), str(root / "server-key.pem"), str(root / "ca.pem"),
                             str(root / "crl.pem")))
    closed: dict[str, str] = {}
    for name in ("alice", "bob"):
        ctx = simple_client_context(root / "ca.pem", root / f"{name}.pem", root / f"{name}-key.pem")
        peer = tls.admit(handshake(tls.current, ctx))
        tls.live.register(peer, lambda reason, n=name: closed.__setitem__(n, reason))
    assert not tls.check()  # nothing changed
    revoke(root, "bob")
    write_crl(root)
    assert tls.check()
    assert list(closed) == ["bob"] and "was revoked" in closed["bob"]
    assert len(tls.live) == 1
    assert any("closing the connection of certificate CN 'bob'" in r.getMessage() for r in caplog.records)


def test_bad_or_older_crl_keeps_the_last_good_list(tmp_path: Path, caplog) -> None:
    root = tmp_path / "root"
    init_ca(root, cn="r")
    issue_cert(root, "server", "server", hosts=["127.0.0.1"])
    issue_cert(root, "client", "bob")
    revoke(root, "bob")
    write_crl(root)
    old = (root / "crl.pem").read_bytes()
    write_crl(root)  # CRL number 2
    crl = root / "crl.pem"
    tls = ServerTLS(TLSFiles(str(root / "server.pem"), str(root / "server-key.pem"), str(root / "ca.pem"), str(crl)))
    good = tls.revocations
    crl.write_bytes(crl.read_bytes() + (root / "ca.pem").read_bytes())
    tls.check()
    assert tls.revocations is good
    crl.write_bytes(old)  # an older CRL (number 1) would be a rollback
    tls.check()
    assert tls.revocations is good
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("keeping the last good revocation list" in m and "CERTIFICATE block" in m for m in messages)
    assert any("older than the 2 in force" in m for m in messages)


def test_expired_crl_stays_enforced_and_is_reported_every_minute(tmp_path: Path, caplog) -> None:
    root = tmp_path / "root"
    init_ca(root, cn="r", now=NOW - timedelta(days=10))
    issue_cert(root, "server", "server", hosts=["127.0.0.1"])
    issue_cert(root, "client", "alice")
    issue_cert(root, "client", "bob")
    revoke(root, "bob")
    write_crl(root, now=NOW - timedelta(days=2), next_update=timedelta(days=1))  # expired yesterday
    clock = [1000.0]
    watcher = CRLWatcher(str(root / "crl.pem"), lambda: [x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())],
                         clock=lambda: clock[0])
    assert watcher.current.expired()

    def errors() -> int:
        return sum("expired at" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)

    assert errors() == 1  # at load
    for step in (10, 20, 29.9):  # within the minute: quiet
        clock[0] = 1000 + step
        watcher.check()
    assert errors() == 1
    clock[0] = 1000 + 60
    watcher.check()
    assert errors() == 2
    clock[0] = 1000 + 125
    watcher.check()
    assert errors() == 3
    assert crl_module.EXPIRED_LOG_EVERY == 60.0
    # never a lock-out, never an open door: the good client passes, the revoked one does not
    tls = ServerTLS(TLSFiles(str(root / "server.pem"), str(root / "server-key.pem"), str(root / "ca.pem"),
                             str(root / "crl.pem")))
    ok = simple_client_context(root / "ca.pem", root / "alice.pem", root / "alice-key.pem")
    assert tls.admit(handshake(tls.current, ok)).common_name == "alice"
    bad = simple_client_context(root / "ca.pem", root / "bob.pem", root / "bob-key.pem")
    with pytest.raises(PeerError, match="is revoked"):
        tls.admit(handshake(tls.current, bad))


# ------------------------------------------------------------------------------- identities

def test_member_names_and_binding(tmp_path: Path) -> None:
    root = tmp_path / "root"
    init_ca(root, cn="r")
    issue_cert(root, "peer", "m1", hosts=["127.0.0.1"])
    issue_cert(root, "peer", "odd", cn="member one/two", hosts=["127.0.0.1"])
    issue_cert(root, "etcd", "legacy", cn="m2", hosts=["127.0.0.1"])  # no member URI: CN is the name

    def peer(name: str) -> VerifiedPeer:
        return VerifiedPeer((x509.load_pem_x509_certificate((root / f"{name}.pem").read_bytes()),))

    assert peer("m1").member_name == "m1" and peer("m1").has_peer_usages()
    assert member_uri("member one/two") == "securekv://member/member%20one%2Ftwo"
    assert peer("odd").member_name == "member one/two"
    assert peer("legacy").member_name == "m2"
    names = {1: "m1", 2: "m2", 3: ""}
    assert binding_refusal("m1", 1, names) == ""
    assert "is for member 'm1'" in binding_refusal("m1", 2, names)
    assert binding_refusal("m9", 3, names) == ""  # added, not started: any name but another member's
    assert "is for member 'm2'" in binding_refusal("m2", 3, names)
    assert "names no member" in binding_refusal(None, 1, names)


@pytest.mark.parametrize("host,ok", [
    ("node1.example.com", True), ("NODE1.Example.COM.", True), ("other.example.com", True),
    ("a.b.example.com", False), ("example.com", False), ("10.0.0.1", True), ("[::ffff:10.0.0.1]", True),
    ("10.0.0.2", False), ("node1", False), ("127.0.0.1", False),
])
def test_allowed_hostname_matches_like_go(tmp_path: Path, host: str, ok: bool) -> None:
    root = tmp_path / "root"
    init_ca(root, cn="r")
    issue_cert(root, "peer", "n", hosts=["node1.example.com", "*.example.com", "10.0.0.1"])
    cert = x509.load_pem_x509_certificate((root / "n.pem").read_bytes())
    assert hostname_matches(cert, host) is ok
