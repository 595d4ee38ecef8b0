"""Replies the node loop completes, written by the node loop itself at the end of its turn.

Why: a reply used to wake its connection's writer task (``GrpcPump.kick``), one task step and
scheduler turn per answer, only to call ``send_all`` on a stream that could have taken the bytes
at once. Now a connection kicked from the node loop's own task is remembered here (once per
turn) and :meth:`ReplyBatch.flush` writes each of them once, synchronously, before the loop
waits or hands an fsync away: the replies of one turn still leave with one write per connection,
without a task step. A connection whose socket would block (or whose writer is mid-send, or
whose stream cannot write without waiting) falls back to its writer task. Kicks from any other
task (a reader answering a read at once, a stream handler) wake the writer as before.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush_now(self) -> None: ...


class ReplyBatch:
    def __init__(self) -> None:
        self._owner: trio.lowlevel.Task | None = None
        self._dirty: list[Flushable] = []

    def own(self) -> None:
        """The calling task (the node loop) is the one whose kicks are deferred to :meth:`flush`."""
        self._owner = trio.lowlevel.current_task()

    def defer(self, conn: Flushable) -> bool:
        """True when the caller is the owning task: ``conn`` is written at its next flush (the
        caller remembers that it is queued, so each connection is listed once per turn)."""
        if self._owner is None or trio.lowlevel.current_task() is not self._owner:
            return False
        self._dirty.append(conn)
        return True

    def flush(self) -> None:
        """Write every connection kicked since the last flush. Never raises: one connection's
        failure must not stop the node loop."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for conn in dirty:
            try:
                conn.flush_now()
            except Exception:
                log.exception("writing a connection's replies failed")


__all__ = ["ReplyBatch", "Flushable"]
