"""A plain (non-editable) ``pip install .`` gives a working ``securekv`` command whose PKI
templates come from inside the installed package, not from the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pki_helpers import REPO


def test_installed_command_runs_the_cfssl_recipe_from_shipped_templates(tmp_path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(site), str(REPO)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))  # ahead of any editable install of the checkout

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=work, env=env, timeout=120)

    where = run(sys.executable, "-c", "import securekv.resources as r; print(r.__file__); print(r.template_dir('pki'))")
    assert where.returncode == 0, where.stderr
    module, templates = where.stdout.split()
    assert module.startswith(str(site)) and templates == str(site / "securekv" / "data" / "pki")
    for name in ("ca-csr.json", "ca-config.json", "server-csr.json", "peer-csr.json", "client-csr.json"):
        assert (site / "securekv" / "data" / "pki" / name).read_bytes() == (REPO / "pki" / name).read_bytes()

    securekv = str(site / "bin" / "securekv")
    steps = [
        ("pki", "init", "--dir", "ca", "--csr", f"{templates}/ca-csr.json"),
        ("pki", "issue", "etcd", "server", "--dir", "ca", "--csr", f"{templates}/server-csr.json"),
        ("pki", "issue", "client", "root", "--dir", "ca", "--csr", f"{templates}/client-csr.json"),
        ("pki", "check", "--dir", "ca", "--hosts", "127.0.0.1,localhost"),
    ]
    for step in steps:
        proc = run(securekv, *step)
        assert proc.returncode == 0, (step, proc.stderr)
    written = json.loads((work / "ca" / "ca-config.json").read_text())
    assert written == json.loads((REPO / "pki" / "ca-config.json").read_text())
    bad = run(securekv, "pki", "issue", "server", "web", "--dir", "ca")
    assert bad.returncode == 1 and bad.stderr.startswith("securekv pki: error: ") and len(bad.stderr.splitlines()) == 1
