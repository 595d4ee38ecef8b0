"""Helpers shared by the storage tests and their child process."""

from __future__ import annotations

import os
import select
import time


def entry_data(index: int) -> bytes:
    """The payload the WAL child writes at ``index`` (so the parent can verify it)."""
    return f"entry-{index}-".encode() * (1 + index % 7)


DEADLINE = 15.0  # seconds for any one wait on a child


def read_acks(proc, want: int) -> int:
    """Read acknowledged indexes from the child until ``want`` lines; return the last one."""
    last, lines, buf = 0, 0, b""
    deadline = time.monotonic() + DEADLINE
    fd = proc.stdout.fileno()
    while lines < want:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"child acknowledged only {lines} batches in {DEADLINE}s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        assert chunk, f"child exited: {proc.stderr.read().decode()}"
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            last = int(line)
            lines += 1
    return last


def drain_acks(proc, last: int) -> int:
    """After the child died: the last index among acknowledgements still in the pipe."""
    rest = proc.stdout.read()
    lines = [line for line in rest.split(b"\n") if line.strip()]
    # a line cut by the kill never completed: only whole lines (followed by \n) count
    if lines and not rest.endswith(b"\n"):
        lines = lines[:-1]
    return max([last] + [int(line) for line in lines])
