"""auto-TLS, the embedded local PKI, pki check, revocation records and CLI output."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest

from securekv.errors import UsageError
from securekv.pki.autotls import ensure_self_signed
from securekv.pki.ca import init_ca
from securekv.pki.check import check_dir
from securekv.pki.issue import issue_cert
from securekv.pki.keys import load_private_key
from securekv.pki.local import ensure_local_pki
from securekv.pki.names import cert_sans
from securekv.pki.revoke import load_revocations, revoke, write_crl
from securekv.pki.verify import load_cert_chain, verify_chain

from pki_helpers import NOW, run_tool, snapshot


def test_auto_tls_make_reuse_and_replace(tmp_path) -> None:
    d = tmp_path / "fixtures" / "peer"
    first = ensure_self_signed(d, ["127.0.0.1:2380", "node1"], now=NOW)
    assert first.created and first.cert_path == d / "cert.pem" and first.key_path == d / "key.pem"
    assert oct(first.key_path.stat().st_mode & 0o777) == "0o600"
    assert cert_sans(first.certificate).as_strings() == ["node1", "127.0.0.1"]
    assert first.certificate.not_valid_after_utc - first.certificate.not_valid_before_utc == timedelta(days=365)
    again = ensure_self_signed(d, ["node1", "https://127.0.0.1:2380"], now=NOW + timedelta(days=100))
    assert not again.created and again.reason == "reused"
    assert again.certificate == first.certificate
    moved = ensure_self_signed(d, ["127.0.0.2"], now=NOW)
    assert moved.created and "does not cover 127.0.0.2" in moved.reason
    expired = ensure_self_signed(d, ["127.0.0.2"], now=NOW + timedelta(days=400))
    assert expired.created and "expired" in expired.reason
    longer = ensure_self_signed(tmp_path / "x", ["a"], validity_years=3, now=NOW)
    assert longer.certificate.not_valid_after_utc - longer.certificate.not_valid_before_utc == timedelta(days=3 * 365)
    verify_chain([longer.certificate], [longer.certificate], now=NOW)
    with pytest.raises(UsageError, match="at least one advertised host"):
        ensure_self_signed(tmp_path / "y", [], now=NOW)
    with pytest.raises(UsageError, match="validity"):
        ensure_self_signed(tmp_path / "y", ["a"], validity_years=0, now=NOW)
    assert not (tmp_path / "y").exists()


def test_auto_tls_replaces_damaged_files(tmp_path) -> None:
    ensure_self_signed(tmp_path, ["a"], now=NOW)
    (tmp_path / "key.pem").write_text("garbage")
    assert ensure_self_signed(tmp_path, ["a"], now=NOW).created
    blocked = tmp_path / "blocked"
    (blocked / "key.pem").mkdir(parents=True)  # a directory where the key must go: refused, nothing written
    with pytest.raises(UsageError, match="key.pem is a directory"):
        ensure_self_signed(blocked, ["a"], now=NOW)
    assert sorted(p.name for p in blocked.iterdir()) == ["key.pem"]


def test_local_pki_for_serve(tmp_path) -> None:
    d = tmp_path / "data" / "pki"
    first = ensure_local_pki(d, ["127.0.0.1:2379", "localhost"], client_names=("root", "alice"), now=NOW)
    assert first.created == ("ca", "server", "root", "alice")
    chain = load_cert_chain(first.server_cert)
    verify_chain(chain, load_cert_chain(first.ca_path), now=NOW)
    assert cert_sans(chain[0]).as_strings() == ["localhost", "127.0.0.1"]
    assert load_cert_chain(first.clients["alice"][0])[0].subject.rfc4514_string() == "CN=alice"
    same = ensure_local_pki(d, ["localhost", "127.0.0.1"], client_names=("root", "alice"), now=NOW + timedelta(days=10))
    assert same.created == ()
    grown = ensure_local_pki(d, ["localhost", "127.0.0.1", "::1"], client_names=("root",), now=NOW)
    assert grown.created == ("server",)
    renewed = ensure_local_pki(d, ["localhost"], client_names=("root",), now=NOW + timedelta(days=340))
    assert renewed.created == ("server", "root")
    assert check_dir(d, now=NOW + timedelta(days=340)).ok


def test_check_reports_each_problem(tmp_path) -> None:
    init_ca(tmp_path, now=NOW - timedelta(days=30))
    issue_cert(tmp_path, "server", "web", hosts=["web.example.com"], now=NOW)
    issue_cert(tmp_path, "client", "soon", expiry=timedelta(days=10), now=NOW)
    issue_cert(tmp_path, "client", "old", expiry=timedelta(days=1), now=NOW - timedelta(days=5))
    issue_cert(tmp_path, "client", "loose", now=NOW)
    os.chmod(tmp_path / "loose-key.pem", 0o644)
    issue_cert(tmp_path, "client", "swapped", now=NOW)
    (tmp_path / "swapped-key.pem").write_bytes((tmp_path / "loose-key.pem").read_bytes())
    os.chmod(tmp_path / "swapped-key.pem", 0o600)
    issue_cert(tmp_path, "client", "nokey", now=NOW)
    (tmp_path / "nokey-key.pem").unlink()
    other = tmp_path / "other"
    init_ca(other, now=NOW)
    issue_cert(other, "client", "stranger", now=NOW)
    for suffix in (".pem", "-key.pem"):
        (tmp_path / f"stranger{suffix}").write_bytes((other / f"stranger{suffix}").read_bytes())
    os.chmod(tmp_path / "stranger-key.pem", 0o600)
    report = check_dir(tmp_path, hosts=["web.example.com", "10.1.1.1"], now=NOW)
    found = {(p.file, p.severity): p.message for p in report.problems}
    assert not report.ok
    assert "expires in 9d23h" in found[("soon.pem", "warning")]
    assert "expired on" in found[("old.pem", "error")]
    assert "readable by group/other (mode 0644)" in found[("loose-key.pem", "error")]
    assert "does not match certificate swapped.pem" in found[("swapped-key.pem", "error")]
    assert "no key file nokey-key.pem" in found[("nokey.pem", "error")]
    assert "signed by a different key" in found[("stranger.pem", "error")]
    assert "do not cover 10.1.1.1" in found[("web.pem", "error")]
    assert len(report.problems) == 7


def test_check_cli_exit_codes_and_table(tmp_path, pki) -> None:
    init_ca(tmp_path)
    issue_cert(tmp_path, "server", "web", hosts=["localhost"])
    ok = pki("check", "--dir", tmp_path, "--hosts", "localhost")
    assert ok.exit_code == 0 and ok.stdout.startswith("OK:")
    warn = pki("check", "--dir", tmp_path, "--warn", "400d")
    assert warn.exit_code == 0 and "warning" in warn.stdout and "expires in" in warn.stdout
    bad = pki("check", "--dir", tmp_path, "--hosts", "127.0.0.1")
    assert bad.exit_code == 1
    assert bad.stdout.splitlines()[0].split() == ["FILE", "SEVERITY", "PROBLEM"]
    assert "web.pem" in bad.stdout and "do not cover 127.0.0.1" in bad.stdout
    data = json.loads(pki("check", "--dir", tmp_path, "--hosts", "127.0.0.1", "--json").stdout)
    assert data["ok"] is False and data["problems"][0]["file"] == "web.pem"


def test_revoke_by_name_and_serial(tmp_path, pki) -> None:
    init_ca(tmp_path, now=NOW)
    a = issue_cert(tmp_path, "client", "a", now=NOW)
    b = issue_cert(tmp_path, "client", "b", now=NOW)
    assert revoke(tmp_path, "a", reason="superseded", now=NOW).name == "a"
    colon = ":".join(f"{x:02X}" for x in b.certificate.serial_number.to_bytes(20, "big").lstrip(b"\0"))
    result = pki("revoke", colon, "--dir", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["serial"] == format(b.certificate.serial_number, "x")
    assert [r.serial for r in load_revocations(tmp_path)] == [a.certificate.serial_number, b.certificate.serial_number]
    crl = pki("crl", "--dir", tmp_path)
    assert crl.exit_code == 0 and "Wrote CRL #1" in crl.stdout and "2 revoked" in crl.stdout
    text = run_tool("openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text").stdout
    assert format(a.certificate.serial_number, "X").rjust(40, "0")[-20:] in text.replace(":", "").upper()
    assert "Superseded" in text
    assert write_crl(tmp_path, now=NOW).number == 2
    assert any("revoked (superseded)" in p.message for p in check_dir(tmp_path, now=NOW).problems)


def test_cli_human_and_json_output(tmp_path, pki) -> None:
    root, inter = tmp_path / "root", tmp_path / "inter"
    out = pki("init", "--dir", root, "--cn", "Acme Root")
    assert out.exit_code == 0
    assert f"Created root CA CN=Acme Root in {root}" in out.stdout
    assert f"private key: {root}/ca-key.pem (mode 0600)" in out.stdout
    assert "ECDSA P-256" in out.stdout and "not after:" in out.stdout
    (tmp_path / "pass").write_text("hunter2\n")
    out = pki("init", "--dir", inter, "--intermediate", "--parent-dir", root, "--permit-dns", "example.com,example.net",
              "--passphrase-file", tmp_path / "pass", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["intermediate"] and data["encrypted"] and data["chain"] == str(inter / "ca-chain.pem")
    out = pki("issue", "server", "web", "--dir", inter, "--hosts", "www.example.com", "--hosts", "api.example.net",
              "--passphrase-file", tmp_path / "pass", "--expiry", "90d")
    assert out.exit_code == 0, out.stderr
    assert "SANs:        www.example.com, api.example.net" in out.stdout and "(+1 CA cert(s) in chain)" in out.stdout
    out = pki("issue", "client", "alice", "--dir", inter, "--passphrase-file", tmp_path / "pass", "--expiry", "20y", "--json")
    assert out.exit_code == 0
    assert "securekv pki: warning: requested expiry ends" in out.stderr and "clamped" in out.stderr
    assert json.loads(out.stdout)["clamped"] is True
    assert pki("check", "--dir", inter, "--hosts", "www.example.com").exit_code == 0
    info = pki("info", inter / "web.pem")
    assert "Chain [1]:" in info.stdout and "CN=securekv intermediate CA" in info.stdout


def test_cli_encrypt_key_from_stdin(tmp_path, pki) -> None:
    """Not a terminal: one line of stdin is the passphrase (the terminal prompt is in test_pki_cli_features)."""
    out = pki("init", "--dir", tmp_path, "--encrypt-key", input="pw\n")
    assert out.exit_code == 0, out.stderr
    assert b"ENCRYPTED" in (tmp_path / "ca-key.pem").read_bytes()
    load_private_key(tmp_path / "ca-key.pem", b"pw")
    before = snapshot(tmp_path)
    issued = pki("issue", "client", "a", "--dir", tmp_path)
    assert issued.exit_code == 1 and "passphrase-protected" in issued.stderr
    assert snapshot(tmp_path) == before
