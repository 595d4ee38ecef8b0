"""The node loop's fsync thread: the one piece of work that leaves the state's thread on
every write.

Why not ``trio.to_thread.run_sync``: its general machinery (a context copy, the thread cache,
the result handed back through ``run_sync_soon`` and trio's system task) cost a task step and
tens of microseconds per Raft Ready, on the path of every acknowledged write. This thread
takes one job at a time, woken by one byte on a pipe, and says "done" with one byte on a
second pipe that the waiting task watches with ``wait_readable``, so completion wakes that
task directly. A pipe to wake it, not a ``SimpleQueue``: ``os.write`` releases the GIL around
the system call, so the woken thread can take the GIL and start its ``fdatasync`` at once,
while ``SimpleQueue.put`` wakes it with the GIL held (a woken thread that preempts the trio
thread then only waits for it; py-spy showed ≈ a quarter of the node loop's GIL time there).

One job at a time, and a job always runs to its end: the WAL is not thread-safe and a
half-synced log must not be touched again, so the waiting task is never cancelled out of it:
a cancellation waits for the job and is delivered at the task's next checkpoint (without a
shielded scope per wait, ≈ 6 µs each). The node hands it only the ``fdatasync``
(``WAL.datasync``): the frames are written in the trio thread, so the sync thread runs one C
call without the GIL and takes the GIL only around it.
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import Callable

import trio


class SyncThread:
    def __init__(self, name: str = "securekv-wal-sync") -> None:
        self._name = name
        # Jobs in order (None: end), each announced by one byte on the job pipe. A deque's
        # append and popleft are atomic: no lock needed.
        self._jobs: collections.deque[Callable[[], object] | None] = collections.deque()
        self._thread: threading.Thread | None = None
        # The pipes, made with the thread (at the first job): the job's and "done".
        self._job_r = self._job_w = self._done_r = self._done_w = -1
        self._error: BaseException | None = None
        self._busy = False
        self._closed = False

    def _work(self) -> None:
        while True:
            os.read(self._job_r, 1)  # blocking, without the GIL
            job = self._jobs.popleft()
            if job is None:
                return
            try:
                job()
                self._error = None
            except BaseException as exc:  # handed to the waiting task, raised there
                self._error = exc
            os.write(self._done_w, b"\0")

    async def run(self, job: Callable[[], object]) -> None:
        """Run ``job`` in the thread and wait for it. Not cancellable: a cancellation that
        arrives meanwhile waits for the job and is then delivered at the caller's next
        checkpoint, as if the wait ran under ``CancelScope(shield=True)`` (see the module doc)."""
        if self._closed:
            raise RuntimeError("the sync thread is closed")
        if self._busy:
            raise RuntimeError("one job at a time")
        if self._thread is None:
            self._job_r, self._job_w = os.pipe()
            self._done_r, self._done_w = os.pipe()
            os.set_blocking(self._done_r, False)
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        self._busy = True
        try:
            self._jobs.append(job)
            os.write(self._job_w, b"\0")
            try:
                while True:
                    await trio.lowlevel.wait_readable(self._done_r)
                    try:
                        os.read(self._done_r, 64)
                        break
                    except BlockingIOError:
                        continue
            except trio.Cancelled:
                # The job runs to its end and nobody may touch the WAL before it did: wait for
                # it here (blocking: an fsync). The cancellation is not lost: trio raises it
                # again at the caller's next checkpoint (a cancelled scope stays cancelled).
                # This is what a shielded scope around the wait would do, without its cost
                # (≈ 6 µs per fsync) -- and the node loop carries out a whole Ready, persist to
                # answers, before it checkpoints again.
                self._wait_blocking()
            except BaseException:
                self._wait_blocking()
                raise
        finally:
            self._busy = False
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _wait_blocking(self) -> None:
        while True:
            select.select([self._done_r], [], [])
            try:
                os.read(self._done_r, 64)
                return
            except BlockingIOError:
                continue

    def close(self) -> None:
        """End the thread (after the job it runs, if any) and release the pipes."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._jobs.append(None)
            os.write(self._job_w, b"\0")
            self._thread.join()
            for fd in (self._job_r, self._job_w, self._done_r, self._done_w):
                os.close(fd)


__all__ = ["SyncThread"]
