"""`python -m securekv.torture` in CI: a short run of real members under every fault is clean,
and a deliberately broken build (linearizable reads served locally) is caught.

Each run is a real child process with a hard time limit; its last stdout line is the summary.
Disk-full needs root (a tmpfs per data dir); without it the run says so in ``notes``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def torture(tmp_path: Path, *args: str, limit: float) -> tuple[dict, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "securekv.torture", "--json", "--workdir", str(tmp_path / "run"), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the run stops its members and unmounts on SIGTERM
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"torture run exceeded {limit:.0f}s\n{err[-4000:]}") from None
    lines = out.strip().splitlines()
    assert lines, f"no summary (exit {proc.returncode}):\n{err[-4000:]}"
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts, "the run left a tmpfs mounted"
    return json.loads(lines[-1]), err


def test_torture_short_run_every_fault_is_clean(tmp_path: Path) -> None:
    summary, err = torture(tmp_path, "--members", "3", "--seconds", "45", "--seed", "17",
                           "--nemesis", "kill,pause,partition,disk-full,restart", limit=180)
    context = json.dumps(summary, indent=1)[:6000] + "\n" + err[-3000:]
    assert summary["verdict"] == "ok", context
    assert summary["violations"] == 0 and summary["lost_writes"] == 0 and summary["watch_gaps"] == 0, context
    assert summary["nemesis_events"] >= 10, context
    assert summary["members"] == 3 and summary["seconds"] == 45
    assert summary["ops"] > 300 and summary["watch_events"] > 0 and summary["leases"] > 0, context
    if os.geteuid() == 0:
        assert "disk-full" in summary["nemesis"], context
    else:
        assert any("disk-full skipped" in n for n in summary["notes"]), context


def test_torture_catches_serializable_reads_served_as_linearizable(tmp_path: Path) -> None:
    # Two hot keys, mostly reads, unthrottled: followers (and isolated members) answer from
    # their own, slightly older state within milliseconds of a write acknowledged elsewhere.
    summary, err = torture(tmp_path, "--members", "3", "--seconds", "15", "--seed", "5",
                           "--nemesis", "partition", "--keys", "2", "--mix", "30,60,10,0", "--rate", "0",
                           "--inject-bug", "serializable-as-linearizable", limit=150)
    context = json.dumps(summary, indent=1)[:6000] + "\n" + err[-3000:]
    assert summary["verdict"] == "fail", context
    assert summary["violations"] > 0, context
    assert any("NOT linearizable" in d for d in summary["details"]["linearizability"]), context
    assert summary["inject_bug"] == "serializable-as-linearizable"


def test_the_broken_build_is_not_reachable_from_securekv_serve() -> None:
    """No flag and no environment variable turns the bug on in the real entry point."""
    env = dict(os.environ, PYTHONPATH=str(REPO), SECUREKV_TEST_INJECT_BUG="serializable-as-linearizable")
    help_text = subprocess.run([sys.executable, "-m", "securekv", "serve", "--help"], capture_output=True,
                               text=True, env=env, check=True).stdout
    assert "inject" not in help_text.lower() and "buggy" not in help_text.lower()
    sources = "".join(p.read_text() for p in (REPO / "securekv").rglob("*.py")
                      if "torture" not in p.parts)
    assert "securekv.torture.buggy" not in sources and "INJECT_BUG" not in sources
