"""Every bad input: one clear line on stderr, non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from securekv.pki.ca import init_ca
from securekv.pki.issue import issue_cert

from pki_helpers import NOW, REPO, snapshot


@pytest.fixture
def world(tmp_path):
    """A root CA in ca/, an encrypted CA in enc/, a second CA in other/, passphrase files."""
    init_ca(tmp_path / "ca", now=NOW)
    issue_cert(tmp_path / "ca", "client", "alice", now=NOW)
    init_ca(tmp_path / "enc", passphrase=b"right", now=NOW)
    init_ca(tmp_path / "other", now=NOW)
    init_ca(tmp_path / "p1", pathlen=1, now=NOW)
    (tmp_path / "good.pass").write_text("right\n")
    (tmp_path / "bad.pass").write_text("wrong\n")
    (tmp_path / "empty.pass").write_text("")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    (tmp_path / "mixed" / "ca-key.pem").write_bytes((tmp_path / "other" / "ca-key.pem").read_bytes())
    (tmp_path / "nokey").mkdir()
    (tmp_path / "nokey" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    (tmp_path / "noca").mkdir()
    (tmp_path / "notca").mkdir()  # ca.pem is a leaf (CA:FALSE) with its matching key
    (tmp_path / "notca" / "ca.pem").write_bytes((tmp_path / "ca" / "alice.pem").read_bytes())
    (tmp_path / "notca" / "ca-key.pem").write_bytes((tmp_path / "ca" / "alice-key.pem").read_bytes())
    (tmp_path / "badca").mkdir()
    (tmp_path / "badca" / "ca.pem").write_text("garbage\n")
    (tmp_path / "badkey").mkdir()
    (tmp_path / "badkey" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    (tmp_path / "badkey" / "ca-key.pem").write_text("garbage\n")
    (tmp_path / "keydir").mkdir()  # ca-key.pem is a directory
    (tmp_path / "keydir" / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    (tmp_path / "keydir" / "ca-key.pem").mkdir()
    init_ca(tmp_path / "clash", now=NOW)  # directories where issue's output files must go
    (tmp_path / "clash" / "bob-key.pem").mkdir()
    (tmp_path / "clash" / "carol.pem").mkdir()
    init_ca(tmp_path / "damaged", now=NOW)
    (tmp_path / "damaged" / "revoked.json").write_text('{"crl_number": 1, "revoked": [{"serial": "zz"}]}\n')
    (tmp_path / "badc.json").write_text('{"CN": "x", "names": [{"C": "USA"}]}')
    (tmp_path / "badhosts.json").write_text('{"CN": "x", "hosts": ["bad_host"]}')
    (tmp_path / "badexp.json").write_text('{"signing": {"profiles": {"x": {"usages": ["client auth"], "expiry": "forever"}}}}')
    (tmp_path / "caprof.json").write_text('{"signing": {"profiles": {"ica": {"usages": ["cert sign"], "ca_constraint": {"is_ca": true}}}}}')
    return tmp_path


CASES = [
    # (args with {t} = tmp dir, message fragment)
    ("init --dir {t}/ca", "already holds a CA (ca.pem, ca-key.pem); pass --force"),
    ("init --dir {t}/new --expiry 10x", "invalid --expiry '10x'"),
    ("init --dir {t}/new --expiry 0h", "must be greater than zero"),
    ("init --dir {t}/new --key-algo dsa", "unknown key algorithm 'dsa'"),
    ("init --dir {t}/new --key-size 200", "invalid ECDSA key size 200"),
    ("init --dir {t}/new --key-algo rsa --key-size 1024", "invalid RSA key size 1024"),
    ("init --dir {t}/new --csr {t}/missing.json", "CSR file {t}/missing.json does not exist"),
    ("init --dir {t}/new --csr {t}/broken.json", "is not valid JSON"),
    ("init --dir {t}/new --intermediate", "--intermediate needs --parent-dir"),
    ("init --dir {t}/new --parent-dir {t}/ca", "need --intermediate"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/nowhere", "CA directory {t}/nowhere does not exist"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/ca --permit-ip 10.0.0.1/8", "malformed --permit-ip '10.0.0.1/8'"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/ca --permit-dns bad_name", "malformed host 'bad_name'"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/enc", "is passphrase-protected"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/enc --parent-passphrase-file {t}/bad.pass", "wrong passphrase"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/p1 --pathlen 1", "--pathlen 1 is too long"),
    ("init --dir {t}/new --passphrase-file {t}/empty.pass", "passphrase file {t}/empty.pass is empty"),
    ("init --dir {t}/new --passphrase-file {t}/nofile", "cannot read passphrase file"),
    ("issue nope bob --dir {t}/ca", "unknown profile 'nope'"),
    ("issue server web --dir {t}/ca", "profile 'server' includes server auth and needs at least one host"),
    ("issue peer m1 --dir {t}/ca", "profile 'peer' includes server auth and needs at least one host"),
    ("issue server web --dir {t}/ca --hosts 127.0.0.1,bad_host", "malformed host 'bad_host'"),
    ("issue server web --dir {t}/ca --hosts a,,b", "empty host name"),
    ("issue server web --dir {t}/ca --hosts *.com", "wildcard needs at least two labels"),
    ("issue server web --dir {t}/ca --hosts a.*.example.com", "only as the leftmost label"),
    ("issue client bob --dir {t}/nowhere", "CA directory {t}/nowhere does not exist"),
    ("issue client bob --dir {t}/nokey", "CA key {t}/nokey/ca-key.pem is missing"),
    ("issue client bob --dir {t}/mixed", "does not match CA certificate"),
    ("issue client bob --dir {t}/enc", "is passphrase-protected; give --passphrase-file"),
    ("issue client bob --dir {t}/enc --passphrase-file {t}/bad.pass", "wrong passphrase for key {t}/enc/ca-key.pem"),
    ("issue client bob --dir {t}/ca --config {t}/broken.json", "is not valid JSON"),
    ("issue client bob --dir {t}/ca --expiry soon", "invalid --expiry 'soon'"),
    ("issue client ../bob --dir {t}/ca", "invalid certificate name '../bob'"),
    ("issue client ca --dir {t}/ca", "clash with the CA's own files"),
    ("issue client bob --dir {t}/ca --uri nope", "malformed URI 'nope'"),
    ("info {t}/missing.pem", "certificate file {t}/missing.pem does not exist"),
    ("info {t}/good.pass", "holds no PEM or DER certificate"),
    ("info {t}/ca", "is a directory"),
    # added by the issue-2 audit: each was a traceback, a silent success or a partial write
    ("init --dir {t}/new --expiry 1" + "9" * 400 + "h", "longer than 100 years"),
    ("init --dir {t}/new --cn ''", "--cn is empty"),
    ("init --dir {t}/new --encrypt-key", "--encrypt-key read no passphrase from standard input"),
    ("init --dir {t}/new --key-algo ed25519 --key-size 384", "ed25519 keys have a fixed size"),
    ("init --dir {t}/new --csr {t}/badc.json", "C must be a two-letter code"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/ca --permit-dns *.example.com", "not a wildcard"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/notca", "{t}/notca/ca.pem is not a CA certificate"),
    ("init --dir {t}/new --intermediate --parent-dir {t}/badkey", "{t}/badkey/ca-key.pem is not a PEM private key"),
    ("init --dir {t}/keydir --force", "{t}/keydir/ca-key.pem is a directory"),
    ("issue client bob --dir {t}/noca", "no CA certificate {t}/noca/ca.pem"),
    ("issue client bob --dir {t}/notca", "{t}/notca/ca.pem is not a CA certificate"),
    ("issue client bob --dir {t}/badca", "{t}/badca/ca.pem holds no PEM certificate"),
    ("issue client bob --dir {t}/badkey", "{t}/badkey/ca-key.pem is not a PEM private key"),
    ("issue client bob --dir {t}/keydir", "cannot read key file {t}/keydir/ca-key.pem"),
    ("issue client bob --dir {t}/clash", "{t}/clash/bob-key.pem is a directory"),
    ("issue client carol --dir {t}/clash", "{t}/clash/carol.pem is a directory"),
    ("issue client bob --dir {t}/ca --cn ' '", "--cn is empty"),
    ("issue client bob --dir {t}/ca --csr {t}/badc.json", "C must be a two-letter code"),
    ("issue server web --dir {t}/ca --csr {t}/badhosts.json", "malformed host 'bad_host'"),
    ("issue x bob --dir {t}/ca --config {t}/badexp.json", "profile 'x' expiry 'forever'"),
    ("issue ica bob --dir {t}/ca --config {t}/caprof.json", "issues CA certificates"),
    ("issue client bob --dir {t}/ca --key-size abc", "'abc' is not a valid integer"),
    ("check --dir {t}/ca --hosts localhost,,127.0.0.1", "empty host name"),
    ("check --dir {t}/badca", "{t}/badca/ca.pem holds no PEM certificate"),
    ("check --dir {t}/damaged", "revocation record {t}/damaged/revoked.json is damaged"),
    ("revoke ca --dir {t}/ca", "refusing to revoke the CA's own certificate"),
    ("revoke crl --dir {t}/ca", "'crl' names one of the CA's own files"),
    ("revoke 0xabc --dir {t}/damaged", "is damaged"),
    ("crl --dir {t}/damaged", "is damaged"),
    ("crl --dir {t}/enc", "is passphrase-protected"),
    ("check --dir {t}/nowhere", "directory {t}/nowhere does not exist"),
    ("check --dir {t}/ca --warn 3x", "invalid --warn '3x'"),
    ("check --dir {t}/ca --hosts bad_host", "malformed host 'bad_host'"),
    ("revoke nobody --dir {t}/ca", "'nobody' is neither a certificate name"),
    ("revoke alice --dir {t}/ca --reason because", "unknown revocation reason 'because'"),
    ("revoke alice --dir {t}/other", "'alice' is neither a certificate name"),
    ("crl --dir {t}/nowhere", "CA directory {t}/nowhere does not exist"),
    ("crl --dir {t}/enc --passphrase-file {t}/bad.pass", "wrong passphrase"),
    ("crl --dir {t}/ca --next-update never", "invalid --next-update 'never'"),
    ("issue client bob", "Missing option '--dir'"),
    # click words its own parse errors per release ("No such option: --bogus" before 8.4)
    ("init --dir {t}/new --bogus", "--bogus"),
]


# click's own parse errors exit 2 (same one-line format); every other refusal exits 1
CLICK_PARSE_ERRORS = tuple(f"securekv pki: error: {p}" for p in ("Missing ", "No such option", "Invalid value"))


@pytest.mark.parametrize("args, message", CASES, ids=[c[0].split(" --dir")[0] + ":" + c[1][:30] for c in CASES])
def test_bad_input(world, pki, args: str, message: str) -> None:
    before = snapshot(world)
    result = pki(*shlex.split(args.format(t=world)))
    assert result.exit_code == (2 if result.stderr.startswith(CLICK_PARSE_ERRORS) else 1), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("securekv pki: error: ")
    assert message.format(t=world) in lines[0]
    assert result.stdout == ""
    assert snapshot(world) == before


def test_revoking_twice_is_refused(world, pki) -> None:
    assert pki("revoke", "alice", "--dir", world / "ca").exit_code == 0
    before = snapshot(world)
    result = pki("revoke", "alice", "--dir", world / "ca")
    assert result.exit_code == 1 and "is already revoked" in result.stderr
    assert snapshot(world) == before


def test_real_process_has_no_traceback(world) -> None:
    """The installed entry point (not just the in-process runner) reports one line."""
    before = snapshot(world)
    proc = subprocess.run(
        [sys.executable, "-m", "securekv", "pki", "issue", "server", "web", "--dir", str(world / "ca")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == "securekv pki: error: profile 'server' includes server auth and needs at least one host (--hosts name,ip,...)\n"
    assert proc.stdout == ""
    assert snapshot(world) == before


def test_os_error_is_one_line(world, pki) -> None:
    """An OS-level failure (here: a file where a directory must go) is still one line, no traceback."""
    before = snapshot(world)
    result = pki("init", "--dir", world / "good.pass" / "sub")
    assert result.exit_code == 1
    assert result.stderr == f"securekv pki: error: Not a directory ({world / 'good.pass' / 'sub'})\n"
    assert snapshot(world) == before
