"""etcd's log formats (``--logger zap|capnslog``) and outputs (``--log-outputs``) for `serve`.

Why: operators migrating from etcd have log watchers (promtail/fluentd rules, alert scripts,
runbooks) that match etcd's lines: the zap JSON keys ``level``/``ts``/``caller``/``msg`` plus
named fields, or capnslog's ``2006-01-02 15:04:05.000000 I | pkg: message``. So the events
operators watch are logged with etcd's own message texts and field names (``event()``, with
the catalogue below), and every other securekv line gets the same envelope.

Outputs: ``default``/``stderr``, ``stdout``, file paths (appended, created 0600) and
``systemd/journal``: journald's native datagram protocol on ``/run/systemd/journal/socket``
(``$SECUREKV_JOURNAL_SOCKET`` overrides the path, for tests), one entry per line with
``MESSAGE`` = the zap JSON line, ``PRIORITY`` from its level, ``PACKAGE`` and
``SYSLOG_IDENTIFIER``, as etcd's journal writer sends them; a send that fails falls back to
stderr, as etcd's does. Written by hand: the protocol is a few lines, and python-systemd
would be a C dependency.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys
import time
from typing import Any, Iterable, TextIO

from securekv.errors import UsageError

JOURNAL_SOCKET = "/run/systemd/journal/socket"
JOURNAL_ENV = "SECUREKV_JOURNAL_SOCKET"
FIELDS_ATTR = "etcd_fields"  # LogRecord attribute: dict of zap fields
CAPNSLOG_ATTR = "etcd_capnslog"  # LogRecord attribute: the capnslog text of the same event
PKG_ATTR = "etcd_pkg"  # LogRecord attribute: capnslog package name

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
          "error": logging.ERROR, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}
_ZAP_LEVEL = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn", logging.ERROR: "error",
              logging.CRITICAL: "fatal"}
_CAPNS_LEVEL = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
                logging.CRITICAL: "C"}
_JOURNAL_PRIORITY = {"debug": 7, "info": 6, "warn": 4, "error": 3, "dpanic": 2, "panic": 2, "fatal": 2}


def event(logger: logging.Logger, level: int, msg: str, *, capnslog: str | None = None, pkg: str | None = None,
          **fields: Any) -> None:
    """Log one event: ``msg`` and ``fields`` as etcd's zap logger writes them; ``capnslog`` is
    the text etcd's capnslog logger writes for the same event (default: ``msg``)."""
    if not logger.isEnabledFor(level):
        return
    logger.log(level, msg, extra={FIELDS_ATTR: fields, CAPNSLOG_ATTR: capnslog, PKG_ATTR: pkg}, stacklevel=2)


def rejected_connection(logger: logging.Logger, remote: str, error: str, server_name: str = "") -> None:
    """etcd's TLS handshake failure line (``--client-*`` and ``--peer-*`` listeners alike)."""
    event(logger, logging.WARNING, "rejected connection", pkg="embed",
          capnslog=f'rejected connection from "{remote}" (error "{error}", ServerName "{server_name}")',
          **{"remote-addr": remote, "server-name": server_name, "error": error})


