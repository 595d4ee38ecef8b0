"""The CLI features of issue 2 end to end: cfssl CSR fields, flags, --force, user-defined
profiles, check of a non-CA ca.pem, revoke/crl output and the passphrase prompt."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from datetime import datetime, timedelta

from cryptography import x509

from securekv.pki.ca import init_ca
from securekv.pki.issue import issue_cert
from securekv.pki.keys import load_private_key
from securekv.pki.verify import load_cert

from pki_helpers import REPO, run_tool, snapshot


def test_init_honours_csr_key_and_ca_fields_and_flags_win(tmp_path, pki) -> None:
    csr = tmp_path / "ca-csr.json"
    csr.write_text(json.dumps({"CN": "Acme Root", "names": [{"C": "DE", "O": "Acme", "OU": "infra"}],
                               "key": {"algo": "rsa", "size": 3072}, "ca": {"expiry": "43800h", "pathlen": 1}}))
    out = pki("init", "--dir", tmp_path / "a", "--csr", csr, "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["subject"] == "CN=Acme Root,OU=infra,O=Acme,C=DE" and data["key_algo"] == "RSA 3072"
    cert = load_cert(tmp_path / "a" / "ca.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=43800)
    text = run_tool("openssl", "x509", "-in", str(tmp_path / "a" / "ca.pem"), "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:1" in text and "Public-Key: (3072 bit)" in text

    out = pki("init", "--dir", tmp_path / "b", "--csr", csr, "--cn", "Other", "--key-algo", "ecdsa", "--key-size", "384",
              "--expiry", "1y", "--pathlen", "0")
    assert out.exit_code == 0, out.stderr
    assert "Created root CA CN=Other,OU=infra,O=Acme,C=DE" in out.stdout and "ECDSA P-384" in out.stdout
    cert = load_cert(tmp_path / "b" / "ca.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=365)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    text = run_tool("openssl", "x509", "-in", str(tmp_path / "b" / "ca.pem"), "-noout", "-text").stdout
    assert "ecdsa-with-SHA384" in text and "CA:TRUE, pathlen:0" in text


def test_force_replaces_the_ca_but_keeps_a_customised_config(tmp_path, pki) -> None:
    assert pki("init", "--dir", tmp_path).exit_code == 0
    config = tmp_path / "ca-config.json"
    custom = json.loads(config.read_text())
    custom["signing"]["profiles"]["ops"] = {"expiry": "48h", "usages": ["signing", "client auth"]}
    config.write_text(json.dumps(custom))
    before = snapshot(tmp_path)
    refused = pki("init", "--dir", tmp_path, "--cn", "New")
    assert refused.exit_code == 1 and "pass --force" in refused.stderr and snapshot(tmp_path) == before
    out = pki("init", "--dir", tmp_path, "--cn", "New", "--force")
    assert out.exit_code == 0, out.stderr
    after = snapshot(tmp_path)
    assert after["ca.pem"] != before["ca.pem"] and after["ca-key.pem"] != before["ca-key.pem"]
    assert after["ca-config.json"] == before["ca-config.json"]
    assert load_cert(tmp_path / "ca.pem").subject.rfc4514_string() == "CN=New"


def test_user_defined_profiles_with_cfssl_usages_and_expiry(tmp_path, pki) -> None:
    """Any profile of a cfssl signing config works: its usages and its expiry (or the default's)."""
    init_ca(tmp_path)  # the CLI signs at the wall clock
    cfg = tmp_path / "custom-config.json"
    cfg.write_text(json.dumps({"signing": {
        "default": {"expiry": "24h"},
        "profiles": {
            "scraper": {"expiry": "720h", "usages": ["digital signature", "key agreement", "client auth", "email protection"]},
            "short": {"usages": ["signing", "key encipherment", "server auth"]},
        },
    }}))
    out = pki("issue", "scraper", "prom", "--dir", tmp_path, "--config", cfg, "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["profile"] == "scraper"
    cert = load_cert(tmp_path / "prom.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=720)
    text = run_tool("openssl", "x509", "-in", str(tmp_path / "prom.pem"), "-noout", "-text").stdout
    assert "Digital Signature, Key Agreement" in text
    assert "TLS Web Client Authentication, E-mail Protection" in text
    verify = run_tool("openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "prom.pem"))
    assert verify.stdout.strip().endswith(": OK")

    out = pki("issue", "short", "web", "--dir", tmp_path, "--config", cfg, "--hosts", "web.local")
    assert out.exit_code == 0, out.stderr
    cert = load_cert(tmp_path / "web.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=24)

    # a profile added to DIR/ca-config.json is used without --config
    config = json.loads((tmp_path / "ca-config.json").read_text())
    config["signing"]["profiles"]["ops"] = {"expiry": "48h", "usages": ["signing", "client auth"]}
    (tmp_path / "ca-config.json").write_text(json.dumps(config))
    out = pki("issue", "ops", "oncall", "--dir", tmp_path)
    assert out.exit_code == 0, out.stderr
    cert = load_cert(tmp_path / "oncall.pem")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=48)
    missing = pki("issue", "scraper", "x", "--dir", tmp_path)
    assert missing.exit_code == 1 and "unknown profile 'scraper'" in missing.stderr and "ops" in missing.stderr


def test_check_flags_a_ca_pem_that_is_not_a_ca(tmp_path, pki) -> None:
    init_ca(tmp_path / "real")
    leaf = issue_cert(tmp_path / "real", "client", "alice")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "ca.pem").write_bytes(leaf.cert_path.read_bytes())
    (tmp_path / "fake" / "ca-key.pem").write_bytes(leaf.key_path.read_bytes())
    os.chmod(tmp_path / "fake" / "ca-key.pem", 0o600)
    out = pki("check", "--dir", tmp_path / "fake")
    assert out.exit_code == 1
    assert out.stdout.splitlines()[1].split(None, 2) == ["ca.pem", "error", "is not a CA certificate (basicConstraints "
                                                          "CA:FALSE); nothing can chain to it"]


def test_revoke_and_crl_human_and_json_output(tmp_path, pki) -> None:
    init_ca(tmp_path)
    alice = issue_cert(tmp_path, "client", "alice")
    out = pki("revoke", "alice", "--dir", tmp_path, "--reason", "key-compromise")
    assert out.exit_code == 0, out.stderr
    serial = format(alice.certificate.serial_number, "x")
    assert out.stdout.splitlines() == [f"Revoked alice (serial {serial}): keyCompromise",
                                       f"Run `securekv pki crl --dir {tmp_path}` to publish it."]
    out = pki("crl", "--dir", tmp_path, "--next-update", "3d", "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["number"] == 1 and data["revoked"] == 1 and data["crl"] == str(tmp_path / "crl.pem")
    span = datetime.fromisoformat(data["next_update"]) - datetime.fromisoformat(data["this_update"])
    assert span == timedelta(days=3)
    text = run_tool("openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-noout", "-text").stdout
    openssl_serial = run_tool("openssl", "x509", "-in", str(alice.cert_path), "-noout", "-serial").stdout.strip()
    assert f"Serial Number: {openssl_serial.split('=', 1)[1]}" in text and "Key Compromise" in text
    again = pki("crl", "--dir", tmp_path)
    assert again.exit_code == 0 and again.stdout.startswith(f"Wrote CRL #2 to {tmp_path / 'crl.pem'}: 1 revoked")


def _securekv(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "securekv", "pki", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=60, **kwargs)


def test_encrypt_key_reads_a_piped_passphrase(tmp_path) -> None:
    """Without a terminal, --encrypt-key takes one line from stdin (no getpass warnings)."""
    proc = _securekv("init", "--dir", tmp_path / "ca", "--encrypt-key", input="pipe-secret\n")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "passphrase-protected" in proc.stdout
    load_private_key(tmp_path / "ca" / "ca-key.pem", b"pipe-secret")
    proc = _securekv("init", "--dir", tmp_path / "none", "--encrypt-key", input="")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("securekv pki: error: --encrypt-key read no passphrase from standard input "
                           "(pipe one line, or use --passphrase-file)\n")
    assert not (tmp_path / "none").exists()


def test_encrypt_key_prompts_twice_hidden_on_a_terminal(tmp_path) -> None:
    """On a real terminal (a pty) the passphrase is asked twice, not echoed, and a mismatch re-asks."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "securekv", "pki", "init", "--dir", str(tmp_path / "ca"), "--encrypt-key"],
        stdin=slave, stderr=slave, stdout=subprocess.PIPE, cwd=REPO, start_new_session=True,  # no controlling tty
    )
    os.close(slave)
    transcript = b""
    seen = 0

    def expect(text: bytes) -> None:
        """Read the terminal until ``text`` appears (the prompt is written after echo is off)."""
        nonlocal transcript, seen
        while text not in transcript[seen:]:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no {text!r} on the terminal; got {transcript!r}"
            transcript += os.read(master, 1024)
        seen = transcript.index(text, seen) + len(text)

    try:
        expect(b"CA key: ")
        os.write(master, b"term-secret\n")
        expect(b"confirmation: ")
        os.write(master, b"typo\n")
        expect(b"do not match")
        expect(b"CA key: ")
        os.write(master, b"term-secret\n")
        expect(b"confirmation: ")
        os.write(master, b"term-secret\n")
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0
    assert b"Created root CA" in stdout and b"passphrase-protected" in stdout
    assert b"term-secret" not in transcript and b"typo" not in transcript  # hidden input
    load_private_key(tmp_path / "ca" / "ca-key.pem", b"term-secret")
