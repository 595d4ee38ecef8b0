"""The daily renewal a joined member gets: ``securekv-renew.service`` + ``securekv-renew.timer``.

``securekv cluster renew --before 30d`` does nothing until a certificate is within 30 days of
its end; then it renews both through the signing member, and the running member reloads them
(no restart). It runs as root because the files live in root's ``/etc/securekv/pki`` and belong
to the service user: it may read the member's keys, write that one directory and give new files
their old owner (``CAP_DAC_READ_SEARCH``, ``CAP_CHOWN``, ``CAP_FOWNER``), nothing else.
"""

from __future__ import annotations

from typing import Sequence
from urllib.parse import urlsplit

from securekv.deploy.backup_timer import quote_arg
from securekv.errors import UsageError

SERVICE_NAME = "securekv-renew.service"
TIMER_NAME = "securekv-renew.timer"
SERVICE_PATH = f"/etc/systemd/system/{SERVICE_NAME}"
TIMER_PATH = f"/etc/systemd/system/{TIMER_NAME}"
RENEW_BEFORE = "30d"


def check_endpoints(text: str, option: str = "--renew-endpoints") -> tuple[str, ...]:
    """``https://HOST:PORT,...`` (the signing members' client URLs) as a tuple; UsageError names
    the first that is not one (it would only fail at the first renewal, weeks later)."""
    out = []
    for item in (e.strip() for e in text.split(",")):
        if not item:
            continue
        try:
            url = urlsplit(item)
            port = url.port
        except ValueError:
            port = None
            url = None
        if (url is None or url.scheme != "https" or not url.hostname or port is None or url.path not in ("", "/")
                or url.query or url.fragment or url.username is not None):
            raise UsageError(f"{option}: {item!r} is not https://HOST:PORT (a signing member's client URL)")
        out.append(item)
    if not out:
        raise UsageError(f"{option} names no endpoint")
    return tuple(out)


def render_service(exec_start: Sequence[str], endpoints: Sequence[str], paths: dict[str, str], pki_dir: str) -> str:
    argv = (*exec_start, "cluster", "renew", "--endpoints", ",".join(endpoints), "--cacert", paths["ca"],
            "--server-cert", paths["server-cert"], "--server-key", paths["server-key"],
            "--peer-cert", paths["peer-cert"], "--peer-key", paths["peer-key"], "--before", RENEW_BEFORE)
    return "\n".join([
        "# securekv certificate renewal (written by `securekv cluster join` and `install bundle`; docs/pki.md).",
        "[Unit]",
        "Description=securekv: renew this member's certificates when they are due",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={' '.join(quote_arg(a) for a in argv)}",
        "UMask=0077",
        f"ReadWritePaths={quote_arg(pki_dir, command_line=False)}",
        "CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_CHOWN CAP_FOWNER",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service @chown",
        "SystemCallErrorNumber=EPERM",
        "",
    ])


def render_timer() -> str:
    return "\n".join([
        "# securekv certificate renewal timer (written by `securekv cluster join` and `install bundle`).",
        "[Unit]",
        "Description=securekv: check this member's certificates daily and renew them when due",
        "",
        "[Timer]",
        "OnCalendar=daily",
        "Persistent=yes",
        "RandomizedDelaySec=3600",
        f"Unit={SERVICE_NAME}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


__all__ = ["SERVICE_PATH", "TIMER_NAME", "TIMER_PATH", "check_endpoints", "render_service", "render_timer"]
