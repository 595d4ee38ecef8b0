"""Proof with the real OpenSSL: chains verify, extensions read back, constraints and CRLs enforced."""

from __future__ import annotations

import json
import ssl
from datetime import timedelta

import pytest

from securekv.errors import UsageError
from securekv.pki.ca import init_ca, init_intermediate, load_ca, validity
from securekv.pki.issue import build_leaf, issue_cert
from securekv.pki.keys import generate_key, key_spec
from securekv.pki.names import build_subject, parse_hosts
from securekv.pki.revoke import revoke, write_crl
from securekv.pki.tls import client_context, server_context

from pki_helpers import run_tool


def openssl_verify(ca, leaf, *extra) -> "subprocess.CompletedProcess":
    return run_tool("openssl", "verify", "-CAfile", str(ca), *map(str, extra), str(leaf), check=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("root")
    init_ca(directory)
    return directory


def test_every_profile_verifies_and_shows_extensions(root) -> None:
    issue_cert(root, "server", "server", hosts=["localhost", "127.0.0.1", "::1", "*.svc.example.com"])
    issue_cert(root, "peer", "peer", hosts=["127.0.0.1"], uris=["spiffe://securekv/member/1"])
    issue_cert(root, "client", "client")
    issue_cert(root, "etcd", "etcd", hosts=["node1.example.com"])
    issue_cert(root, "client", "edkey", key_algo="ed25519")
    for name in ("server", "peer", "client", "etcd", "edkey"):
        proc = openssl_verify(root / "ca.pem", root / f"{name}.pem")
        assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), proc.stderr
    text = run_tool("openssl", "x509", "-in", str(root / "server.pem"), "-noout", "-text").stdout
    assert "DNS:localhost, DNS:*.svc.example.com, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1" in text
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" not in text
    assert "Digital Signature, Key Encipherment" in text
    assert "CA:FALSE" in text and "X509v3 Key Usage: critical" in text
    text = run_tool("openssl", "x509", "-in", str(root / "peer.pem"), "-noout", "-text").stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "URI:spiffe://securekv/member/1" in text
    text = run_tool("openssl", "x509", "-in", str(root / "client.pem"), "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in text and "Subject: CN = client" in text
    text = run_tool("openssl", "x509", "-in", str(root / "ca.pem"), "-noout", "-text").stdout
    assert "CA:TRUE" in text and "Certificate Sign, CRL Sign" in text
    assert "X509v3 Basic Constraints: critical" in text and "X509v3 Subject Key Identifier" in text
    # the key files are what openssl expects for those certificates
    for name in ("server", "edkey"):
        cert_pub = run_tool("openssl", "x509", "-in", str(root / f"{name}.pem"), "-noout", "-pubkey").stdout
        key_pub = run_tool("openssl", "pkey", "-in", str(root / f"{name}-key.pem"), "-pubout").stdout
        assert cert_pub == key_pub


def test_other_ca_is_rejected(root, tmp_path) -> None:
    init_ca(tmp_path)
    issue_cert(tmp_path, "client", "mallory")
    proc = openssl_verify(root / "ca.pem", tmp_path / "mallory.pem")
    assert proc.returncode != 0 and "unable to get local issuer certificate" in proc.stderr + proc.stdout


def test_intermediate_leaf_verifies_against_root_only(root, tmp_path) -> None:
    inter = tmp_path / "inter"
    init_intermediate(inter, root, permit_dns=["example.com"], permit_ip=["127.0.0.0/8"])
    issue_cert(inter, "server", "web", hosts=["a.example.com", "127.0.0.1"])
    leaf = inter / "web.pem"
    proc = openssl_verify(root / "ca.pem", leaf, "-untrusted", leaf)
    assert proc.returncode == 0, proc.stderr
    proc = openssl_verify(root / "ca.pem", leaf)  # without the chain the root alone cannot
    assert proc.returncode != 0
    text = run_tool("openssl", "x509", "-in", str(inter / "ca.pem"), "-noout", "-text").stdout
    assert "X509v3 Name Constraints: critical" in text and "DNS:example.com" in text and "IP:127.0.0.0/255.0.0.0" in text
    assert "CA:TRUE, pathlen:0" in text

    # securekv refuses to issue outside the constraints ...
    with pytest.raises(UsageError, match="outside the CA's name constraints"):
        issue_cert(inter, "server", "evil", hosts=["evil.org"])
    # ... and a leaf forged past that check is rejected by OpenSSL, proving the constraint is live.
    ca = load_ca(inter)
    key = generate_key(key_spec("ecdsa", 256))
    import datetime as _dt

    now = _dt.datetime.now(_dt.timezone.utc)
    nb, na, _ = validity(now, timedelta(days=1), None, "CA")
    forged = build_leaf(ca, build_subject("evil"), key.public_key(), parse_hosts(["evil.org"]),
                        ("digital signature", "server auth"), nb, na)
    from securekv.pki.ca import pem

    (tmp_path / "forged.pem").write_bytes(pem(forged) + pem(ca.cert))
    proc = openssl_verify(root / "ca.pem", tmp_path / "forged.pem", "-untrusted", tmp_path / "forged.pem")
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stderr + proc.stdout

    # a real TLS handshake: server presents leaf+intermediate, client trusts only the root
    _handshake(server_context(leaf, inter / "web-key.pem", None), client_context(root / "ca.pem"), "a.example.com")


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> None:
    """Drive a TLS handshake entirely in memory (no sockets, no threads)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"s": False, "c": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_mutual_tls_handshake_and_identity(root) -> None:
    issue_cert(root, "server", "hs-server", hosts=["localhost"])
    issue_cert(root, "client", "carol")
    server_ctx = server_context(root / "hs-server.pem", root / "hs-server-key.pem", root / "ca.pem")
    client_ctx = client_context(root / "ca.pem", root / "carol.pem", root / "carol-key.pem")
    _handshake(server_ctx, client_ctx, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
        _handshake(server_ctx, client_ctx, "other.example.com")


def test_crl_revokes_in_openssl(root, tmp_path) -> None:
    init_ca(tmp_path)
    issue_cert(tmp_path, "client", "good")
    issue_cert(tmp_path, "client", "bad")
    revoke(tmp_path, "bad", reason="keyCompromise")
    result = write_crl(tmp_path)
    assert result.number == 1 and result.revoked == 1
    text = run_tool("openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text").stdout
    assert "X509v3 CRL Number: \n                1" in text.replace("\r", "") or "CRL Number" in text
    assert "Key Compromise" in text and "Next Update" in text
    ok = openssl_verify(tmp_path / "ca.pem", tmp_path / "good.pem", "-crl_check", "-CRLfile", tmp_path / "crl.pem")
    assert ok.returncode == 0, ok.stderr
    bad = openssl_verify(tmp_path / "ca.pem", tmp_path / "bad.pem", "-crl_check", "-CRLfile", tmp_path / "crl.pem")
    assert bad.returncode != 0 and "certificate revoked" in bad.stderr + bad.stdout
    assert write_crl(tmp_path).number == 2


@pytest.mark.parametrize("algo", ["ed25519", "rsa"])
def test_other_ca_key_algorithms_verify(tmp_path, algo: str) -> None:
    init_ca(tmp_path, key_algo=algo)
    issue_cert(tmp_path, "server", "s", hosts=["localhost"])
    proc = openssl_verify(tmp_path / "ca.pem", tmp_path / "s.pem")
    assert proc.returncode == 0, proc.stderr
    expected = "ED25519" if algo == "ed25519" else "sha256WithRSAEncryption"
    assert expected in run_tool("openssl", "x509", "-in", str(tmp_path / "s.pem"), "-noout", "-text").stdout


def _openssl_field(cert, *args: str) -> str:
    """One ``name=value`` line of ``openssl x509 -noout ARGS`` -> value."""
    return run_tool("openssl", "x509", "-in", str(cert), "-noout", *args).stdout.strip().split("=", 1)[1]


def test_info_reads_openssl_certs_pem_and_der(tmp_path, pki) -> None:
    """`pki info` on certificates made by OpenSSL itself: a self-signed CA (PEM and DER) and a
    bare v1 leaf with no extensions at all; every field agrees with OpenSSL's own reading."""
    ca, ca_key = tmp_path / "oca.pem", tmp_path / "oca-key.pem"
    run_tool("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/C=US/O=Acme/CN=openssl.example",
             "-addext", "subjectAltName=DNS:openssl.example,IP:10.0.0.1", "-addext", "extendedKeyUsage=serverAuth,clientAuth",
             "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign", "-keyout", str(ca_key), "-out", str(ca))
    run_tool("openssl", "x509", "-in", str(ca), "-outform", "DER", "-out", str(tmp_path / "oca.der"))
    for path in (ca, tmp_path / "oca.der"):
        result = pki("info", path, "--json")
        assert result.exit_code == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["subject"] == info["issuer"] == "CN=openssl.example,O=Acme,C=US"
        assert info["serial"].replace(":", "") == _openssl_field(ca, "-serial")
        assert info["sha256_fingerprint"] == _openssl_field(ca, "-fingerprint", "-sha256")
        assert info["sans"] == {"dns": ["openssl.example"], "ip": ["10.0.0.1"], "uri": []}
        assert info["key_usage"] == ["digital signature", "key encipherment", "cert sign"]
        assert info["extended_key_usage"] == ["server auth", "client auth"]
        assert info["signature_algorithm"] == "sha256WithRSAEncryption" and info["public_key"] == "RSA 2048"
        assert info["is_ca"] is True  # openssl req -x509 marks it CA:TRUE
    # a plain `openssl x509 -req` leaf: version 1, no extensions
    run_tool("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=bare",
             "-keyout", str(tmp_path / "bare-key.pem"), "-out", str(tmp_path / "bare.csr"))
    run_tool("openssl", "x509", "-req", "-in", str(tmp_path / "bare.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "5", "-out", str(tmp_path / "bare.pem"))
    result = pki("info", tmp_path / "bare.pem")
    assert result.exit_code == 0, result.stderr
    assert "Subject:             CN=bare" in result.stdout and "Issuer:              CN=openssl.example,O=Acme,C=US" in result.stdout
    assert "SANs:                (none)" in result.stdout and "Key usage:           (none)" in result.stdout
    assert "CA:                  no" in result.stdout and "Public key:          ECDSA P-256" in result.stdout
    assert _openssl_field(tmp_path / "bare.pem", "-fingerprint", "-sha256") in result.stdout
