"""Tiny sd_notify(3) client: tell systemd (``Type=notify``) when the member is ready or stopping.

Why our own: the protocol is one datagram of ``KEY=VALUE`` lines on the AF_UNIX socket named in
``$NOTIFY_SOCKET``; the PyPI wrappers add nothing but a dependency. Every call is a no-op when
the variable is unset, so ``serve`` calls these unconditionally, under systemd or not.

Usage from ``serve``::

    notifier = Notifier.from_environment()
    ...  # once the client listener accepts TLS connections
    notifier.ready(status="serving clients on https://...")
    period = watchdog_period()           # None unless WatchdogSec= is set for this process
    ...  # every `period` seconds while healthy: notifier.watchdog()
    notifier.stopping()                  # first thing on SIGTERM
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

# sendto() on a full datagram queue blocks; never stall the event loop longer than this.
_SEND_TIMEOUT_S = 1.0


def socket_address(value: str) -> str | bytes | None:
    """Turn a ``$NOTIFY_SOCKET`` value into an AF_UNIX address, or None if unsupported.

    ``/path`` is a filesystem socket; ``@name`` an abstract one (leading NUL on the wire).
    Other forms (e.g. ``vsock:``) are not used by a local systemd and are ignored.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None


class Notifier:
    """Sends state changes to the service manager; silently does nothing without one."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines (keyword names upper-cased); True if a datagram was sent.

        Failures are reported by the return value, not raised: a lost notification must never
        take the member down (systemd then times the start out, which is the right signal).
        """
        if self.address is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify field {key} must be a single line")
            lines.append(f"{key.upper()}={text}")
        payload = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sock.sendto(payload, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Call only once the client port accepts TLS connections (systemd then starts dependants)."""
        if status is None:
            return self.notify(ready="1")
        return self.notify(ready="1", status=status)

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.notify(stopping="1")
        return self.notify(stopping="1", status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog="1")

    def status(self, text: str) -> bool:
        return self.notify(status=text)


def watchdog_period(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is armed for us.

    systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) when ``WatchdogSec=`` is configured;
    pinging at half the timeout is what sd_watchdog_enabled(3) recommends.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    target = env.get("WATCHDOG_PID", "")
    if target:
        try:
            if int(target) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2
