"""`securekv dev`: a local mutual-TLS cluster in one command that serves the real etcdctl, and
stops without leaving a process behind (`dev down`, and even a killed supervisor)."""

from __future__ import annotations

import os
import random
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster_harness import ETCDCTL, REPO
from ports import _ephemeral_start


def _pids_using(directory: Path) -> list[int]:
    """Every process whose command line names ``directory`` (the dev cluster's members)."""
    needle = str(directory.resolve()).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def _start(directory: Path, members: int) -> tuple[subprocess.Popen, list[str]]:
    """`securekv dev` on free ports; its output up to the ready banner."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _attempt in range(5):
        base = random.randrange(20000, _ephemeral_start() - 20, 2)  # below the ephemeral range (tests/ports.py)
        proc = subprocess.Popen([sys.executable, "-m", "securekv", "dev", "--members", str(members), "--dir",
                                 str(directory), "--base-port", str(base)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
        text = ""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 90
        try:
            while time.monotonic() < deadline and "stops it" not in text:
                if not sel.select(timeout=1):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)  # unbuffered: select stays truthful
                if not chunk:
                    break
                text += chunk.decode("utf-8", "replace")
        finally:
            sel.close()
        lines = text.splitlines(keepends=True)
        if "stops it" in text:
            return proc, lines
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        if not any("is in use" in line for line in lines):
            raise AssertionError("".join(lines)[-3000:])
    raise AssertionError("no free ports for the dev cluster")


def _env_from(lines: list[str]) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for line in lines:
        line = line.strip()
        if line.startswith("export ETCDCTL_"):
            for item in line[len("export "):].split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dev_cluster_serves_etcdctl_and_stops_cleanly(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    proc, lines = _start(d, 3)
    try:
        out = "".join(lines)
        assert "securekv dev: 3 members ready" in out
        assert re.search(r"^infra1 +\| .*serving client requests on", out, flags=re.M), out  # prefixed logs
        env = _env_from(lines)
        assert env["ETCDCTL_API"] == "3" and env["ETCDCTL_CERT"].endswith("root.pem")
        put = subprocess.run([ETCDCTL, "put", "dev", "works"], capture_output=True, text=True, env=env, timeout=30)
        assert put.stdout.strip() == "OK", put.stderr
        members = subprocess.run([ETCDCTL, "member", "list"], capture_output=True, text=True, env=env, timeout=30)
        assert members.stdout.count(", started, infra") == 3, members.stdout
        assert len(_pids_using(d)) >= 3
        down = subprocess.run([sys.executable, "-m", "securekv", "dev", "down", "--dir", str(d)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
        assert down.returncode == 0, down.stderr
        assert proc.wait(timeout=30) == 0
        assert "securekv dev: stopped" in proc.stdout.read()
        assert _pids_using(d) == []
        assert not (d / "dev.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()
        for pid in _pids_using(d):
            os.kill(pid, signal.SIGKILL)


def test_killed_supervisor_leaves_no_member(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    proc, _lines = _start(d, 1)
    try:
        members = [p for p in _pids_using(d) if p != proc.pid]
        assert members
        proc.kill()  # no chance to clean up: the members' parent-death signal does it
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _pids_using(d) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pids_using(d) == []
    finally:
        proc.stdout.close()
        for pid in _pids_using(d):
            os.kill(pid, signal.SIGKILL)
