"""A small 3-member securekv cluster for the join and certificate-lifecycle tests.

Each member has its own peer certificate naming it (CN + securekv://member/<name>), so a member
that joins later with a certificate naming itself is bound like the others; m1 holds the
signing CA (``--signing-ca-*``), the others do not. Readiness is sd_notify READY=1.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import attrs

from ports import free_port

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


class Notify:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.path = path

    def wait_ready(self, proc: subprocess.Popen, log: Path, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(f"no READY=1 (exit {proc.poll()}):\n{log.read_text(errors='replace')[-4000:]}")
            self.sock.settimeout(min(left, 1.0))
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iii", payload[:12])[0]
            if pid == proc.pid and "READY=1" in data.decode().splitlines():
                return

    def close(self) -> None:
        self.sock.close()


@attrs.define
class Member:
    name: str
    client_port: int
    peer_port: int
    proc: subprocess.Popen | None = None
    log: Path | None = None
    notify: Notify | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"


class JoinCluster:
    def __init__(self, base: Path, names: Iterable[str] = ("m1", "m2", "m3")) -> None:
        from securekv.pki.ca import init_ca
        from securekv.pki.issue import issue_cert

        self.base = base
        self.ca = base / "ca"
        init_ca(self.ca, cn="join test CA")
        issue_cert(self.ca, "client", "root")
        self.members = [Member(n, free_port(), free_port()) for n in names]
        for m in self.members:
            issue_cert(self.ca, "server", f"{m.name}-server", cn=m.name, hosts=["127.0.0.1", "localhost"])
            issue_cert(self.ca, "peer", f"{m.name}-peer", cn=m.name, hosts=["127.0.0.1", "localhost"])
        # What the members trust (--trusted-ca-file, --peer-trusted-ca-file): its own file, so a CA
        # rotation can change it (trust both, then the new one only) while the members run.
        self.trust = base / "trust.pem"
        self.trust.write_bytes((self.ca / "ca.pem").read_bytes())
        self.cacert, self.cert, self.key = self.trust, self.ca / "root.pem", self.ca / "root-key.pem"
        # m1's --signing-ca-* files: copies, so a CA rotation can switch the signer while it runs.
        self.signing_cert, self.signing_key = base / "signing-ca.pem", base / "signing-ca-key.pem"
        self.signing_cert.write_bytes((self.ca / "ca.pem").read_bytes())
        self.signing_key.write_bytes((self.ca / "ca-key.pem").read_bytes())
        self.signing_key.chmod(0o600)
        self.extra: list[subprocess.Popen] = []

    def argv(self, m: Member, cluster: str, signer: bool) -> list[str]:
        ca = self.ca
        return [sys.executable, "-m", "securekv", "serve", "--name", m.name, "--data-dir", str(self.base / m.name),
                "--listen-client-urls", m.endpoint, "--advertise-client-urls", m.endpoint,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-token", "join-test",
                "--cert-file", str(ca / f"{m.name}-server.pem"), "--key-file", str(ca / f"{m.name}-server-key.pem"),
                "--trusted-ca-file", str(self.trust),
                "--peer-cert-file", str(ca / f"{m.name}-peer.pem"), "--peer-key-file", str(ca / f"{m.name}-peer-key.pem"),
                "--peer-trusted-ca-file", str(self.trust),
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                *(["--signing-ca-cert-file", str(self.signing_cert), "--signing-ca-key-file", str(self.signing_key),
                   "--audit-log", str(self.base / "audit.log")]
                  if signer else [])]

    def spawn(self, m: Member, argv: list[str]) -> Member:
        m.log = self.base / f"{m.name}.log"
        m.notify = Notify(self.base / f"{m.name}.notify")
        env = dict(os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(m.notify.path))
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.base)
        return m

    def start(self) -> "JoinCluster":
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for i, m in enumerate(self.members):
            self.spawn(m, self.argv(m, cluster, signer=i == 0))
        for m in self.members:
            m.notify.wait_ready(m.proc, m.log)
        return self

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-m", "securekv", *args], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=self.base)
        if check and proc.returncode != 0:
            raise AssertionError(f"securekv {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def client_flags(self, endpoints: str | None = None) -> list[str]:
        return ["--endpoints", endpoints or self.members[0].endpoint, "--cacert", str(self.cacert),
                "--cert", str(self.cert), "--key", str(self.key)]

    def client(self, endpoints: str | None = None):
        from securekv.client.client import Client

        return Client(endpoints or ",".join(m.endpoint for m in self.members), cacert=str(self.cacert),
                      cert=str(self.cert), key=str(self.key), timeout=10.0)

    def close(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.kill()
                m.proc.wait(timeout=20)
            if m.notify is not None:
                m.notify.close()
