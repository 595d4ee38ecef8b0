"""The importable API: CA creation, issuing, intermediates, passphrases, expiry policy."""

from __future__ import annotations

import stat
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securekv.errors import UsageError
from securekv.pki.ca import init_ca, init_intermediate, load_ca, trust_anchor
from securekv.pki.issue import issue_cert
from securekv.pki.verify import load_cert_chain, verify_chain

from pki_helpers import NOW, TEMPLATES, snapshot


def ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


def test_init_ca_defaults(tmp_path) -> None:
    result = init_ca(tmp_path / "ca", now=NOW)
    cert = result.certificate
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=87600)
    assert cert.not_valid_before_utc <= NOW <= cert.not_valid_before_utc + timedelta(minutes=5)
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    assert 0 < cert.serial_number < 2**159
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca-config.json", "ca-key.pem", "ca.pem"]


def test_serials_are_random(tmp_path) -> None:
    init_ca(tmp_path, now=NOW)
    serials = {issue_cert(tmp_path, "client", f"c{i}", now=NOW).certificate.serial_number for i in range(5)}
    assert len(serials) == 5 and all(s.bit_length() > 100 for s in serials)


def test_init_ca_honours_cfssl_csr_and_flags_win(tmp_path) -> None:
    cert = init_ca(tmp_path / "a", csr=TEMPLATES / "ca-csr.json", now=NOW).certificate
    assert cert.subject.rfc4514_string() == "CN=securekv CA,OU=ops,O=securekv,L=San Francisco,ST=CA,C=US"
    cert = init_ca(tmp_path / "b", csr=TEMPLATES / "ca-csr.json", cn="Other", key_algo="ed25519",
                   expiry=timedelta(days=90), pathlen=1, now=NOW).certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Other"
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=90)
    assert ext(cert, x509.BasicConstraints).value.path_length == 1


def test_rsa_and_p384(tmp_path) -> None:
    cert = init_ca(tmp_path / "r", key_algo="rsa", now=NOW).certificate
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    leaf = issue_cert(tmp_path / "r", "client", "x", key_algo="ecdsa", key_size=384, now=NOW).certificate
    assert leaf.public_key().curve.key_size == 384
    verify_chain([leaf], [cert], now=NOW)


def test_refuses_overwrite_without_force(tmp_path) -> None:
    init_ca(tmp_path, now=NOW)
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="already holds a CA.*--force"):
        init_ca(tmp_path, now=NOW)
    assert snapshot(tmp_path) == before
    init_ca(tmp_path, force=True, now=NOW)
    assert snapshot(tmp_path)["ca.pem"] != before["ca.pem"]
    assert snapshot(tmp_path)["ca-config.json"] == before["ca-config.json"]


