"""The node loop: propose → (durable = committed on one member) → apply → persist → notify.

Proposals go through a bounded channel. The loop takes everything that arrived together as one
batch (group commit): encodes the entries, appends them to the WAL with ONE fsync (in a worker
thread), treats them as committed (single member; the cluster issue swaps this step for Raft),
applies each with the deterministic Applier, writes the applied rows together with the applied
index to the backend, notifies the watch hub and wakes each waiter.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import attrs
import trio

from securekv.proto import raft_internal_pb2
from securekv.rpctypes import ERR_REQUEST_TOO_LARGE, ERR_STOPPED, ERR_TOO_MANY_REQUESTS, EtcdError, err

log = logging.getLogger(__name__)

MAX_BATCH = 512
PROPOSAL_QUEUE = 4096


# Completion callback, called once in the trio thread: (ApplyResult or None, error or None).
Done = Callable[[Any, "BaseException | None"], None]


class _Waiter:
    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.event.set()


@attrs.define
class NodeStats:
    batches: int = 0
    entries: int = 0
    last_batch: int = 0


class Node:
    """Owns the WAL, backend, applier and hub for the life of the server (trio thread only)."""

    def __init__(
        self,
        *,
        wal: Any,
        backend: Any,
        applier: Any,
        hub: Any,
        term: int,
        member_id: int,
        max_request_bytes: int,
        to_write_batch: Callable[[list[Any], int], list[Any]],
        on_batch: Callable[[int, float, int], None] | None = None,
        clock: Callable[[], float] = trio.current_time,
        snapshot_count: int = 100_000,
    ) -> None:
        self.wal = wal
        self.backend = backend
        self.applier = applier
        self.hub = hub
        self.term = term
        self.member_id = member_id
        self.max_request_bytes = max_request_bytes
        self.to_write_batch = to_write_batch
        self.on_batch = on_batch
        self.clock = clock
        self.snapshot_count = snapshot_count
        self.snapshot_index = applier.applied_index
        self.last_index = max(wal.last_index, applier.applied_index)
        self.committed_index = self.last_index  # highest index whose rows are in the backend
        self._committed = trio.Event()
        self._commit_send, self._commit_recv = trio.open_memory_channel[tuple[list[Any], int]](64)
        self.backend_lock = trio.Lock()  # backend is not thread-safe: one worker call at a time
        self._send, self._recv = trio.open_memory_channel[tuple[bytes, raft_internal_pb2.InternalRaftRequest, Done | None]](
            PROPOSAL_QUEUE
        )
        self._next_id = 1
        self.stopped = False
        self.stats = NodeStats()

    # -- proposing ---------------------------------------------------------------------------

    def encode(self, req: raft_internal_pb2.InternalRaftRequest) -> bytes:
        req.header.member_id = self.member_id
        req.header.ID = self._next_id
        self._next_id += 1
        data = req.SerializeToString()
        if len(data) > self.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)
        return data

    async def propose(self, req: raft_internal_pb2.InternalRaftRequest) -> Any:
        """Return the ApplyResult once the entry is durable and applied; raise its EtcdError."""
        if self.stopped:
            raise err(ERR_STOPPED)
        data = self.encode(req)
        waiter = _Waiter()
        try:
            await self._send.send((data, req, waiter))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        result = waiter.result
        if result.error is not None:
            raise result.error
        return result

    def submit(self, req: raft_internal_pb2.InternalRaftRequest, done: Done) -> None:
        """Non-blocking propose (trio thread): ``done`` gets the ApplyResult or the error.

        The grpc bridge uses this for hot unary calls so no trio task is spawned per request.
        """
        if self.stopped:
            raise err(ERR_STOPPED)
        data = self.encode(req)
        try:
            self._send.send_nowait((data, req, done))
        except trio.WouldBlock:
            raise err(ERR_TOO_MANY_REQUESTS) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None

    def propose_nowait(self, req: raft_internal_pb2.InternalRaftRequest) -> bool:
        """Fire-and-forget internal proposal (lease expiry); False when the queue is full."""
        if self.stopped:
            return False
        try:
            self._send.send_nowait((self.encode(req), req, None))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._committer)
            task_status.started()
            try:
                await self._loop()
            finally:
                self._commit_send.close()

    async def _committer(self) -> None:
        """Apply each batch's rows to the backend in order, one sqlite transaction each."""
        async with self._commit_recv:
            async for writes, last in self._commit_recv:
                with trio.CancelScope(shield=True):
                    async with self.backend_lock:
                        await trio.to_thread.run_sync(self._commit_backend, writes)
                self.committed_index = last
                self._committed.set()
                self._committed = trio.Event()

    async def wait_committed(self, index: int) -> None:
        while self.committed_index < index:
            await self._committed.wait()

    async def _loop(self) -> None:
        # The receive channel stays open until _fail_queued has drained it.
        try:
            while True:
                first = await self._recv.receive()
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                with trio.CancelScope(shield=True):
                    await self._process(batch)
        except trio.EndOfChannel:
            pass
        finally:
            self.stopped = True
            self._fail_queued()
            self._recv.close()

    def _fail_queued(self) -> None:
        """Shutting down: whoever still waits on a queued proposal gets ERR_STOPPED, not silence."""
        while True:
            try:
                _, _, done = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if done is not None:
                try:
                    done(None, err(ERR_STOPPED))
                except Exception:
                    log.exception("proposal completion callback failed")

    async def _process(self, batch: list[tuple[bytes, Any, Done | None]]) -> None:
        from securekv.storage import HardState, WalEntry

        first = self.last_index + 1
        entries = [WalEntry(index=first + i, term=self.term, data=data) for i, (data, _, _) in enumerate(batch)]
        last = first + len(entries) - 1
        started = time.monotonic()
        try:
            await trio.to_thread.run_sync(self._persist, entries, HardState(self.term, self.member_id, last))
        except BaseException as exc:  # the log is unusable: fail everyone, stop proposing
            log.critical("WAL write failed, stopping: %s", exc)
            self.stopped = True
            for _, _, done in batch:
                if done is not None:
                    done(None, err(ERR_STOPPED))
            raise
        fsync_seconds = time.monotonic() - started
        self.last_index = last
        # Single member: durable == committed. Apply in log order.
        now = self.clock()
        results = []
        for entry, (_, req, _) in zip(entries, batch):
            try:
                result = self.applier.apply(entry.index, req, now=now)
            except EtcdError as exc:  # not expected from the applier, but never kill the loop
                results.append(_Failed(entry.index, exc))
                continue
            results.append(result)
            # Tell the hub right away (same synchronous step as the apply), so no stream can
            # read history between the store changing and the hub knowing.
            if result.error is None and not result.skipped:
                if req.WhichOneof("request") == "compaction":
                    self.hub.compact(req.compaction.revision)
                if result.events:
                    self.hub.notify(result.revision, list(result.events))
        for result, (_, _, done) in zip(results, batch):
            if done is None:
                continue
            try:
                if isinstance(result, _Failed):
                    done(None, result.error)
                else:
                    done(result, None)
            except Exception:  # a broken callback must not stop the node
                log.exception("proposal completion callback failed")
        # Acknowledged above: the entries are durable in the WAL and applied in memory. The
        # backend catches up now (a crash before this commit is repaired by WAL replay);
        # backend readers wait for it through backend_call().
        # The committer task writes it while this loop fsyncs the next batch (pipelining).
        try:
            await self._commit_send.send((self.to_write_batch(results, last), last))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # shutting down: the WAL replay at the next start writes these rows
        if last - self.snapshot_index >= self.snapshot_count:
            await self.wait_committed(last)
            async with self.backend_lock:
                await trio.to_thread.run_sync(self._snapshot, last)
            self.snapshot_index = last
        self.stats.batches += 1
        self.stats.entries += len(batch)
        self.stats.last_batch = len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), fsync_seconds, last)

    def _persist(self, entries: list[Any], hard_state: Any) -> None:
        self.wal.append(entries, hard_state=hard_state)
        self.wal.sync()

    def _snapshot(self, index: int) -> None:
        """The backend holds everything up to ``index``: make it durable, then let the WAL forget."""
        from securekv.storage import SnapshotMarker

        self.backend.sync()
        self.wal.save_snapshot(SnapshotMarker(index=index, term=self.term))
        released = self.wal.release_before(index)
        log.info("snapshot at index %d; released %d WAL segment(s)", index, len(released))

    def _commit_backend(self, writes: list[Any]) -> None:
        for wb in writes:
            self.backend.commit(wb)

    async def backend_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking backend call in a worker, serialised with the node's commits, after
        the backend holds every entry applied so far (so snapshots include acknowledged writes)."""
        await self.wait_committed(self.last_index)
        async with self.backend_lock:
            return await trio.to_thread.run_sync(fn, *args)

    def close(self) -> None:
        self.stopped = True
        self._send.close()


@attrs.frozen
class _Failed:
    index: int
    error: EtcdError
    events: tuple = ()
    kv: Any = None
    lease_puts: tuple = ()
    lease_deletes: tuple = ()
    alarms: Any = None
    skipped: bool = True
