"""`securekv pki check --bundle`: a plan's bundles checked like a PKI directory, for real.

Real bundles from a real `cluster plan` (a real process), checked by a real `securekv pki check`
process: clean bundles pass; a plan made 360 days ago (certificates near their end) warns with
the `--dir` format and threshold; a tampered bundle, a bundle whose key was swapped and a
sealed bundle without its passphrase are errors (exit 1).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from deploy_helpers import EXEC, run_securekv


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("planned") / "out"
    result = run_securekv("cluster", "plan", "--name", "prod", "--out", str(out), "--exec", EXEC,
                          "--member", "n1=10.0.0.1", "--member", "n2=10.0.0.2", "--member", "n3=10.0.0.3")
    assert result.returncode == 0, result.stderr
    return out


def test_clean_bundles_pass_one_file_or_the_whole_plan(planned: Path) -> None:
    one = run_securekv("pki", "check", "--bundle", str(planned / "n1.bundle"))
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == f"OK: 6 items in {planned / 'n1.bundle'} checked, no problems"
    every = run_securekv("pki", "check", "--bundle", str(planned), "--hosts", "10.0.0.1", "--json")
    assert every.returncode == 1, every.stderr  # n2's and n3's server certificates do not cover 10.0.0.1
    report = json.loads(every.stdout)
    assert report["bundle"] == str(planned) and not report["ok"]
    assert [b for b in report["checked"] if ":" not in b] == ["n1.bundle", "n2.bundle", "n3.bundle"]
    assert {(p["file"], p["severity"]) for p in report["problems"]} == {
        ("n2.bundle:server-cert", "error"), ("n3.bundle:server-cert", "error")}
    assert all("do not cover 10.0.0.1" in p["message"] for p in report["problems"])


def test_usage_errors(planned: Path, tmp_path: Path) -> None:
    neither = run_securekv("pki", "check")
    both = run_securekv("pki", "check", "--dir", str(tmp_path), "--bundle", str(planned))
    empty = run_securekv("pki", "check", "--bundle", str(tmp_path))
    for result, text in ((neither, "either --dir or --bundle"), (both, "either --dir or --bundle")):
        assert result.returncode == 2 and text in result.stderr, result
    # Like `--dir` naming a missing directory: an error, exit 1.
    assert empty.returncode == 1 and "no *.bundle files in" in empty.stderr, empty


def test_expiring_certificates_warn_like_check_dir(tmp_path: Path) -> None:
    from securekv.cli.install_cmd import _split_exec
    from securekv.cluster import plan
    from securekv.pki.ca import init_ca, load_ca
    from securekv.pki.verify import utcnow

    then = utcnow() - timedelta(days=360)
    init_ca(tmp_path / "ca", now=then)
    spec = plan.make_spec("old", ["n1=10.0.0.1"], exec_start=_split_exec(EXEC))
    plan.write_plan(plan.build_plan(spec, tmp_path / "out", load_ca(tmp_path / "ca"), ca_created=False, now=then))
    result = run_securekv("pki", "check", "--bundle", str(tmp_path / "out" / "n1.bundle"), "--warn", "30d")
    assert result.returncode == 0, result  # warnings only
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FILE", "SEVERITY", "PROBLEM"]
    warned = {line.split()[0] for line in lines[1:-1]}
    assert warned == {"n1.bundle:server-cert", "n1.bundle:peer-cert"}, result.stdout
    assert all(" warning " in line and "expires in " in line for line in lines[1:-1])
    assert lines[-1] == "0 error(s), 2 warning(s) in 6 items"
    quiet = run_securekv("pki", "check", "--bundle", str(tmp_path / "out" / "n1.bundle"), "--warn", "1d")
    assert quiet.returncode == 0 and quiet.stdout.startswith("OK: "), quiet


def test_tampered_forged_and_sealed_bundles_are_errors(planned: Path, tmp_path: Path) -> None:
    from securekv.cluster.bundle import encode, read_bundle

    edited = tmp_path / "edited.bundle"
    edited.write_text((planned / "n1.bundle").read_text().replace("10.0.0.1:2379", "10.0.0.9:2379"))
    n1, n2 = read_bundle(planned / "n1.bundle"), read_bundle(planned / "n2.bundle")
    swapped = tmp_path / "swapped.bundle"  # digest recomputed: only the certificate checks can tell
    swapped.write_bytes(encode(attrs.evolve(n1, pems={**n1.pems, "peer-key": n2.pems["peer-key"]})))
    alien = tmp_path / "alien.bundle"  # sound certificates, but a root command added to the unit
    alien.write_bytes(encode(attrs.evolve(n1, unit=n1.unit + "ExecStartPre=+/bin/sh -c id\n")))

    result = run_securekv("pki", "check", "--bundle", str(tmp_path), "--json")
    assert result.returncode == 1, result
    problems = {(p["file"], p["message"]) for p in json.loads(result.stdout)["problems"]}
    assert {f for f, _ in problems} == {"alien.bundle", "edited.bundle", "swapped.bundle:peer-key"}, problems
    messages = dict(problems)
    assert "its sha256 does not match its contents" in messages["edited.bundle"]
    assert messages["swapped.bundle:peer-key"] == "key does not match certificate peer-cert"
    assert messages["alien.bundle"].startswith("install bundle would refuse it: the bundle's unit is not")

    secret = tmp_path / "pass"
    secret.write_text("correct horse battery\n")
    sealed_dir = tmp_path / "sealed"
    sealed = run_securekv("cluster", "plan", "--name", "prod", "--out", str(sealed_dir), "--exec", EXEC,
                          "--member", "n1=10.0.0.1", "--passphrase-file", str(secret))
    assert sealed.returncode == 0, sealed
    refused = run_securekv("pki", "check", "--bundle", str(sealed_dir / "n1.bundle"))
    assert refused.returncode == 1 and "give --passphrase-file" in refused.stdout, refused
    opened = run_securekv("pki", "check", "--bundle", str(sealed_dir / "n1.bundle"), "--passphrase-file", str(secret))
    assert opened.returncode == 0 and opened.stdout.startswith("OK: 6 items"), opened