def test_issue_profiles_and_identity(tmp_path) -> None:
    init_ca(tmp_path, now=NOW)
    alice = issue_cert(tmp_path, "client", "alice", now=NOW)
    assert alice.cert_path == tmp_path / "alice.pem" and alice.key_path == tmp_path / "alice-key.pem"
    assert alice.certificate.subject.rfc4514_string() == "CN=alice"
    assert list(ext(alice.certificate, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE(alice.key_path.stat().st_mode) == 0o600
    peer = issue_cert(tmp_path, "peer", "m1", hosts=["127.0.0.1", "m1.example.com"], uris=["spiffe://c/m1"], now=NOW)
    san = ext(peer.certificate, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["m1.example.com"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # the peer profile names the member (CN and URI SAN; docs/peer.md)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://c/m1", "securekv://member/m1"]
    assert set(ext(peer.certificate, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ext(peer.certificate, x509.BasicConstraints).value.ca is False
    assert peer.certificate.not_valid_after_utc - peer.certificate.not_valid_before_utc == timedelta(hours=8760)


def test_issue_validates_everything_before_writing(tmp_path) -> None:
    init_ca(tmp_path, now=NOW)
    before = snapshot(tmp_path)
    cases = [
        (dict(profile="server", name="s"), "needs at least one host"),
        (dict(profile="peer", name="s"), "needs at least one host"),
        (dict(profile="etcd", name="s"), "needs at least one host"),
        (dict(profile="nope", name="s"), "unknown profile 'nope'"),
        (dict(profile="server", name="s", hosts=["bad host"]), "malformed host"),
        (dict(profile="client", name="../evil"), "invalid certificate name"),
        (dict(profile="client", name="ca"), "clash"),
        (dict(profile="client", name="x-key"), "clash"),
        (dict(profile="client", name="x", key_algo="dsa"), "unknown key algorithm"),
        (dict(profile="client", name="x", key_size=1024, key_algo="rsa"), "invalid RSA key size"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError, match=message):
            issue_cert(tmp_path, kwargs.pop("profile"), kwargs.pop("name"), now=NOW, **kwargs)
    assert snapshot(tmp_path) == before


def test_expiry_clamped_to_ca_not_after_with_warning(tmp_path) -> None:
    init_ca(tmp_path, expiry=timedelta(days=30), now=NOW)
    ca = load_ca(tmp_path)
    leaf = issue_cert(tmp_path, "client", "c", expiry=timedelta(days=365), now=NOW)
    assert leaf.clamped and "clamped" in leaf.warnings[0]
    assert leaf.certificate.not_valid_after_utc == ca.cert.not_valid_after_utc
    short = issue_cert(tmp_path, "client", "d", expiry=timedelta(days=1), now=NOW)
    assert not short.clamped and not short.warnings
    with pytest.raises(UsageError, match="expired"):
        issue_cert(tmp_path, "client", "e", now=NOW + timedelta(days=31))
    with pytest.raises(UsageError, match="not valid until .*check the system clock"):
        issue_cert(tmp_path, "client", "e", now=NOW - timedelta(days=1))


def test_intermediate_chain_and_constraints(tmp_path) -> None:
    root, inter = tmp_path / "root", tmp_path / "inter"
    init_ca(root, now=NOW)
    result = init_intermediate(inter, root, permit_dns=["example.com"], permit_ip=["127.0.0.0/8"], now=NOW)
    assert sorted(p.name for p in inter.iterdir()) == ["ca-chain.pem", "ca-config.json", "ca-key.pem", "ca.pem", "root-ca.pem"]
    nc = ext(result.certificate, x509.NameConstraints)
    assert nc.critical
    assert trust_anchor(inter) == inter / "root-ca.pem"
    leaf = issue_cert(inter, "server", "web", hosts=["a.example.com", "127.0.0.2"], now=NOW)
    chain = load_cert_chain(leaf.cert_path)
    assert chain[1] == result.certificate and len(chain) == 2
    path = verify_chain(chain, load_cert_chain(root / "ca.pem"), now=NOW)
    assert len(path) == 3
    with pytest.raises(UsageError, match="same directory|must differ"):
        init_intermediate(root, root, now=NOW)


def test_intermediate_refused_by_pathlen_zero_parent(tmp_path) -> None:
    init_ca(tmp_path / "root", pathlen=0, now=NOW)
    with pytest.raises(UsageError, match="pathlen 0"):
        init_intermediate(tmp_path / "i", tmp_path / "root", now=NOW)
    assert not (tmp_path / "i").exists()


def test_passphrase_protected_ca(tmp_path) -> None:
    init_ca(tmp_path, passphrase=b"s3cret", now=NOW)
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "ca-key.pem").read_bytes()
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match="passphrase-protected"):
        issue_cert(tmp_path, "client", "a", now=NOW)
    with pytest.raises(UsageError, match="wrong passphrase"):
        issue_cert(tmp_path, "client", "a", passphrase=b"nope", now=NOW)
    assert snapshot(tmp_path) == before
    issue_cert(tmp_path, "client", "a", passphrase=b"s3cret", now=NOW)


def test_mismatched_ca_files(tmp_path) -> None:
    init_ca(tmp_path / "a", now=NOW)
    init_ca(tmp_path / "b", now=NOW)
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(UsageError, match="does not match CA certificate"):
        load_ca(tmp_path / "a")
