"""Helpers for the PKI tests: CLI runner, directory snapshots, real tool paths."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from click.testing import CliRunner

from securekv.cli.pki_cmd import cli

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "pki"


def tool(name: str) -> str:
    """Absolute path of a required external tool; a missing tool fails the test (never skips)."""
    path = shutil.which(name)
    assert path is not None, f"required tool {name!r} is not installed (see scripts/install-and-test.sh)"
    return path


def run_tool(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=60, **kwargs)
    if check:
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
    return proc


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``directory`` with its mode and content (for 'nothing changed' checks)."""
    if not directory.exists():
        return {}
    return {
        str(p.relative_to(directory)): (p.stat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(directory.rglob("*"))
    }


class PKI:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None):
        return self.runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
