"""The node's fsync thread (server/syncthread.py): a job always runs to its end, and a
cancellation of the waiting task is delivered only after it, at the task's next checkpoint."""

from __future__ import annotations

import threading

import pytest
import trio

from securekv.server.syncthread import SyncThread


async def test_a_job_runs_in_the_thread_and_its_error_reaches_the_caller() -> None:
    st = SyncThread()
    try:
        where: list[str] = []
        await st.run(lambda: where.append(threading.current_thread().name))
        assert where == ["securekv-wal-sync"]

        def fails() -> None:
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space"):
            await st.run(fails)
        await st.run(lambda: None)  # the error was handed over once, not kept
    finally:
        st.close()


async def test_a_cancelled_wait_lets_the_job_finish_then_delivers_the_cancellation() -> None:
    st = SyncThread()
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    steps: list[str] = []

    def job() -> None:
        started.set()
        release.wait()
        finished.append(True)

    async def waiter(scope: trio.CancelScope, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            task_status.started()
            await st.run(job)
            steps.append(f"returned, job finished: {finished == [True]}")
            await trio.lowlevel.checkpoint()  # the cancellation arrives here
            steps.append("not reached")

    try:
        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await nursery.start(waiter, scope)
            await trio.to_thread.run_sync(started.wait)  # the job runs and waits for `release`
            scope.cancel()  # the waiting task is rescheduled with Cancelled now
            release.set()
        assert steps == ["returned, job finished: True"]
        assert scope.cancelled_caught
    finally:
        st.close()
