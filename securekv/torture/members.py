"""Real `securekv serve` members on loopback for the fault suite: certificates, ports,
peer proxies, readiness over sd_notify, data dirs on small tmpfs mounts, and the signals the
nemesis sends.

Every member runs with mutual TLS on its client and peer ports (certificates from
``securekv.pki``), its own data dir, and advertises a :class:`~securekv.torture.proxy.Proxy`
as its peer URL so the run can cut links. Readiness is the member's own ``READY=1`` on a
``NOTIFY_SOCKET`` this module listens on (no polling). Only `securekv serve` flags are used, so
the suite does not depend on the server's internals.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import attrs

import securekv
from securekv.torture.proxy import Proxy, pid_owning, socket_inode

log = logging.getLogger(__name__)

PEER_CN = "securekv-torture-peer"
TOKEN = "securekv-torture"
#: The package root whose `securekv` the members run (a checkout or site-packages).
PACKAGE_ROOT = Path(securekv.__file__).resolve().parents[1]


@attrs.frozen
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    peer_cert: Path
    peer_key: Path
    client_cert: Path
    client_key: Path


def make_pki(base: Path) -> PKI:
    """A CA and the server, peer and client (CN root) certificates every member shares."""
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert

    ca = base / "ca"
    hosts = ["127.0.0.1", "localhost"]
    init_ca(ca, cn="securekv torture CA")
    issue_cert(ca, "server", "server", hosts=hosts)
    issue_cert(ca, "peer", "peer", cn=PEER_CN, hosts=hosts)
    issue_cert(ca, "client", "root")
    return PKI(ca=ca / "ca.pem", server_cert=ca / "server.pem", server_key=ca / "server-key.pem",
               peer_cert=ca / "peer.pem", peer_key=ca / "peer-key.pem",
               client_cert=ca / "root.pem", client_key=ca / "root-key.pem")


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port below the ephemeral range: a restarted member finds its port free
    (an outgoing connection can take an ephemeral port in between)."""
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    high = min(high, 65536)
    low = 20000 if high > 24000 else 1024
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}..{high - 1}")


class NotifyListener:
    """An abstract AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, name: str) -> None:
        self.address = f"@securekv-torture-{os.getpid()}-{id(self):x}-{name}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.address[1:].encode())
        self._cond = threading.Condition()
        self.ready = 0  # READY=1 datagrams received so far (one per started process)
        self._thread = threading.Thread(target=self._run, name=f"notify-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                return
            if not data:
                continue
            if b"READY=1" in data.split(b"\n"):
                with self._cond:
                    self.ready += 1
                    self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        """Until ``count`` READY=1 datagrams arrived (or ``timeout`` seconds passed)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.ready >= count, timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


class TmpfsMount:
    """A small tmpfs (root only) holding one member's data dir, so the disk can be filled."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
                       check=True, capture_output=True, text=True)
        self.filler = path / "filler"

    def fill(self) -> int:
        """Fill the file system to the last byte; returns the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            for size in (1 << 20, 1 << 12, 1):
                block = b"\0" * size
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def close(self) -> None:
        self.free()
        result = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
        if result.returncode != 0:  # something still holds it open: detach it anyway
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True)


def can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


