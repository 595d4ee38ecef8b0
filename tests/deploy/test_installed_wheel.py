"""`securekv install` works from the built wheel alone: the templates it renders and the configs it
validates come from the package's shipped data (securekv/data/), not from a source checkout.

tests/test_packaging.py checks the wheel's file list; this runs the unpacked wheel (a pure-Python
wheel unpacked on sys.path is an installation) from a directory with no checkout in reach.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from deploy_helpers import CONFIGS, EXEC, REPO

RUN = """
import sys
import securekv
assert securekv.__file__.startswith(sys.argv[1]), securekv.__file__
sys.argv = ["securekv", *sys.argv[2:]]
from securekv.cli.main import main
main()
"""


def test_unpacked_wheel_renders_the_shipped_templates(tmp_path: Path, cli) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("securekv-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shipped = site / "securekv/data/configs/cluster-member-2.yaml"
    assert shipped.read_bytes() == (CONFIGS / "cluster-member-2.yaml").read_bytes()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", RUN, str(site), *args], capture_output=True, text=True,
                              cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=60)

    from_wheel = tmp_path / "from-wheel"
    proc = run("install", "systemd", "--config", str(shipped), "--root", str(from_wheel), "--exec", EXEC,
               "--load-credentials")
    assert proc.returncode == 0, proc.stderr
    from_checkout = tmp_path / "from-checkout"
    result = cli("systemd", "--config", str(CONFIGS / "cluster-member-2.yaml"), "--root", str(from_checkout),
                 "--exec", EXEC, "--load-credentials")
    assert result.exit_code == 0, result.output
    for path in ("etc/systemd/system/securekv.service", "etc/securekv/securekv.yaml", "etc/sysusers.d/securekv.conf"):
        assert (from_wheel / path).read_bytes() == (from_checkout / path).read_bytes(), path
    assert "LoadCredential=peer.key:/etc/securekv/pki/member-2-key.pem" in \
        (from_wheel / "etc/systemd/system/securekv.service").read_text()
    proc = run("install", "firewall", "--backend", "nftables", "--peers", "10.0.0.11", "--clients", "10.0.0.0/24", "--print")
    assert proc.returncode == 0 and "table inet securekv {" in proc.stdout, proc.stderr
