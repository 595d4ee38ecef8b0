"""Helpers for the deployment tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
# An ExecStart program that exists on every Debian machine and is not hidden by ProtectHome=/
# PrivateTmp= (systemd-analyze verify insists that the program exists).
EXEC = "/usr/bin/env securekv"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} | {
        str(p.relative_to(root)) + "/": b"" for p in root.rglob("*") if p.is_dir()
    }


def run_securekv(*args: str, prefix: tuple[str, ...] = (), timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``python -m securekv ARGS`` as a real process (optionally under ``prefix``, e.g. unshare)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "securekv", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


from ports import free_port  # noqa: E402  (tests/ports.py: outside the ephemeral range)


def localize(config_name: str, tmp: Path, ports: dict) -> dict:
    """A shipped config rewritten for this machine: loopback addresses, free ports, files under tmp.

    ``ports`` maps a shipped ``(address, port)`` — or just the port — to a free local port;
    addresses 10.0.0.1x become 127.0.0.1 and /etc/securekv/pki, /var/lib/securekv move under
    ``tmp``. For a cluster, key by (member address, port) so each member gets its own ports.
    """
    import re

    import yaml

    text = (CONFIGS / config_name).read_text()
    text = text.replace("/etc/securekv/pki", str(tmp / "pki")).replace("/var/lib/securekv", str(tmp / "data"))

    def url(match: re.Match) -> str:
        key = (match["host"], int(match["port"]))
        return f"{match['scheme']}://127.0.0.1:{ports.get(key, ports.get(key[1]))}"

    text = re.sub(r"(?P<scheme>https?)://(?P<host>10\.0\.0\.1\d|127\.0\.0\.1):(?P<port>\d+)", url, text)
    data = yaml.safe_load(text)
    # 10.0.0.11 and 127.0.0.1 collapse to one address: keep each listener URL once.
    for key in ("listen-client-urls", "advertise-client-urls", "listen-peer-urls", "initial-advertise-peer-urls"):
        if key in data:
            data[key] = ",".join(dict.fromkeys(data[key].split(",")))
    return data


def tls_handshake(port: int, pki: Path, cert: str = "root") -> bool:
    """A mutual-TLS handshake with the member on 127.0.0.1:port (client certificate ``cert``)."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}-key.pem"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version() in ("TLSv1.2", "TLSv1.3")
    except OSError:
        return False


class NotifyReceiver:
    """The service manager's side of sd_notify: a datagram socket that also learns the sender's pid.

    SO_PASSCRED makes the kernel attach the sender's credentials, which is how systemd enforces
    NotifyAccess=main (only the main process may change the service state).
    """

    def __init__(self, path: Path) -> None:
        import socket

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.path = path

    def recv(self, timeout: float) -> tuple[str, int]:
        """One datagram and its sender's pid; raises TimeoutError after ``timeout`` seconds."""
        import socket
        import struct

        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("iii", payload[:12])
        return data.decode(), pid

    def close(self) -> None:
        self.sock.close()
