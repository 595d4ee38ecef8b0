"""Directives kept in the unit because securekv still works under them (checked outside systemd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import REPO

PROBE = Path(__file__).with_name("deploy_mdwe_probe.py")


@pytest.mark.parametrize("mode", ["seccomp", "prctl"])
def test_python_tls_grpc_stack_works_under_memory_deny_write_execute(mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(PROBE), mode], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
