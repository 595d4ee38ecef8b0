"""The node loop: the trio driver of the node core (``securekv/node``).

The node logic — Raft, the pending proposals and their callers, ReadIndex reads, conf
changes, lease expiry, snapshot decisions, applying committed entries — is the pure
:class:`~securekv.node.NodeCore`, the same object every simulated seed runs. This module only
does its I/O and its waiting:

- inputs: proposals through a bounded channel (each loop turn takes everything waiting, up to
  ``MAX_BATCH`` proposals → one append per follower), peer messages and reports from the
  transport, ticks from a timer task, reads from the request handlers;
- effects, in the order the core returns them: messages to the peer transport, the WAL append
  + ONE fsync per Ready in the node's sync thread (``server/syncthread.py``; group commit), a leader's snapshot installed,
  completion callbacks, the applied rows handed to the committer task (sqlite, pipelined,
  batched like etcd's backend), snapshots saved and built in worker threads.

On one member the core commits at once, so a put costs one WAL fsync.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable

import attrs
import trio

from securekv.node import NodeCore, Prepared, ServerMachine, peek_header
from securekv.node import effects as fx
from securekv.node.entry import EntryCodec
from securekv.node.inputs import Proposal
from securekv.proto import raft_internal_pb2
from securekv.raft import ConfChange, ConfChangeType, Config as RaftConfig
from securekv.raft.types import MessageType
from securekv.rpctypes import ERR_REQUEST_TOO_LARGE, ERR_STOPPED, ERR_TOO_MANY_REQUESTS, err
from securekv.server.cluster import Membership
from securekv.server.etcdlog import event
from securekv.server.replybatch import ReplyBatch
from securekv.server.syncthread import SyncThread

log = logging.getLogger(__name__)

MAX_BATCH = 512
PROPOSAL_QUEUE = 4096
BACKEND_BATCH_INTERVAL = 0.1  # seconds applied rows may wait for their backend commit (etcd: 100 ms)
BACKEND_BATCH_LIMIT = 10_000  # entries that trigger a backend commit at once (etcd: 10,000)
COMMIT_QUEUE = 64  # applied batches waiting for the committer before the node loop waits
_FLUSH: Any = ((), 0, 0)  # committer marker: commit what is pending now (someone reads the backend)
CATCHUP_ENTRIES = 5000  # entries kept in memory behind a snapshot so slow followers catch up from the log

# Completion callback, called once in the trio thread: (ApplyResult or None, error or None).
Done = Callable[[Any, "BaseException | None"], None]

__all__ = ["Node", "NodeStats", "Prepared", "peek_header"]


class _Waiter:
    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def __call__(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.event.set()


@attrs.frozen
class NodeStats:
    batches: int = 0
    entries: int = 0
    last_batch: int = 0


class Node:
    """Drives the node core for the life of the server (trio thread) and owns its I/O: the WAL,
    the backend (through the committer), the transport."""

    def __init__(
        self,
        *,
        wal: Any,
        backend: Any,
        applier: Any,
        hub: Any,
        member_id: int,
        max_request_bytes: int,
        to_write_batch: Callable[[list[Any], int], list[Any]],
        raft_storage: Any = None,
        membership: Membership | None = None,
        raft_applied: int | None = None,
        rng: Any = None,
        election_tick: int = 10,
        tick_seconds: float = 0.1,
        request_timeout: float = 7.0,
        term: int = 0,
        on_batch: Callable[[int, float, int], None] | None = None,
        on_leader_change: Callable[[int, int], None] | None = None,
        clock: Callable[[], float] = trio.current_time,
        snapshot_count: int = 100_000,
        pre_vote: bool = True,
    ) -> None:
        from securekv.raft import ConfState
        from securekv.storage.raftstorage import RaftStorage

        self.wal = wal
        self.backend = backend
        self.hub = hub
        self.member_id = member_id
        self.on_batch = on_batch
        self.on_leader_change = on_leader_change
        self.clock = clock
        self.tick_seconds = tick_seconds
        if raft_storage is None:  # a bare node (tests): one voter, empty log
            raft_storage = RaftStorage(ConfState(voters=(member_id,)))
        self.storage = raft_storage
        marker = wal.snapshot
        applied = raft_applied if raft_applied is not None else self.storage.first_index() - 1
        self.machine = ServerMachine(applier=applier, hub=hub,
                                     membership=membership if membership is not None else Membership(),
                                     member_id=member_id, to_write_batch=to_write_batch,
                                     perf_counter=time.perf_counter)
        first_id = ((member_id & 0xFFFF) << 48) | ((int(time.time() * 1000) & 0xFFFFFFFFFF) << 8)
        self.codec = EntryCodec(member_id, max_request_bytes, first_id)
        self.core = NodeCore(
            RaftConfig(id=member_id, storage=self.storage, rng=rng or random.Random(),
                       election_tick=election_tick, heartbeat_tick=1, applied=applied,
                       max_size_per_msg=1 << 20, max_inflight_msgs=256, check_quorum=True, pre_vote=pre_vote),
            self.machine, clock=clock, codec=self.codec, request_timeout=request_timeout,
            snapshot_count=snapshot_count, snapshot_index=max(marker.index if marker is not None else 0, 0),
            catchup_entries=CATCHUP_ENTRIES, initial_term=term,
            leader_appends_early=True,  # followers persist in parallel with the leader
        )
        self.cluster_id = 0  # for log lines only (set by the server)
        self.slow_applies = 0  # etcd_server_slow_apply_total
        self.wal_bytes = 0  # entry bytes appended to the WAL (etcd_disk_wal_write_bytes_total)
        self.installing_snapshot = False
        self._heartbeats: dict[int, float] = {}  # peer -> when the unanswered heartbeat was sent
        self.metrics: Any = None  # ServerMetrics: histograms observed where the work happens
        self.backend_batch_interval = BACKEND_BATCH_INTERVAL  # --backend-batch-interval
        self.backend_batch_limit = BACKEND_BATCH_LIMIT  # --backend-batch-limit
        self.transport: Any = None
        self.committed_index = applier.applied_index  # highest index whose rows are in the backend
        self._committed = trio.Event()
        self._commit_send, self._commit_recv = trio.open_memory_channel[tuple[list[Any], int, int]](COMMIT_QUEUE)
        self._flush_asked = False
        # Set while the committer gathers a batch: it sleeps until the batch interval ends and
        # is woken early only when the batch must go now (limit, flush, channel half full,
        # stop), not once per Raft Ready.
        self._gather_wake: trio.Event | None = None
        self._committer_gone = False  # the committer ended: nobody will commit any more
        self._syncer = SyncThread()  # the WAL's fsyncs (started at the first, ended with run())
        self.backend_size = 0  # the backend file's size after the last commit (quota check)
        self._failure: BaseException | None = None
        self.backend_lock = trio.Lock()  # backend is not thread-safe: one worker call at a time
        self._send, self._recv = trio.open_memory_channel[Proposal](PROPOSAL_QUEUE)
        self._inbox: list[Any] = []
        self._ticks = 0
        self._wake = trio.Event()
        self._more_queued = False  # the last _take_inputs left proposals in the channel
        self._applied_event = trio.Event()
        self._leader_event = trio.Event()
        self._fsync_seconds = 0.0
        self.stopped = False
        # Replies this loop completes are written by it before it waits or hands an fsync away,
        # one write per connection (server/replybatch.py): no writer task wake-up per answer.
        self.reply_batch = ReplyBatch()

    # -- state (the core's, read per request) ------------------------------------------------

    @property
    def raw(self) -> Any:
        return self.core.raw

    @property
    def applier(self) -> Any:
        return self.machine.applier

    @applier.setter
    def applier(self, applier: Any) -> None:
        self.machine.applier = applier

    @property
    def checkpointer(self) -> Any:
        """The store's key-index checkpoints (securekv/mvcc/checkpoint.py), stepped by the
        machine at the end of each apply batch. Set by the server."""
        return self.machine.checkpointer

    @checkpointer.setter
    def checkpointer(self, checkpointer: Any) -> None:
        self.machine.checkpointer = checkpointer

    @property
    def membership(self) -> Membership:
        return self.machine.membership

    @membership.setter
    def membership(self, membership: Membership) -> None:
        self.machine.membership = membership

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def leader(self) -> int:
        return self.core.leader

    @property
    def role(self) -> Any:
        return self.core.role

    @property
    def last_index(self) -> int:
        return self.core.last_index

    @property
    def applied_index(self) -> int:
        return self.machine.applier.applied_index

    @property
    def commit_index(self) -> int:
        return self.core.commit_index

    @property
    def is_leader(self) -> bool:
        return self.core.leader == self.member_id

    @property
    def snapshot_index(self) -> int:
        return self.core.snapshot_index

    @property
    def request_timeout(self) -> float:
        return self.core.request_timeout

    @property
    def max_request_bytes(self) -> int:
        return self.codec.max_request_bytes

    @property
    def warning_apply_duration(self) -> float:
        return self.machine.warning_apply_duration

    @warning_apply_duration.setter
    def warning_apply_duration(self, seconds: float) -> None:  # --experimental-warning-apply-duration
        self.machine.warning_apply_duration = seconds

    @property
    def lease_extend(self) -> float:
        return self.core.lease_extend

    @lease_extend.setter
    def lease_extend(self, seconds: float) -> None:
        """How long a new leader extends every lease (the election timeout, as etcd)."""
        self.core.lease_extend = seconds

    # counters for /metrics (etcd's names in server/metrics.py)
    @property
    def leader_changes(self) -> int:
        return self.core.leader_changes

    @property
    def proposals_failed(self) -> int:
        return self.core.proposals_failed

    @property
    def read_indexes_failed(self) -> int:
        return self.core.read_indexes_failed

    @property
    def pending_proposals(self) -> int:
        return self.core.pending_proposals

    @property
    def events_notified(self) -> int:
        return self.machine.events_notified

    @property
    def compacted_keys(self) -> int:
        return self.machine.compacted_keys

    @property
    def stats(self) -> NodeStats:
        m = self.machine
        return NodeStats(m.batches, m.entries, m.last_batch)

    def conf_state(self) -> Any:
        return self.core.conf_state()

    def conf_state_at(self, index: int) -> Any:
        return self.core.conf_state_at(index)

    def single_voter(self) -> bool:
        return self.core.single_voter()

    def is_listed_learner(self) -> bool:
        """This member is a learner of the current configuration (cheap: asked per request)."""
        return self.core.is_listed_learner()

    def is_learner(self) -> bool:
        return self.core.is_learner()

    def status(self) -> Any:
        return self.core.raw.status()

    def _poke(self) -> None:
        self._wake.set()

    # -- inputs from the transport (trio thread) ---------------------------------------------

    def deliver(self, message: Any) -> None:
        if self._heartbeats and getattr(message, "type", None) == MessageType.HEARTBEAT_RESP:
            sent = self._heartbeats.pop(message.frm, None)
            if sent is not None and self.metrics is not None:  # etcd_network_peer_round_trip_time_seconds
                self.metrics.observe_peer_rtt(message.frm, time.perf_counter() - sent)
        self._inbox.append(message)
        self._poke()

    def report_unreachable(self, member_id: int) -> None:
        self._inbox.append(("unreachable", member_id))
        self._poke()

    def report_snapshot(self, member_id: int, failed: bool) -> None:
        self._inbox.append(("snapshot", member_id, failed))
        self._poke()

    # -- proposing ---------------------------------------------------------------------------

    def encode(self, req: raft_internal_pb2.InternalRaftRequest) -> bytes:
        """The entry bytes of a request built in the server (``securekv/node/entry.py``)."""
        return self.codec.encode(req)

    def prepare(self, field: str, payload: bytes, username: str, auth_revision: int = 0) -> Prepared:
        """A client request received as bytes made into its log entry, decoded once."""
        return self.codec.prepare(field, payload, username, auth_revision)

    def _enqueue(self, proposal: Proposal) -> None:
        try:
            self._send.send_nowait(proposal)
        except trio.WouldBlock:
            raise err(ERR_TOO_MANY_REQUESTS) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None
        self._poke()

    def submit_prepared(self, prepared: Prepared, done: Done) -> None:
        """Non-blocking propose of a prepared entry (trio thread); ``done`` gets the result."""
        if self.stopped:
            raise err(ERR_STOPPED)
        if len(prepared.data) > self.codec.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)
        request = prepared.request
        self._enqueue(Proposal(prepared.data, request, done, request.header.ID))

    async def propose(self, req: raft_internal_pb2.InternalRaftRequest) -> Any:
        """Return the ApplyResult once the entry is committed and applied; raise its EtcdError."""
        if self.stopped:
            raise err(ERR_STOPPED)
        data = self.codec.encode(req)
        waiter = _Waiter()
        try:
            await self._send.send(Proposal(data, req, waiter, req.header.ID))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None
        self._poke()
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        result = waiter.result
        if result.error is not None:
            raise result.error
        return result

    def submit(self, req: raft_internal_pb2.InternalRaftRequest, done: Done) -> None:
        """Non-blocking propose (trio thread): ``done`` gets the ApplyResult or the error."""
        if self.stopped:
            raise err(ERR_STOPPED)
        self._enqueue(Proposal(self.codec.encode(req), req, done, req.header.ID))

    def propose_nowait(self, req: raft_internal_pb2.InternalRaftRequest) -> bool:
        """Fire-and-forget internal proposal; False when the queue is full."""
        if self.stopped:
            return False
        try:
            self._enqueue(Proposal(self.codec.encode(req), req, None, req.header.ID))
        except Exception:
            return False
        return True

    def propose_raw(self, data: bytes) -> bool:
        """A node-level NORMAL entry (member attributes); best effort."""
        if self.stopped:
            return False
        self.core.propose_raw(data)
        self._poke()
        return True

    def expire_leases(self) -> int:
        """The leader's lease ticker: the core proposes a revoke per expired lease."""
        if self.stopped:
            return 0
        before = self.core.leases_expired
        self.core.expire_leases()
        self._poke()
        return self.core.leases_expired - before

    async def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change and wait until it is applied (or fails/times out)."""
        if self.stopped:
            raise err(ERR_STOPPED)
        waiter = _Waiter()
        self._run_sync(self.core.propose_conf_change(cc, waiter))
        self._poke()
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def read_index(self, callback: Callable[[BaseException | None], None]) -> None:
        """Linearizable read point: ``callback(None)`` once this member applied up to it."""
        if self.stopped:
            callback(err(ERR_STOPPED))
            return
        self._run_sync(self.core.read_index(callback))
        self._poke()

    async def wait_read_index(self) -> None:
        waiter = _Waiter()
        self.read_index(lambda e: waiter(None, e))
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def transfer_leader(self, to: int) -> None:
        self.core.transfer_leader(to)
        self._poke()

    async def hand_over_leadership(self) -> None:
        """Stopping as leader: transfer leadership to the most up-to-date voter first (etcd
        does this on a graceful stop), so clients of the others see no election gap."""
        if not self.is_leader or self.stopped:
            return
        progress = self.status().progress
        voters = self.conf_state().voters
        others = [(pr.match, mid) for mid, pr in progress.items()
                  if mid != self.member_id and not pr.is_learner and mid in voters]
        if not others:
            return
        _, target = max(others)
        log.info("stopping: transferring leadership to %x", target)
        self.transfer_leader(target)
        while self.leader == self.member_id and not self.stopped:
            await self.wait_leader_change()

    async def wait_leader_change(self) -> None:
        await self._leader_event.wait()

    async def wait_applied(self) -> None:
        await self._applied_event.wait()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._committer)
            ticker = trio.CancelScope()

            async def tick() -> None:
                with ticker:
                    await self._ticker()

            nursery.start_soon(tick)
            if self.single_voter() and not self.is_learner():
                self.core.campaign()  # the only voter: no reason to wait an election timeout
            task_status.started()
            try:
                await self._loop()
            finally:
                ticker.cancel()
                self._commit_send.close()  # the committer drains what is queued, then ends
                self._wake_committer()
                self._syncer.close()
                self._leader_event.set()  # nobody waits for a leader change of a stopped node

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_seconds)
            self._ticks += 1
            self._poke()

    async def _committer(self) -> None:
        """Apply the applied batches' rows to the backend, in order, in the background.

        Like etcd's backend (--backend-batch-interval 100 ms, batch limit 10,000), rows are
        gathered for up to ``backend_batch_interval`` or ``backend_batch_limit`` entries
        (``--backend-batch-interval``/``--backend-batch-limit``) and
        committed by one worker-thread job: the WAL is the durable copy (a crash replays what
        the backend misses), so a put costs a share of one sqlite commit instead of a whole
        one and one thread hand-off instead of two. Whoever reads the backend waits for
        :attr:`committed_index` (``wait_committed``), which asks for a commit at once."""
        try:
            async with self._commit_recv:
                closed = False
                while not closed:
                    try:
                        item = await self._commit_recv.receive()
                    except trio.EndOfChannel:
                        return
                    if item is _FLUSH:
                        continue
                    pending, last, revision = list(item[0]), item[1], item[2]
                    deadline = trio.current_time() + self.backend_batch_interval
                    while last - self.committed_index < self.backend_batch_limit and not self._flush_asked:
                        try:
                            item = self._commit_recv.receive_nowait()
                        except trio.WouldBlock:
                            # Nothing queued: sleep to the end of the batch interval unless
                            # woken for a reason to commit now (``_wake_committer``). A wake-up
                            # per Ready was a task step per lone put.
                            wake = self._gather_wake = trio.Event()
                            with trio.move_on_at(deadline) as timer:
                                await wake.wait()
                            self._gather_wake = None
                            if timer.cancelled_caught:
                                break
                            continue
                        except trio.EndOfChannel:
                            closed = True
                            break
                        if item is _FLUSH:
                            break
                        pending.extend(item[0])
                        last, revision = item[1], item[2]
                    with trio.CancelScope(shield=True):
                        async with self.backend_lock:
                            try:
                                await trio.to_thread.run_sync(self._commit_backend, pending)
                            except Exception as exc:  # the WAL still holds these entries: stop, replay at restart
                                log.critical("backend commit failed, stopping: %s", exc)
                                self.stopped = True
                                self._fatal(exc)
                                raise
                    self._flush_asked = False
                    # The backend holds these rows now: the store reads them from there.
                    self.applier.store.release(revision)
                    self.committed_index = last
                    self._committed.set()
                    self._committed = trio.Event()
        finally:
            # Whoever waits for the backend must not wait forever for a committer that is
            # gone (a stop, or a failed commit): they get ERR_STOPPED. (A leader whose disk
            # filled up once hung in its orderly stop here: a shielded wait for a commit.)
            self._committer_gone = True
            self._committed.set()
            self._poke()

    def _wake_committer(self) -> None:
        """The gathering committer commits now (a flush was asked, the batch is full, the
        channel fills up, or the node stops)."""
        if self._gather_wake is not None:
            self._gather_wake.set()

    async def wait_committed(self, index: int) -> None:
        """Until the backend holds every entry up to ``index``; ERR_STOPPED once it never will."""
        while self.committed_index < index:
            if self._committer_gone:
                raise err(ERR_STOPPED)
            if not self._flush_asked:
                self._flush_asked = True
                try:
                    self._commit_send.send_nowait(_FLUSH)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the committer has work queued (or is stopping) and commits anyway
                self._wake_committer()
            await self._committed.wait()

    @property
    def failed(self) -> bool:
        """``fail()`` was called: the member stops because of an error."""
        return self._failure is not None or self._fatal_error is not None

    def fail(self, exc: BaseException) -> None:
        """The member cannot go on (e.g. a read found the backend damaged): the loop raises
        ``exc`` at its next turn, which stops the server with it."""
        if self._failure is None:
            self._failure = exc
            log.critical("stopping: %s", exc)
            self._fatal(exc)
        self._poke()

    async def _loop(self) -> None:
        core = self.core
        self.reply_batch.own()
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._committer_gone:
                    # The backend can take no more rows: stop. Not an error of the loop's own:
                    # a failed commit raises from the committer, and a cancelled run (the
                    # committer saw the cancellation first) must end as cancelled.
                    break
                self._wake = trio.Event()
                closed = self._take_inputs()
                effects = core.poll()
                if core.ready_pending:
                    # A Ready is never left half done, yet no shielded scope per Ready (≈ 6 µs
                    # each): its one regular wait, the fsync, cannot be cancelled (SyncThread),
                    # and the rare waits of ``_run`` shield themselves.
                    await self._handle_ready(effects)
                    self.reply_batch.flush()
                    continue
                if effects:
                    await self._run(effects)
                if closed:
                    break
                if self._more_queued:  # the last turn took MAX_BATCH proposals: more may wait
                    continue
                self.reply_batch.flush()
                await self._wake.wait()
        finally:
            self.stopped = True
            self._fail_queued()
            self._recv.close()
            self.reply_batch.flush()

    def _take_inputs(self) -> bool:
        """Feed everything waiting to the core; True once the proposal channel is closed."""
        core = self.core
        closed = False
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for m in inbox:
                if isinstance(m, tuple):
                    if m[0] == "unreachable":
                        core.unreachable(m[1])
                    else:
                        core.snapshot_status(m[1], m[2])
                else:
                    try:
                        core.receive(m)
                    except Exception:
                        log.exception("raft rejected a message from %x", getattr(m, "frm", 0))
        if self._ticks:
            ticks, self._ticks = self._ticks, 0
            self._run_sync(core.tick(ticks))
        batch: list[Proposal] = []
        recv = self._recv
        while len(batch) < MAX_BATCH:
            try:
                batch.append(recv.receive_nowait())
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                closed = True
                break
        self._more_queued = len(batch) == MAX_BATCH
        if batch:
            effects = core.propose(batch)
            if effects:
                self._run_sync(effects)
        return closed

    def _fail_queued(self) -> None:
        """Shutting down: whoever still waits on a proposal gets ERR_STOPPED, not silence."""
        stopped = err(ERR_STOPPED)
        while True:
            try:
                proposal = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if proposal.token is not None:
                _safe2(proposal.token, None, stopped)
        self._run_sync(self.core.stop())

    async def _handle_ready(self, effects: list[Any]) -> None:
        """One Ready: what leads to its persistence, then the rest. Never left half done by a
        cancellation: no wait in it can be cancelled (the fsync's cannot; the others, rare,
        are shielded), so a stop is seen at the loop's next checkpoint."""
        self._fsync_seconds = 0.0
        await self._run(effects)
        await self._run(self.core.persisted())

    async def _run(self, effects: list[Any]) -> None:
        """Carry out the core's effects, in order."""
        for eff in effects:
            kind = type(eff)
            if kind is fx.Resolve:
                _safe2(eff.token, eff.result, eff.error)
            elif kind is fx.SendMessages:
                self._send_messages(eff.messages)
            elif kind is fx.Persist:
                self.reply_batch.flush()  # answers so far leave before the loop waits (every await here)
                await self._persist(eff)
            elif kind is fx.ReadDone:
                for cb in eff.tokens:
                    _safe(cb, eff.error)
            elif kind is fx.CommitRows:
                item = (eff.writes, eff.last, eff.revision)
                try:
                    try:
                        # No checkpoint while the channel has room: ``send`` yields even then,
                        # which was a task step and a scheduler turn per Raft Ready (per lone
                        # put) on the way to the answer.
                        self._commit_send.send_nowait(item)
                    except trio.WouldBlock:
                        self._wake_committer()
                        self.reply_batch.flush()
                        with trio.CancelScope(shield=True):  # (a Ready is never left half done)
                            await self._commit_send.send(item)  # the committer is behind: wait for it
                    else:
                        if self._gather_wake is not None and (
                                eff.last - self.committed_index >= self.backend_batch_limit
                                or self._commit_send.statistics().current_buffer_used >= COMMIT_QUEUE // 2):
                            self._gather_wake.set()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # shutting down: the WAL replay at the next start writes these rows
            elif kind is fx.Applied:
                self._applied(eff)
            elif kind is fx.SaveSnapshot:
                self.reply_batch.flush()
                with trio.CancelScope(shield=True):
                    await self._save_snapshot(eff)
            elif kind is fx.InstallSnapshot:
                self.reply_batch.flush()
                with trio.CancelScope(shield=True):
                    await self._install_snapshot(eff.snapshot)
            else:
                self._other(eff)

    def _run_sync(self, effects: list[Any]) -> None:
        """Effects of inputs outside a Ready: only callbacks and notices (never I/O)."""
        for eff in effects:
            kind = type(eff)
            if kind is fx.Resolve:
                _safe2(eff.token, eff.result, eff.error)
            elif kind is fx.ReadDone:
                for cb in eff.tokens:
                    _safe(cb, eff.error)
            else:
                self._other(eff)

    def _other(self, eff: Any) -> None:
        kind = type(eff)
        if kind is fx.LeaderChanged:
            self._leader_changed(eff)
        elif kind is fx.MemberChanged:
            self._member_changed(eff)
        elif kind is fx.MembersApplied:
            if self.transport is not None and self.member_id in self.membership.members:
                self._prune_transport_peers()
        elif kind is fx.SlowApply:
            self._slow_apply(eff.request, eff.seconds)
        elif kind is fx.BadEntry:
            log.error("entry at index %d: %s", eff.index, eff.reason)
        elif kind is fx.BuildSnapshot:
            self._nursery.start_soon(self._build_snapshot, eff.applied)
        else:
            raise AssertionError(f"node: unexpected effect {eff!r}")

    def _send_messages(self, messages: Any) -> None:
        if self.transport is None or not messages:
            return
        now = time.perf_counter()
        for m in messages:
            if m.type == MessageType.HEARTBEAT:
                self._heartbeats[m.to] = now
        self.transport.send(messages)

    async def _persist(self, eff: fx.Persist) -> None:
        started = time.monotonic()
        try:
            # Encoding the records is Python work and writing them a short syscall: both done
            # here, so the sync thread only fdatasyncs (one C call without the GIL) and takes
            # the GIL once per fsync. Only the fsync leaves the thread.
            entries = eff.entries
            if entries:
                self.wal_bytes += sum(len(e.data) for e in entries)
            self.wal.append(entries, hard_state=eff.hard_state)
            if eff.sync or entries:
                self.wal.write()
                await self._syncer.run(self.wal.datasync)
        except BaseException as exc:  # the log is unusable: fail everyone, stop
            log.critical("WAL write failed, stopping: %s", exc)
            self.stopped = True
            self._fatal(exc)
            raise
        self._fsync_seconds = time.monotonic() - started

    def _applied(self, eff: fx.Applied) -> None:
        self._applied_event.set()
        self._applied_event = trio.Event()
        if self.on_batch is not None and eff.changed:
            self.on_batch(eff.requests, self._fsync_seconds, eff.last)

    def _leader_changed(self, eff: fx.LeaderChanged) -> None:
        old, new = eff.old, eff.new
        if new:  # etcd's raft.node lines, which operators' leader-change alerts match
            text = f"raft.node: {self.member_id:x} elected leader {new:x} at term {eff.term}"
        else:
            text = f"raft.node: {self.member_id:x} lost leader {old:x} at term {eff.term}"
        event(log, logging.INFO, text, pkg="raft")
        self._leader_event.set()
        self._leader_event = trio.Event()
        if self.on_leader_change is not None:
            try:
                self.on_leader_change(old, new)
            except Exception:
                log.exception("leader change hook failed")

    def _member_changed(self, eff: fx.MemberChanged) -> None:
        cc = eff.change
        self._log_conf_change(cc)
        if eff.removed_self:
            log.warning("this member (%x) was removed from the cluster", self.member_id)
        if self.transport is not None:
            self._sync_transport_peer(cc)

    def _slow_apply(self, req: raft_internal_pb2.InternalRaftRequest, took: float) -> None:
        """etcd's warnOfExpensiveRequest: the request is named by type and key, never its value."""
        from securekv.client.gofmt import duration

        self.slow_applies += 1
        kind = req.WhichOneof("request") or "unknown"
        inner = getattr(req, kind, None) if kind != "unknown" else None
        key = getattr(inner, "key", b"") if inner is not None else b""
        shown = f"{kind} key:{key.decode('utf-8', 'replace')!r}" if key else kind
        expected = self.machine.warning_apply_duration
        event(log, logging.WARNING, "apply request took too long",
              capnslog=f"apply entries took too long [{duration(took)} for 1 entries]", pkg="etcdserver",
              took=duration(took), **{"expected-duration": duration(expected)},
              prefix="", request=shown, response="")

    def _log_conf_change(self, cc: ConfChange) -> None:
        """etcd's membership lines (``added member`` / ``removed member``)."""
        member = self.membership.members.get(cc.node_id)
        urls = list(member.peer_urls) if member is not None else []
        ids = {"cluster-id": f"{self.cluster_id:x}", "local-member-id": f"{self.member_id:x}"}
        if cc.type == ConfChangeType.REMOVE_NODE:
            event(log, logging.INFO, "removed member",
                  capnslog=f"removed member {cc.node_id:x} from cluster {self.cluster_id:x}", pkg="etcdserver/membership",
                  **ids, **{"removed-remote-peer-id": f"{cc.node_id:x}", "removed-remote-peer-urls": urls})
        elif cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER):
            event(log, logging.INFO, "added member",
                  capnslog=f"added member {cc.node_id:x} {urls} to cluster {self.cluster_id:x}".replace("'", ""),
                  pkg="etcdserver/membership", **ids,
                  **{"added-peer-id": f"{cc.node_id:x}", "added-peer-peer-urls": urls})

    def _sync_transport_peer(self, cc: ConfChange) -> None:
        t = self.transport
        if cc.node_id == self.member_id:
            return
        member = self.membership.members.get(cc.node_id)
        try:
            if cc.type == ConfChangeType.REMOVE_NODE:
                t.remove_peer(cc.node_id)
            elif member is not None and member.peer_urls:
                if cc.node_id in t.peers():
                    t.update_peer(cc.node_id, list(member.peer_urls))
                else:
                    t.add_peer(cc.node_id, list(member.peer_urls))
        except Exception:
            log.exception("transport update for member %x failed", cc.node_id)

    def _prune_transport_peers(self) -> None:
        """Peers guessed from --initial-cluster that the applied membership does not know
        (a joining member derives IDs from the token; later members have other IDs)."""
        try:
            for mid in set(self.transport.peers()) - set(self.membership.members):
                self.transport.remove_peer(mid)
        except Exception:
            log.exception("pruning transport peers failed")

    # -- snapshots ---------------------------------------------------------------------------

    async def _save_snapshot(self, eff: fx.SaveSnapshot) -> None:
        """Every --snapshot-count entries: backend durable at the index, marker, release WAL."""
        from securekv.storage import SnapshotMarker

        index = eff.index
        await self.wait_committed(index)
        marker = SnapshotMarker(index=index, term=eff.term, voters=eff.conf_state.voters,
                                learners=eff.conf_state.learners)

        def work() -> list[str]:
            started = time.perf_counter()
            self.backend.sync()
            marked = time.perf_counter()
            self.wal.save_snapshot(marker)
            done = time.perf_counter()
            if self.metrics is not None:
                self.metrics.snap_fsync_seconds.observe(done - marked)
                self.metrics.snap_save_seconds.observe(done - started)
            return self.wal.release_before(index)

        async with self.backend_lock:
            released = await trio.to_thread.run_sync(work)
        self.core.snapshot_saved(index, eff.term, eff.conf_state)
        log.info("snapshot at index %d; released %d WAL segment(s)", index, len(released))

    _nursery: Any = None
    on_install_snapshot: Any = None  # async (Snapshot) -> None, set by the server
    #: Called once the member cannot go on (its WAL or backend failed): the process entry point
    #: bounds how long the orderly stop may take (serve_cmd). Set by the server; None in tests.
    on_fatal: Callable[[BaseException], None] | None = None
    _fatal_error: BaseException | None = None

    def _fatal(self, exc: BaseException) -> None:
        self._fatal_error = exc  # `failed`: no shutdown checkpoint over a failed WAL or backend
        if self.on_fatal is not None:
            try:
                self.on_fatal(exc)
            except Exception:
                log.exception("fatal-error hook failed")

    async def _build_snapshot(self, target: int) -> None:
        """Snapshot data for a lagging follower: a consistent backend copy, off-thread."""
        index, data = target, None
        try:
            await self.wait_committed(target)
            async with self.backend_lock:
                index = self.committed_index
                data = await trio.to_thread.run_sync(self.backend.snapshot_bytes)
            log.info("built snapshot data at index %d (%d bytes) for a lagging follower", index, len(data))
        except Exception:
            log.exception("building snapshot data failed")
            data = None
        finally:
            self.core.snapshot_built(index, data)
            self._poke()

    async def _install_snapshot(self, snap: Any) -> None:
        """A follower received the leader's snapshot: replace the backend and rebuild state."""
        from securekv.storage import SnapshotMarker

        if self.on_install_snapshot is None:
            raise RuntimeError("cannot install a snapshot: no installer")
        await self.wait_committed(self.machine.applier.applied_index)
        meta = snap.metadata
        started = time.perf_counter()
        self.installing_snapshot = True
        async with self.backend_lock:
            try:
                await self.on_install_snapshot(snap)  # rebuilds and sets node.applier/membership
            finally:
                self.installing_snapshot = False
            if self.metrics is not None:
                self.metrics.snap_db_save_seconds.observe(time.perf_counter() - started)
            marker = SnapshotMarker(index=meta.index, term=meta.term, voters=meta.conf_state.voters,
                                    learners=meta.conf_state.learners)
            await trio.to_thread.run_sync(self.wal.save_snapshot, marker)
        self.core.snapshot_installed(self.machine.applier, self.machine.membership)
        self.committed_index = meta.index

    def _commit_backend(self, writes: list[Any]) -> None:
        started = time.perf_counter()
        self.backend.commit_all(writes)
        if self.metrics is not None:
            self.metrics.backend_commit_seconds.observe(time.perf_counter() - started)
        self.backend_size = self.backend.size_bytes()

    async def backend_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking backend call in a worker, serialised with the node's commits, after
        the backend holds every entry applied so far (so snapshots include acknowledged writes)."""
        await self.wait_committed(self.machine.applier.applied_index)
        async with self.backend_lock:
            return await trio.to_thread.run_sync(fn, *args)

    def close(self) -> None:
        self.stopped = True
        self._send.close()
        self._poke()


def _safe(cb: Callable[[BaseException | None], None], error: BaseException | None) -> None:
    try:
        cb(error)
    except Exception:
        log.exception("read completion callback failed")


def _safe2(done: Done, result: Any, error: BaseException | None) -> None:
    try:
        done(result, error)
    except Exception:  # a broken callback must not stop the node
        log.exception("proposal completion callback failed")
