"""A systemd timer that runs ``securekv ctl snapshot save --backup-dir`` (the alternative to the
member's own ``--backup-dir`` schedule, e.g. to back up from a host that holds no data).

Two units: ``securekv-backup.service`` (Type=oneshot, sandboxed like the member, writes only the
backup directory) and ``securekv-backup.timer`` (``OnCalendar=``, ``Persistent=yes`` so a
missed run happens at boot). The two secrets — the snapshot key and the client certificate's
key — are handed over with ``LoadCredential=`` and read from ``%d`` (the credentials
directory): they stay root-only 0600 where the operator keeps them.

Every value is checked before rendering and written per systemd's rules: command-line
arguments double-quoted with C escapes where needed, ``%`` doubled (specifiers) and ``$``
doubled (variable expansion); no control characters anywhere; paths absolute; the calendar
expression restricted to the characters calendar syntax uses (and, when the tool exists,
proven by ``systemd-analyze calendar``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Sequence
from urllib.parse import urlsplit

import attrs

from securekv.deploy.systemd import check_exec_start, check_user
from securekv.errors import UsageError

SERVICE_NAME = "securekv-backup.service"
TIMER_NAME = "securekv-backup.timer"
SERVICE_PATH = f"/etc/systemd/system/{SERVICE_NAME}"
TIMER_PATH = f"/etc/systemd/system/{TIMER_NAME}"
KEY_CREDENTIAL = "snapshot.key"
CLIENT_KEY_CREDENTIAL = "client.key"

_CALENDAR_RE = re.compile(r"^[A-Za-z0-9*:,./~+ -]{1,200}$")
_SAFE_ARG_RE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def quote_arg(arg: str, command_line: bool = True) -> str:
    """One ExecStart= argument (or one ReadWritePaths= entry with ``command_line=False``) as
    systemd parses it back to exactly ``arg``: quoted with C escapes unless plain, ``%``
    doubled (specifiers) and, on a command line, ``$`` doubled (variable expansion)
    (systemd.service(5) "Command lines", systemd.unit(5) "Specifiers")."""
    if _CONTROL_RE.search(arg):
        raise UsageError(f"argument {arg!r} contains a control character")
    if arg and _SAFE_ARG_RE.match(arg):
        text = arg
    else:
        text = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = text.replace("%", "%%")
    return text.replace("$", "$$") if command_line else text


def credential_source(path: str) -> str:
    """The PATH of ``LoadCredential=ID:PATH``: the rest of the line, specifiers expanded, no
    quoting (so no whitespace at the ends, ``%`` doubled)."""
    if _CONTROL_RE.search(path) or path != path.strip():
        raise UsageError(f"credential file {path!r} must not contain control characters or surrounding spaces")
    return path.replace("%", "%%")


def check_calendar(expr: str) -> str:
    expr = expr.strip()
    if not _CALENDAR_RE.match(expr):
        raise UsageError(f"--backup-timer {expr!r} is not a systemd calendar expression "
                         "(e.g. hourly, daily, '*-*-* 00/6:00:00')")
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        proc = subprocess.run([tool, "calendar", expr], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise UsageError(f"--backup-timer {expr!r}: {(proc.stderr or proc.stdout).strip()}")
    return expr


def _absolute(path: str, what: str) -> str:
    """The same path grammar as every other value install writes (securekv/deploy/values.py)."""
    from securekv.deploy.values import check_path

    return check_path(what, path)


@attrs.frozen
class TimerOptions:
    exec_start: tuple[str, ...]  # how to run securekv (absolute program + arguments)
    calendar: str
    backup_dir: str
    key_file: str  # the snapshot key (LoadCredential source)
    endpoint: str  # https:// client URL of the member
    cacert: str
    client_cert: str
    client_key: str  # LoadCredential source
    retain: int = 7
    user: str = "securekv"


def check_options(o: TimerOptions) -> TimerOptions:
    check_user(o.user)
    check_exec_start(o.exec_start)
    check_calendar(o.calendar)
    for value, what in ((o.backup_dir, "--backup-dir"), (o.key_file, "--backup-key-file"),
                        (o.cacert, "the member's trusted-ca-file"), (o.client_cert, "--backup-client-cert"),
                        (o.client_key, "--backup-client-key")):
        _absolute(value, what)
    parts = urlsplit(o.endpoint)
    if parts.scheme != "https" or not parts.hostname or _CONTROL_RE.search(o.endpoint):
        raise UsageError(f"the backup endpoint {o.endpoint!r} must be an https:// URL")
    if o.retain < 1:
        raise UsageError("--backup-retain must be at least 1")
    return o


def render_service(o: TimerOptions) -> str:
    o = check_options(o)
    argv: Sequence[str] = (
        *o.exec_start, "ctl", "--endpoints", o.endpoint, "--cacert", o.cacert, "--cert", o.client_cert,
        "--key", f"%d/{CLIENT_KEY_CREDENTIAL}", "snapshot", "save", "--backup-dir", o.backup_dir,
        "--retain", str(o.retain), "--encryption-key-file", f"%d/{KEY_CREDENTIAL}",
    )
    # %d must stay a specifier: quote the rest, then put the two specifiers back.
    exec_start = " ".join(quote_arg(a).replace("%%d/", "%d/") if a.startswith("%d/") else quote_arg(a) for a in argv)
    return "\n".join([
        "# securekv scheduled snapshot (rendered by `securekv install systemd --backup-timer`).",
        "[Unit]",
        "Description=securekv encrypted snapshot into the backup directory",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        f"User={o.user}",
        f"Group={o.user}",
        f"LoadCredential={KEY_CREDENTIAL}:{credential_source(o.key_file)}",
        f"LoadCredential={CLIENT_KEY_CREDENTIAL}:{credential_source(o.client_key)}",
        f"ExecStart={exec_start}",
        "UMask=0077",
        "LimitNOFILE=4096",
        f"ReadWritePaths={quote_arg(o.backup_dir, command_line=False)}",
        "# The member's sandbox (docs/deployment.md): a client needs even less.",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "PrivateUsers=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "DevicePolicy=closed",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes",
        "PrivateMounts=yes",
        "KeyringMode=private",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallErrorNumber=EPERM",
        "",
    ])


def render_timer(o: TimerOptions) -> str:
    o = check_options(o)
    return "\n".join([
        "# securekv scheduled snapshot timer (rendered by `securekv install systemd --backup-timer`).",
        "[Unit]",
        "Description=securekv encrypted snapshots on a schedule",
        "",
        "[Timer]",
        f"OnCalendar={o.calendar}",
        "Persistent=yes",
        "RandomizedDelaySec=60",
        f"Unit={SERVICE_NAME}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


__all__ = ["TimerOptions", "check_calendar", "credential_source", "quote_arg", "render_service", "render_timer"]


def plan_timer_files(config_file: str, exec_start: Sequence[str], user: str, calendar: str, backup_dir: str,
                     key_file: str, client_cert: str, client_key: str, retain: int) -> tuple:
    """The two rendered units for ``install systemd --backup-timer``; the member's endpoint and
    CA come from its config (the first advertised client URL, the client trusted-ca-file)."""
    from securekv.deploy.config import load_config_file
    from securekv.deploy.firewall import RenderedFile

    config = load_config_file(config_file)
    urls = config.data.get("advertise-client-urls") or config.data.get("listen-client-urls")
    urls = urls if isinstance(urls, list) else str(urls).split(",")
    cacert = (config.data.get("client-transport-security") or {}).get("trusted-ca-file") or ""
    if not cacert:
        raise UsageError(f"{config_file}: --backup-timer needs client-transport-security.trusted-ca-file")
    if not (client_cert and client_key and key_file and backup_dir):
        raise UsageError("--backup-timer needs --backup-dir, --backup-key-file, --backup-client-cert and "
                         "--backup-client-key")
    options = TimerOptions(exec_start=tuple(exec_start), calendar=calendar, backup_dir=backup_dir, key_file=key_file,
                           endpoint=str(urls[0]).strip(), cacert=cacert, client_cert=client_cert,
                           client_key=client_key, retain=retain, user=user)
    return (RenderedFile(SERVICE_PATH, render_service(options), 0o644),
            RenderedFile(TIMER_PATH, render_timer(options), 0o644))