class Member:
    """One `securekv serve` process (restartable), its proxy and its notify socket."""

    def __init__(self, cluster: "Cluster", name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proxy = Proxy(self.peer_port, name, cluster.identify)
        self.notify = NotifyListener(name)
        self.home = cluster.workdir / name
        self.home.mkdir(parents=True, exist_ok=True)
        self.mount: TmpfsMount | None = None
        if cluster.tmpfs_mb:
            self.mount = TmpfsMount(self.home / "disk", cluster.tmpfs_mb)
            self.data_dir = self.mount.path / "data"
        else:
            self.data_dir = self.home / "data"
        self.log_path = self.home / "member.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False
        self.state = "new"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return self.proxy.url

    def argv(self) -> list[str]:
        c, p = self.cluster, self.cluster.pki
        flags = [
            "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", c.initial_cluster(), "--initial-cluster-state", self.state,
            "--initial-cluster-token", TOKEN,
            "--cert-file", str(p.server_cert), "--key-file", str(p.server_key),
            "--trusted-ca-file", str(p.ca), "--client-cert-auth",
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(p.ca),
            "--peer-cert-file", str(p.peer_cert), "--peer-key-file", str(p.peer_key),
            "--peer-cert-allowed-cn", PEER_CN,
            "--heartbeat-interval", str(c.heartbeat_ms), "--election-timeout", str(c.election_ms),
            "--snapshot-count", str(c.snapshot_count),
        ]
        if c.inject_bug:
            return [sys.executable, "-m", "securekv.torture.buggy", c.inject_bug, "serve", *flags]
        return [sys.executable, "-m", "securekv", "serve", *flags]

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        env["NOTIFY_SOCKET"] = self.notify.address
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(var, None)
        with open(self.log_path, "ab") as out:
            out.write(f"\n==== start {self.name} #{self.starts + 1} {time.strftime('%H:%M:%S')} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, cwd=str(self.home))
        self.starts += 1
        self.paused = False

    def wait_ready(self, timeout: float) -> bool:
        """Until the current process said READY=1 (False on timeout or if it exited)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.notify.wait(self.starts, timeout=0.5):
                return True
            if not self.running or time.monotonic() >= deadline:
                return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.paused = False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a leader hands leadership over first), kill -9 if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM: killing it", self.name, timeout)
            self.kill()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.paused:
            self.resume()
        self.kill()
        self.proxy.close()
        self.notify.close()
        if self.mount is not None:
            self.mount.close()


class Cluster:
    """N members on loopback, started together as a new cluster."""

    def __init__(self, workdir: Path, size: int, *, inject_bug: str | None = None, tmpfs_mb: int = 0,
                 heartbeat_ms: int = 100, election_ms: int = 1000, snapshot_count: int = 2000) -> None:
        self.workdir = workdir
        self.size = size
        self.inject_bug = inject_bug
        self.tmpfs_mb = tmpfs_mb
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.snapshot_count = snapshot_count
        self.pki = make_pki(workdir / "pki")
        self.members: dict[str, Member] = {}
        try:
            for i in range(size):
                name = f"m{i + 1}"
                self.members[name] = Member(self, name)
        except BaseException:
            self.close()
            raise

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members.values())

    def identify(self, client_port: int, proxy_port: int) -> str | None:
        """Which member dialled a proxied connection (from the kernel's socket tables)."""
        inode = socket_inode(client_port, proxy_port)
        if inode is None:
            return None
        by_pid = {m.proc.pid: m.name for m in list(self.members.values())
                  if m.proc is not None and m.proc.poll() is None}
        pid = pid_owning(inode, by_pid)
        return by_pid.get(pid) if pid is not None else None

    def start(self, timeout: float = 90.0) -> None:
        for m in self.members.values():
            m.start()
        deadline = time.monotonic() + timeout
        for m in self.members.values():
            if not m.wait_ready(max(deadline - time.monotonic(), 0.1)):
                raise RuntimeError(f"member {m.name} did not become ready within {timeout:.0f}s "
                                   f"(exit code {m.exit_code}):\n{m.log_tail()}")
        for m in self.members.values():
            m.state = "existing"  # later starts rejoin with their data dir

    def endpoints(self, names: Sequence[str] | None = None) -> list[str]:
        return [self.members[n].endpoint for n in (names or self.names)]

    def isolate(self, group: Sequence[str]) -> None:
        """Cut every peer link between ``group`` and the other members (both directions)."""
        inside = set(group)
        outside = set(self.members) - inside
        for m in self.members.values():
            m.proxy.block(outside if m.name in inside else inside)

    def heal(self) -> None:
        for m in self.members.values():
            m.proxy.heal()

    def close(self) -> None:
        for m in list(self.members.values()):
            try:
                m.close()
            except Exception:  # keep closing the others (and their mounts)
                log.exception("closing member %s failed", m.name)


__all__ = ["Cluster", "Member", "PKI", "make_pki", "free_port", "can_mount", "TmpfsMount"]
