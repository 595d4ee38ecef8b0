"""Loopback ports for test servers, chosen outside the kernel's ephemeral range.

Binding port 0 hands out a port from the ephemeral range (net.ipv4.ip_local_port_range), the
same range every outgoing connection on the machine draws its local port from: a member that is
killed and restarted on "its" port can find it taken by some client's connection in between
("Address already in use"). Ports below the ephemeral range are only ever taken by listeners,
so a port this module hands out stays free unless another test run picks the same one at random.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now and that this process has not handed out before."""
    high = min(_ephemeral_start(), 65536)
    low = 20000 if high > 24000 else 1024
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {low}..{high - 1} on {host}")
