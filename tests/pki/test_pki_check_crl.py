"""`pki check` and the CRL: what a server would refuse, and a CRL about to expire (issue 12)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from securekv.pki.ca import init_ca
from securekv.pki.check import check_dir
from securekv.pki.issue import issue_cert
from securekv.pki.revoke import revoke, write_crl

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def crl_problems(directory) -> list[tuple[str, str]]:
    return [(p.severity, p.message) for p in check_dir(directory).problems if p.file == "crl.pem"]


def test_crl_expiring_within_48_hours_is_a_warning(tmp_path) -> None:
    init_ca(tmp_path)
    issue_cert(tmp_path, "client", "bob")
    write_crl(tmp_path, next_update=timedelta(days=7))
    assert crl_problems(tmp_path) == []
    write_crl(tmp_path, next_update=timedelta(hours=47))
    [(severity, message)] = crl_problems(tmp_path)
    assert severity == "warning" and message.startswith("expires in 1d2") and "securekv pki crl" in message
    assert check_dir(tmp_path).ok


def test_expired_crl_is_an_error(tmp_path, pki) -> None:
    init_ca(tmp_path, now=NOW - timedelta(days=5))
    write_crl(tmp_path, now=NOW - timedelta(days=3), next_update=timedelta(days=1))
    [(severity, message)] = crl_problems(tmp_path)
    assert severity == "error" and message.startswith("expired 2d") and "keep enforcing it" in message
    out = pki("check", "--dir", tmp_path, "--json")
    assert out.exit_code == 1
    assert any(p["file"] == "crl.pem" and p["severity"] == "error" for p in json.loads(out.stdout)["problems"])


def test_crl_with_a_certificate_or_unpublished_revocations(tmp_path) -> None:
    init_ca(tmp_path)
    issue_cert(tmp_path, "client", "bob")
    write_crl(tmp_path)
    revoke(tmp_path, "bob")  # recorded, CRL not regenerated yet
    [(severity, message)] = [p for p in crl_problems(tmp_path) if "revoked.json" in p[1]]
    assert severity == "warning" and "1 revoked certificate(s) in revoked.json are not in the CRL" in message
    crl = tmp_path / "crl.pem"
    crl.write_bytes(crl.read_bytes() + (tmp_path / "ca.pem").read_bytes())
    problems = crl_problems(tmp_path)
    assert ("error", "servers would refuse to start with it: crl.pem contains a CERTIFICATE block: a CRL file must "
            "contain only CRLs (OpenSSL-based servers would trust a CA certificate hidden there); refusing it") in problems
