"""The signing member's CA (``--signing-ca-*``, securekv/cluster/signer.py) without processes: a
name-constrained intermediate signs what it may and refuses the rest; CSRs that do not verify
or use weak keys are refused; a CA rotation's half-replaced files keep the previous CA."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from securekv.cluster.signer import Signer
from securekv.cluster.token import parse_token, spki_hash
from securekv.errors import UsageError
from securekv.pki.ca import init_ca, init_intermediate
from securekv.pki.verify import load_cert, load_certs_pem, verify_chain
from securekv.rpctypes import EtcdError
from securekv.tlspolicy import VerifiedPeer


def _csr(key) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ignored")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def intermediate(tmp_path: Path) -> tuple[Path, Path]:
    init_ca(tmp_path / "root", cn="root CA")
    init_intermediate(tmp_path / "int", tmp_path / "root", cn="cluster CA", permit_ip=["127.0.0.0/8"],
                      permit_dns=["db.example.com"])
    return tmp_path / "int", tmp_path / "root"


def test_a_name_constrained_intermediate_signs_within_its_names(intermediate: tuple[Path, Path]) -> None:
    inter, root = intermediate
    signer = Signer(str(inter / "ca-chain.pem"), str(inter / "ca-key.pem"))
    assert signer.ca_cert_hash == spki_hash(load_cert(inter / "ca.pem"))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = signer.sign(_csr(key), "peer", "n4", ["127.0.0.4", "n4.db.example.com"], ["securekv://member/n4"])
    chain = load_certs_pem(signer.chain_pem(cert).encode())
    verify_chain(chain, [load_cert(root / "ca.pem")])
    assert VerifiedPeer(tuple(chain)).member_name == "n4" and VerifiedPeer(tuple(chain)).has_peer_usages()
    with pytest.raises(EtcdError, match="outside the CA's name constraints"):
        signer.sign(_csr(key), "server", "n4", ["10.1.1.1"], [])


def test_bad_csrs_are_refused(intermediate: tuple[Path, Path]) -> None:
    inter, _ = intermediate
    signer = Signer(str(inter / "ca-chain.pem"), str(inter / "ca-key.pem"))
    with pytest.raises(EtcdError, match="not a PEM certificate request"):
        signer.sign("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "server", "n4",
                    ["127.0.0.4"], [])
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(EtcdError, match="at least 2048"):
        signer.sign(_csr(weak), "server", "n4", ["127.0.0.4"], [])
    with pytest.raises(EtcdError, match="missing or too large"):
        signer.sign("", "server", "n4", ["127.0.0.4"], [])


def test_a_half_replaced_signing_ca_keeps_the_previous_one(tmp_path: Path) -> None:
    init_ca(tmp_path / "old", cn="old CA")
    init_ca(tmp_path / "new", cn="new CA")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(tmp_path / "old" / "ca.pem", live / "ca.pem")
    shutil.copy(tmp_path / "old" / "ca-key.pem", live / "ca-key.pem")
    signer = Signer(str(live / "ca.pem"), str(live / "ca-key.pem"))
    old_hash = signer.ca_cert_hash
    shutil.copy(tmp_path / "new" / "ca.pem", live / "ca.pem")  # certificate first, key not yet
    signer.check()
    assert signer.ca_cert_hash == old_hash
    shutil.copy(tmp_path / "new" / "ca-key.pem", live / "ca-key.pem")
    signer.check()
    assert signer.ca_cert_hash == spki_hash(load_cert(tmp_path / "new" / "ca.pem"))


def test_token_text_forms() -> None:
    pin = "sha256:" + "ab" * 32
    t = parse_token(f"abcdef.0123456789abcdef@{pin}")
    assert (t.id, t.secret, t.ca_cert_hash) == ("abcdef", "0123456789abcdef", pin)
    assert parse_token("abcdef.0123456789abcdef", pin).ca_cert_hash == pin
    assert "0123456789abcdef" not in repr(t)
    for bad in ("abcdef.short", "ABCDEF.0123456789abcdef", ""):
        with pytest.raises(UsageError):
            parse_token(bad, pin)
    with pytest.raises(UsageError, match="CA to trust is missing"):
        parse_token("abcdef.0123456789abcdef")