def _zap_value(value: Any) -> Any:
    if isinstance(value, BaseException):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_zap_value(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def zap_timestamp(created: float) -> str:
    """zapcore.ISO8601TimeEncoder: local time, milliseconds, ``Z`` or ``+hhmm``."""
    local = time.localtime(created)
    millis = int((created - int(created)) * 1000)
    offset = local.tm_gmtoff or 0
    zone = "Z" if offset == 0 else f"{'+' if offset > 0 else '-'}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + f".{millis:03d}" + zone


def _caller(record: logging.LogRecord) -> str:
    """``dir/file.py:line`` relative to the package, as zap's short caller (``embed/etcd.go:117``)."""
    path = record.pathname.replace(os.sep, "/")
    marker = "/securekv/"
    if marker in path:
        path = path.rsplit(marker, 1)[1]
    else:
        path = "/".join(path.rsplit("/", 2)[-2:])
    return f"{path}:{record.lineno}"


class ZapFormatter(logging.Formatter):
    """One JSON object per line: level, ts, caller, msg, then the event's fields (zap's order)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _ZAP_LEVEL.get(record.levelno, "info"),
            "ts": zap_timestamp(record.created),
            "caller": _caller(record),
            "msg": record.getMessage(),
        }
        for key, value in (getattr(record, FIELDS_ATTR, None) or {}).items():
            out[key] = _zap_value(value)
        if record.exc_info and record.exc_info[1] is not None:
            out.setdefault("error", str(record.exc_info[1]))
            out["stacktrace"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class CapnslogFormatter(logging.Formatter):
    """``2006-01-02 15:04:05.000000 I | pkg: message``, capnslog's default format."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        micros = int((record.created - int(record.created)) * 1_000_000)
        pkg = getattr(record, PKG_ATTR, None) or record.name.rsplit(".", 1)[-1]
        text = getattr(record, CAPNSLOG_ATTR, None) or record.getMessage()
        line = f"{stamp}.{micros:06d} {_CAPNS_LEVEL.get(record.levelno, 'I')} | {pkg}: {text}"
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def journal_datagram(fields: Iterable[tuple[str, str]]) -> bytes:
    """journald's native protocol: ``KEY=value\\n``, or ``KEY\\n<le64 length><value>\\n`` for
    values with a newline."""
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    """Sends each formatted (zap JSON) line to journald's native socket, etcd's fields."""

    MAX_MESSAGE = 60_000  # stays below the default datagram limit; longer lines are cut

    def __init__(self, path: str, fallback: TextIO) -> None:
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(True)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise UsageError(f"--log-outputs systemd/journal: cannot reach journald at {path}: "
                             f"{exc.strerror or exc}") from None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            level, caller = _ZAP_LEVEL.get(record.levelno, "info"), _caller(record)
            message = line if len(line) <= self.MAX_MESSAGE else line[: self.MAX_MESSAGE] + "…(truncated)"
            datagram = journal_datagram([
                ("MESSAGE", message),
                ("PRIORITY", str(_JOURNAL_PRIORITY.get(level, 6))),
                ("PACKAGE", caller.rsplit("/", 1)[0] if "/" in caller else "."),
                ("SYSLOG_IDENTIFIER", "securekv"),
            ])
            try:
                self.sock.send(datagram)
            except OSError:
                self.fallback.write(line + "\n")  # as etcd's journal writer: fall back to stderr
                self.fallback.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            super().close()


class _FileHandler(logging.StreamHandler):
    """Appends to a log file created 0600 (logs may name keys, members and clients)."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"--log-outputs: cannot open {path}: {exc.strerror or exc}") from None
        super().__init__(os.fdopen(fd, "a", encoding="utf-8", buffering=1))

    def close(self) -> None:
        try:
            self.acquire()
            try:
                if self.stream and not self.stream.closed:
                    self.stream.close()
            finally:
                self.release()
        finally:
            super().close()


def handlers_for(outputs: Iterable[str], formatter: logging.Formatter,
                 environ: dict[str, str] | None = None) -> list[logging.Handler]:
    """One handler per ``--log-outputs`` entry."""
    environ = dict(os.environ if environ is None else environ)
    made: list[logging.Handler] = []
    try:
        for out in outputs:
            if out in ("default", "stderr"):
                h: logging.Handler = logging.StreamHandler(sys.stderr)
            elif out == "stdout":
                h = logging.StreamHandler(sys.stdout)
            elif out == "systemd/journal":
                h = JournalHandler(environ.get(JOURNAL_ENV) or JOURNAL_SOCKET, sys.stderr)
            else:
                h = _FileHandler(out)
            h.setFormatter(formatter)
            made.append(h)
    except BaseException:
        for h in made:
            h.close()
        raise
    return made


def setup(logger_kind: str, level: str, outputs: Iterable[str]) -> list[logging.Handler]:
    """Install the handlers on the root logger (replacing earlier ones); returns them."""
    formatter: logging.Formatter = ZapFormatter() if logger_kind == "zap" else CapnslogFormatter()
    handlers = handlers_for(outputs, formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(LEVELS[level])
    return handlers


__all__ = ["CapnslogFormatter", "JournalHandler", "ZapFormatter", "event", "handlers_for", "journal_datagram",
           "rejected_connection", "setup", "zap_timestamp"]
