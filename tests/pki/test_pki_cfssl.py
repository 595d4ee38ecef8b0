"""Proof with the real cfssl/cfssljson: their certificates are read and checked by securekv, and
the same CSR/config JSON given to securekv yields equivalent certificates."""

from __future__ import annotations

import json
import subprocess

import pytest
from cryptography import x509

from securekv.pki.info import cert_info
from securekv.pki.verify import load_cert

from pki_helpers import TEMPLATES, PKI, tool

LEAVES = {"server": "server-csr.json", "peer": "peer-csr.json", "client": "client-csr.json"}


def cfssl_bare(directory, name: str, *gencert_args: str) -> None:
    gen = subprocess.run([tool("cfssl"), "gencert", *gencert_args], capture_output=True, cwd=directory, timeout=60)
    assert gen.returncode == 0, gen.stderr
    bare = subprocess.run([tool("cfssljson"), "-bare", name], input=gen.stdout, capture_output=True, cwd=directory, timeout=60)
    assert bare.returncode == 0, bare.stderr


@pytest.fixture(scope="module")
def cfssl_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cfssl")
    cfssl_bare(directory, "ca", "-initca", str(TEMPLATES / "ca-csr.json"))
    for profile, csr in LEAVES.items():
        cfssl_bare(directory, profile, "-ca=ca.pem", "-ca-key=ca-key.pem", f"-config={TEMPLATES / 'ca-config.json'}",
                   f"-profile={profile}", str(TEMPLATES / csr))
    return directory


@pytest.fixture(scope="module")
def securekv_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("securekv")
    pki = PKI()
    result = pki("init", "--dir", directory, "--csr", TEMPLATES / "ca-csr.json")
    assert result.exit_code == 0, result.stderr
    for profile, csr in LEAVES.items():
        result = pki("issue", profile, profile, "--dir", directory, "--csr", TEMPLATES / csr,
                     "--config", TEMPLATES / "ca-config.json")
        assert result.exit_code == 0, result.stderr
    return directory


def test_pki_info_reads_cfssl_certs(cfssl_dir, pki) -> None:
    result = pki("info", cfssl_dir / "server.pem", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["subject"] == "CN=securekv-server,OU=server,O=securekv,L=San Francisco,ST=CA,C=US"
    assert info["issuer"] == "CN=securekv CA,OU=ops,O=securekv,L=San Francisco,ST=CA,C=US"
    assert info["sans"]["dns"] == ["localhost", "securekv.example.com"]
    assert info["sans"]["ip"] == ["127.0.0.1", "::1"]
    assert info["extended_key_usage"] == ["server auth"]
    assert info["key_usage"] == ["digital signature", "key encipherment"]
    assert info["is_ca"] is False and info["signature_algorithm"] == "ecdsa-with-SHA256"
    assert len(info["sha256_fingerprint"].split(":")) == 32
    human = pki("info", cfssl_dir / "ca.pem")
    assert human.exit_code == 0
    assert "CA:                  yes" in human.stdout and "cert sign, crl sign" in human.stdout


def test_pki_check_passes_cfssl_dir(cfssl_dir, pki) -> None:
    result = pki("check", "--dir", cfssl_dir, "--hosts", "127.0.0.1,localhost")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "no problems" in result.stdout
    for name in ("ca.pem", "server.pem", "peer.pem", "client.pem"):
        assert name in json.loads(pki("check", "--dir", cfssl_dir, "--json").stdout)["checked"]


def _essentials(cert: x509.Certificate) -> dict:
    info = cert_info(cert)
    return {
        "subject": info["subject"],
        "sans": {k: sorted(v) for k, v in info["sans"].items()},
        "key_usage": sorted(info["key_usage"]),
        "extended_key_usage": sorted(info["extended_key_usage"]),
        "is_ca": info["is_ca"],
        "path_len": info["path_len"],
        "public_key": info["public_key"],
        "validity": cert.not_valid_after_utc - cert.not_valid_before_utc,
        "critical": sorted(e.oid.dotted_string for e in cert.extensions if e.critical),
    }


@pytest.mark.parametrize("name", ["ca", *LEAVES])
def test_same_json_gives_equivalent_certs(cfssl_dir, securekv_dir, name: str) -> None:
    theirs = load_cert(cfssl_dir / f"{name}.pem")
    ours = load_cert(securekv_dir / f"{name}.pem")
    mine, cfssl = _essentials(ours), _essentials(theirs)
    if name == "peer":  # securekv's peer profile also names the member in a URI SAN (docs/peer.md)
        from securekv.tlspolicy import member_uri

        assert mine["sans"]["uri"] == [member_uri(ours.subject.rfc4514_string().split("CN=", 1)[1].split(",")[0])]
        mine["sans"]["uri"] = []
    assert mine == cfssl
    if name != "ca":
        assert {e.oid for e in ours.extensions} == {e.oid for e in theirs.extensions}
    # both issuers' validity windows start the same way (backdated 5 minutes, like cfssl)
    assert abs((ours.not_valid_before_utc - theirs.not_valid_before_utc).total_seconds()) < 600


def test_cfssl_key_files_are_interchangeable(cfssl_dir, securekv_dir) -> None:
    """Both write the same PEM key flavour (SEC1 'EC PRIVATE KEY'), so either feeds any tool."""
    assert (cfssl_dir / "server-key.pem").read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert (securekv_dir / "server-key.pem").read_text().startswith("-----BEGIN EC PRIVATE KEY-----")


def test_securekv_issues_from_cfssl_ca(cfssl_dir, pki, tmp_path) -> None:
    """A CA made by cfssl can be adopted: securekv signs with it and the result checks clean."""
    import shutil

    for name in ("ca.pem", "ca-key.pem"):
        shutil.copy(cfssl_dir / name, tmp_path / name)
    (tmp_path / "ca-key.pem").chmod(0o600)
    result = pki("issue", "etcd", "node1", "--dir", tmp_path, "--hosts", "127.0.0.1", "--config", TEMPLATES / "ca-config.json")
    assert result.exit_code == 0, result.stderr
    assert pki("check", "--dir", tmp_path, "--hosts", "127.0.0.1").exit_code == 0
