"""``--audit-log FILE``: every authorisation decision as one JSON line.

A line holds the time (RFC 3339, UTC), the identity and how it was established (certificate,
token, password, peer, none), the client address, the RPC (gRPC full method name), the key
range it touches, the decision (allow/deny) and the reason (the rule, or etcd's error text).
Never a password, a token or a value: the gate hands over only those fields.

Safe rotation: lines go to a buffered append-only file (0600) under a lock; a worker thread
flushes it every second (and it is flushed at exit), so the trio thread never waits for the
disk. When the file has reached ``max_bytes`` the flush renames it to ``FILE.1`` (older ones
shift up to ``FILE.<backups>``, the oldest is removed) between two lines and opens a new file,
so no line is split or lost. An external logrotate that moves the file away is noticed
at the next flush (the path's inode changed) and a new file is opened at the path.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

from securekv.fsutil import fsync_dir

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_BACKUPS = 5


def _stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 backups: int = DEFAULT_BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(1, backups)
        self._lock = threading.Lock()
        self._fh: BinaryIO | None = None
        self._ino = 0
        self._size = 0
        self.dropped = 0
        with self._lock:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fh = os.fdopen(fd, "ab", buffering=64 * 1024)
        self._ino = st.st_ino
        self._size = st.st_size

    def record(self, event: dict[str, Any]) -> None:
        event = dict(event)
        if isinstance(event.get("time"), (int, float)):
            event["time"] = _stamp(float(event["time"]))
        line = (json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fh is None:
                self.dropped += 1
                return
            try:
                self._fh.write(line)  # into the buffer: the disk work happens in flush()
                self._size += len(line)
            except OSError as exc:  # disk full etc.: keep serving, say so once per failure
                self.dropped += 1
                log.warning("audit log %s: cannot write (%s)", self.path, exc)

    def _rotate(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{n}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fsync_dir(self.path.parent)
        self._open()

    def flush(self) -> None:
        """Write buffered lines out, rotate when the file is full, reopen if it was moved away
        (external rotation). Called once a second from a worker thread (and at close)."""
        with self._lock:
            if self._fh is None:
                return
            try:
                self._fh.flush()
                if self._size >= self.max_bytes:
                    self._rotate()
                    return
                try:
                    moved = os.stat(self.path).st_ino != self._ino
                except FileNotFoundError:
                    moved = True
                if moved:
                    self._fh.close()
                    self._fh = None
                    self._open()
            except OSError as exc:
                log.warning("audit log %s: %s", self.path, exc)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                finally:
                    self._fh.close()
                    self._fh = None


__all__ = ["AuditLog"]
