"""Helpers for real-process server tests: certificates from the PKI API, free loopback ports,
`python3 -m securekv serve` (or the real `/usr/bin/etcd`) processes, and etcdctl runners."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[2]
ETCDCTL = "/usr/bin/etcdctl"
ETCD = "/usr/bin/etcd"
START_TIMEOUT = 30.0


from ports import free_port  # noqa: E402  (tests/ports.py: outside the ephemeral range)


@attrs.frozen
class Certs:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN root
    client_key: Path
    other_cert: Path  # CN alice, revoked in crl
    other_key: Path
    crl: Path
    foreign_cert: Path  # CN root from an unrelated CA
    foreign_key: Path


def _wait_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {START_TIMEOUT}s")


class Member:
    """One server process (securekv or etcd) with mutual TLS on a free loopback port."""

    def __init__(self, kind: str, data_dir: Path, certs: Certs, extra: list[str] | None = None,
                 env: dict | None = None) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.certs = certs
        self.extra = list(extra or [])
        self.env = env
        self.port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.early_exit: int | None = None  # the exit code of a start that ended before listening
        self.log = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        c = self.certs
        common = [
            "--name", "m1",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"m1=https://127.0.0.1:{self.peer_port}",
            "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}",
            "--cert-file", str(c.server_cert), "--key-file", str(c.server_key),
            "--trusted-ca-file", str(c.ca), "--client-cert-auth",
        ]
        if self.kind == "etcd":
            return [ETCD, *common, "--peer-auto-tls", *self.extra]
        return [sys.executable, "-m", "securekv", "serve", *common, *self.extra]

    def start(self) -> "Member":
        env = dict(os.environ)
        env.update(self.env or {})
        env["PYTHONPATH"] = str(REPO)
        for attempt in range(3):
            offset = len(self.output())
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            try:
                _wait_port(self.port, self.proc, time.monotonic() + START_TIMEOUT)
                return self
            except RuntimeError:
                text = self.output()[offset:]
                # Another process on this shared machine took one of our free ports: new ports.
                if self.proc.poll() is not None and "in use" in text.lower() and "data dir" not in text and attempt < 2:
                    self.port, self.peer_port, self.metrics_port = free_port(), free_port(), free_port()
                    continue
                self.early_exit = self.proc.poll()
                self.kill()
                raise RuntimeError(f"{self.kind} did not start:\n{text[-2000:]}") from None
        raise AssertionError("unreachable")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ctl(self, *args: str, check: bool = True, timeout: float = 20, stdin: str | None = None,
            cert: Path | None = None, key: Path | None = None) -> subprocess.CompletedProcess:
        return etcdctl(self.endpoint, self.certs, *args, check=check, timeout=timeout, stdin=stdin,
                       cert=cert, key=key)


def etcdctl(endpoint: str, certs: Certs, *args: str, check: bool = True, timeout: float = 20,
            stdin: str | None = None, cert: Path | None = None, key: Path | None = None
            ) -> subprocess.CompletedProcess:
    argv = [ETCDCTL, "--endpoints", endpoint, "--cacert", str(certs.ca),
            "--cert", str(cert or certs.client_cert), "--key", str(key or certs.client_key),
            "--dial-timeout", "3s", "--command-timeout", "10s", *args]
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def clean_stderr(text: str) -> str:
    """etcdctl's stderr without the Go client's JSON retry-warning noise lines."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("{")).strip()


def have(tool: str) -> str:
    path = shutil.which(tool) or tool
    assert Path(path).exists(), f"{tool} is required for these tests"
    return path


ANSI = re.compile(r"\x1b\[[0-9;]*m")
