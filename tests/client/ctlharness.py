"""One real server per module and kind (the real etcd 3.4, and securekv when it serves),
mutual TLS with certificates from the PKI API, and runners for etcdctl and ``securekv ctl``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[2]
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
START_TIMEOUT = 30.0
SERVER_KINDS = ["etcd", "securekv"]


from ports import free_port  # noqa: E402  (tests/ports.py: outside the ephemeral range)


@attrs.frozen
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    d = tmp_path_factory.mktemp("client-pki")
    init_ca(d, cn="client test CA")
    issue_cert(d, "server", "server", hosts=["127.0.0.1", "localhost"])
    issue_cert(d, "client", "root")
    return Certs(d / "ca.pem", d / "server.pem", d / "server-key.pem", d / "root.pem", d / "root-key.pem")


class Server:
    """A single member (etcd or securekv) with mutual TLS on free loopback ports."""

    def __init__(self, kind: str, base: Path, certs: Certs) -> None:
        self.kind, self.base, self.certs = kind, base, certs
        self.proc: subprocess.Popen | None = None
        self.log = base / "server.log"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        c = self.certs
        peer = f"https://127.0.0.1:{self.peer_port}"
        common = ["--name", "m1", "--data-dir", str(self.base / "data"), "--listen-client-urls", self.endpoint,
                  "--advertise-client-urls", self.endpoint, "--listen-peer-urls", peer,
                  "--initial-advertise-peer-urls", peer, "--initial-cluster", f"m1={peer}",
                  "--cert-file", str(c.server_cert), "--key-file", str(c.server_key),
                  "--trusted-ca-file", str(c.ca), "--client-cert-auth"]
        if self.kind == "etcd":
            return [ETCD, *common, "--peer-auto-tls"]
        return [sys.executable, "-m", "securekv", "serve", *common]

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        last = ""
        for _attempt in range(3):
            self.port, self.peer_port = free_port(), free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.05)
            last = self.log.read_text(errors="replace")[-2000:]
            self.stop()
            if "in use" not in last.lower():
                break
        raise RuntimeError(f"{self.kind} did not start:\n{last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None

    # -- runners --------------------------------------------------------------------------
    def tls_args(self) -> list[str]:
        c = self.certs
        return ["--endpoints", self.endpoint, "--cacert", str(c.ca), "--cert", str(c.cert), "--key", str(c.key),
                "--dial-timeout", "3s", "--command-timeout", "10s"]

    def argv(self, tool: str, *args: str, tls: bool = True) -> list[str]:
        flags = self.tls_args() if tls else []
        if tool == "etcdctl":
            return [ETCDCTL, *flags, *args]
        return [sys.executable, "-m", "securekv", "ctl", *flags, *args]

    def start_tool(self, tool: str, *args: str, env: dict | None = None, tls: bool = True) -> subprocess.Popen:
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "ETCDCTL_API": "3",
                    **(env or {})}
        return subprocess.Popen(self.argv(tool, *args, tls=tls), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=full_env, cwd=self.base)

    def run(self, tool: str, *args: str, stdin: str | None = None, env: dict | None = None, tls: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        return finish(self.start_tool(tool, *args, env=env, tls=tls), stdin, timeout)


def finish(proc: subprocess.Popen, stdin: str | None, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(input=stdin or "", timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    s = Server(request.param, tmp_path_factory.mktemp(f"srv-{request.param}"), certs)
    request.addfinalizer(s.stop)
    return s.start()


# -- comparison helpers --------------------------------------------------------------------------
def error_lines(stderr: str) -> list[str]:
    """stderr without the Go client's JSON log noise (retry warnings, zap logs)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


_NUMS = re.compile(r'"(revision|create_revision|mod_revision|version|raft_term|raftIndex|raftAppliedIndex|dbSize|'
                   r'dbSizeInUse|ID|id|hash|ttl|TTL)":-?\d+')
_LEASE_HEX = re.compile(r"(?<=/)[0-9a-f]{6,16}\b|\b[0-9a-f]{16}\b")
_REMAINING = re.compile(r"remaining\(\d+s\)")
_TOOK = re.compile(r"took = \S+|\"took\":\"[^\"]*\"")


def norm(text: str) -> str:
    """Mask values that legitimately differ between two runs: revisions, lease IDs, durations."""
    text = _NUMS.sub(lambda m: f'"{m.group(1)}":N', text)
    text = _LEASE_HEX.sub("<hex>", text)
    text = _REMAINING.sub("remaining(N)", text)
    return _TOOK.sub("took", text)


def same(server: Server, *args: str, stdin: str | None = None, normalise: bool = False, env: dict | None = None,
         tls: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` with etcdctl, then with ``securekv ctl``: same stdout, exit code and Error lines."""
    # Both at once (halves the wall time); callers only use this for commands whose output
    # does not depend on which of the two runs first.
    pe = server.start_tool("etcdctl", *args, env=env, tls=tls)
    ps = server.start_tool("securekv", *args, env=env, tls=tls)
    e, s = finish(pe, stdin), finish(ps, stdin)
    f = norm if normalise else (lambda t: t)
    where = f"{server.kind}: {' '.join(args)}"
    assert "Traceback" not in s.stderr, s.stderr
    assert f(s.stdout) == f(e.stdout), f"{where}: {s.stdout!r} != {e.stdout!r}"
    assert s.returncode == e.returncode, f"{where}: etcdctl={e.returncode} ctl={s.returncode} {s.stderr}"
    assert [f(x) for x in error_lines(s.stderr)] == [f(x) for x in error_lines(e.stderr)], where
    return s
