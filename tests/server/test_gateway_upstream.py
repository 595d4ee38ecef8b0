"""etcd3gw's own functional test suite (shipped inside its wheel) against a securekv member.

Upstream runs it against a real etcd on http://localhost:2379; here it targets a loopback
member started with the explicit plaintext opt-out, because the suite's client takes no TLS
options. Every one of its tests must pass; none may be skipped (they skip when no server answers).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from server_harness import REPO, _wait_port, free_port


def test_etcd3gw_upstream_suite(tmp_path: Path) -> None:
    port, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "securekv", "serve", "--name", "m1", "--data-dir", str(tmp_path / "data"),
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"m1={peer_url}", "--insecure-allow-plaintext"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        import time

        _wait_port(port, proc, time.monotonic() + 30)
        run_env = {**os.environ, "TOOZ_TEST_HTTP_URL": client_url, "TOOZ_TEST_ETCD_PORT": str(port)}
        run_env.pop("PYTHONPATH", None)  # the installed etcd3gw, not the repository
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                            "--pyargs", "etcd3gw.tests.test_etcd3gw"],
                           capture_output=True, text=True, timeout=240, env=run_env, cwd=tmp_path)
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        passed = re.search(r"(\d+) passed", summary)
        assert passed and int(passed.group(1)) >= 20, summary
        assert "skipped" not in summary and "error" not in summary, summary
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
