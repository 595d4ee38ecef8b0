"""A plain (non-editable) install ships the CLI and the template folders inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_templates_and_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("securekv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("pki", "configs", "systemd"):
        shipped = {n for n in names if n.startswith(f"securekv/data/{kind}/")}
        in_repo = {f"securekv/data/{kind}/{p.relative_to(ROOT / kind)}" for p in (ROOT / kind).rglob("*") if p.is_file()}
        assert in_repo, f"top-level {kind}/ is empty"
        assert in_repo <= shipped, f"{kind}/ files missing from the wheel: {sorted(in_repo - shipped)}"
    assert "securekv/cli/main.py" in names
    assert any(n.startswith("securekv/proto/rpc_pb2") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "securekv = securekv.cli.main:main" in text


def test_template_dir_resolves_in_checkout() -> None:
    from securekv.resources import template_dir

    for kind in ("pki", "configs", "systemd"):
        assert template_dir(kind).is_dir()
