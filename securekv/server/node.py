"""The node loop: Raft in the server. propose → Ready → persist (ONE fsync) → send → apply → advance.

Proposals go through a bounded channel. Each loop turn takes everything that arrived together
(proposals, peer messages, ticks, read requests), feeds it to the Raft core (``RawNode``), then
handles one ``Ready``:

1. persist: entries + hard state to the WAL with one fsync (worker thread) — group commit;
2. send the Ready's messages through the peer transport;
3. apply committed entries with the deterministic Applier (conf changes to Raft and to the
   membership), notify the watch hub, wake the proposers; release ReadIndex waiters;
4. hand the applied rows to the committer task (sqlite, pipelined), ``advance()``.

On one member the core commits at once, so a put costs one WAL fsync as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import attrs
import trio

from securekv.proto import raft_internal_pb2
from securekv.raft import ConfChange, ConfChangeType, Config as RaftConfig, EntryType, RawNode, Role
from securekv.raft.types import MessageType
from securekv.raft.errors import ProposalDropped
from securekv.rpctypes import (
    ERR_NO_LEADER,
    ERR_REQUEST_TOO_LARGE,
    ERR_STOPPED,
    ERR_TIMEOUT,
    ERR_TOO_MANY_REQUESTS,
    EtcdError,
    err,
)
from securekv.server.cluster import PUBLISH_PREFIX, META_KEY, Membership
from securekv.server.etcdlog import event

log = logging.getLogger(__name__)

MAX_BATCH = 512
PROPOSAL_QUEUE = 4096
BACKEND_BATCH_INTERVAL = 0.1  # seconds applied rows may wait for their backend commit (etcd: 100 ms)
BACKEND_BATCH_LIMIT = 10_000  # entries that trigger a backend commit at once (etcd: 10,000)
_FLUSH: Any = ((), 0)  # committer marker: commit what is pending now (someone reads the backend)
CATCHUP_ENTRIES = 5000  # entries kept in memory behind a snapshot so slow followers catch up from the log
_EMPTY = raft_internal_pb2.InternalRaftRequest()


# Completion callback, called once in the trio thread: (ApplyResult or None, error or None).
Done = Callable[[Any, "BaseException | None"], None]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int) -> bytes:
    return _varint((number << 3) | 2)  # length-delimited field


_FIELDS = raft_internal_pb2.InternalRaftRequest.DESCRIPTOR.fields_by_name
_HEADER_TAG = _tag(_FIELDS["header"].number)
_ENTRY_TAGS = {name: _tag(f.number) for name, f in _FIELDS.items() if name != "header"}


@attrs.frozen
class Prepared:
    """A client request already in its log-entry form: ``data`` is what goes into the log and
    ``request`` was decoded from exactly those bytes (once), so the leader applies what its
    followers apply. ``body`` is the request inside (e.g. the PutRequest)."""

    data: bytes
    request: raft_internal_pb2.InternalRaftRequest
    body: Any
    field: str = ""  # the InternalRaftRequest field the body travels in
    payload: bytes = b""  # the body's bytes as received (to prepare it again with a new header)


def peek_header(data: bytes) -> tuple[int, int] | None:
    """(member_id, ID) of an entry written by :meth:`Node.encode`/:meth:`Node.prepare` (the
    header leads), without decoding the request; None for other entries."""
    if not data.startswith(_HEADER_TAG):
        return None
    pos, length, shift = len(_HEADER_TAG), 0, 0
    while True:
        if pos >= len(data):
            return None
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    try:
        header = raft_internal_pb2.RequestHeader.FromString(data[pos:pos + length])
    except Exception:
        return None
    return header.member_id, header.ID


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
    """Owns the Raft node, WAL, backend, applier and hub for the life of the server (trio thread)."""

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
        import random

        from securekv.raft import ConfState
        from securekv.storage.raftstorage import RaftStorage

        self.wal = wal
        self.backend = backend
        self.applier = applier
        self.hub = hub
        self.member_id = member_id
        self.max_request_bytes = max_request_bytes
        self.to_write_batch = to_write_batch
        self.on_batch = on_batch
        self.on_leader_change = on_leader_change
        self.clock = clock
        self.snapshot_count = snapshot_count
        self.tick_seconds = tick_seconds
        self.request_timeout = request_timeout
        self.membership = membership if membership is not None else Membership()
        if raft_storage is None:  # a bare node (tests): one voter, empty log
            raft_storage = RaftStorage(ConfState(voters=(member_id,)))
        self.storage = raft_storage
        self.storage.request_snapshot = self._request_snapshot
        marker = wal.snapshot
        self.snapshot_index = max(marker.index if marker is not None else 0, 0)
        applied = raft_applied if raft_applied is not None else self.storage.first_index() - 1
        self.raw = RawNode(RaftConfig(
            id=member_id, storage=self.storage, rng=rng or random.Random(),
            election_tick=election_tick, heartbeat_tick=1, applied=applied,
            max_size_per_msg=1 << 20, max_inflight_msgs=256, check_quorum=True, pre_vote=pre_vote,
        ))
        self._initial_term = term
        self.cluster_id = 0  # for log lines only (set by the server)
        self.leader_changes = 0  # etcd_server_leader_changes_seen_total
        self.slow_applies = 0  # etcd_server_slow_apply_total
        self.proposals_failed = 0  # etcd_server_proposals_failed_total
        self.read_indexes_failed = 0  # etcd_server_read_indexes_failed_total
        self.events_notified = 0  # etcd_debugging_mvcc_events_total
        self.compacted_keys = 0  # etcd_debugging_mvcc_db_compaction_keys_total
        self.wal_bytes = 0  # entry bytes appended to the WAL (etcd_disk_wal_write_bytes_total)
        self.installing_snapshot = False
        self._heartbeats: dict[int, float] = {}  # peer -> when the unanswered heartbeat was sent
        self.metrics: Any = None  # ServerMetrics: histograms observed where the work happens
        self.warning_apply_duration = 0.1  # --experimental-warning-apply-duration
        self.backend_batch_interval = BACKEND_BATCH_INTERVAL  # --backend-batch-interval
        self.backend_batch_limit = BACKEND_BATCH_LIMIT  # --backend-batch-limit
        self.transport: Any = None
        self.committed_index = applier.applied_index  # highest index whose rows are in the backend
        self._committed = trio.Event()
        self._commit_send, self._commit_recv = trio.open_memory_channel[tuple[list[Any], int]](64)
        self._flush_asked = False
        self.backend_lock = trio.Lock()  # backend is not thread-safe: one worker call at a time
        self._send, self._recv = trio.open_memory_channel[tuple[bytes, raft_internal_pb2.InternalRaftRequest, Done | None]](
            PROPOSAL_QUEUE
        )
        self._next_id = ((member_id & 0xFFFF) << 48) | ((int(time.time() * 1000) & 0xFFFFFFFFFF) << 8)
        self._waiters: dict[int, tuple[Any, Done | None, float]] = {}
        self._inbox: list[Any] = []
        self._held: list[bytes] = []
        self._ticks = 0
        self._wake = trio.Event()
        self._reads_new: list[Callable[[BaseException | None], None]] = []
        self._reads_sent: dict[bytes, list[Callable[[BaseException | None], None]]] = {}
        self._reads_ready: list[tuple[int, list[Callable[[BaseException | None], None]]]] = []
        self._read_seq = 0
        self._conf_waiters: dict[bytes, tuple[Done, float]] = {}
        self._conf_applied: list[Done] = []  # conf-change waiters to wake once Raft advanced
        self._conf_history: list[tuple[int, Any]] = []  # (index, ConfState) of applied conf changes
        self._snap_building = False
        self._applied_event = trio.Event()
        self._leader_event = trio.Event()
        self.leader = 0
        self.role = Role.FOLLOWER
        self.stopped = False
        self.stats = NodeStats()
        self._voters_seen: frozenset[int] | None = None
        self._single_voter = False

    # -- state -------------------------------------------------------------------------------

    @property
    def term(self) -> int:
        return max(self.raw.raft.term, self._initial_term)

    @property
    def last_index(self) -> int:
        return self.raw.raft.log.last_index()

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    @property
    def commit_index(self) -> int:
        return self.raw.raft.log.committed

    @property
    def is_leader(self) -> bool:
        return self.leader == self.member_id

    def conf_state(self) -> Any:
        return self.raw.raft.trk.conf_state()

    def single_voter(self) -> bool:
        """This member is the only voter (asked on every read: cached per configuration; the
        tracker replaces its voter set whenever the configuration changes)."""
        voters = self.raw.raft.trk.voters
        if voters is not self._voters_seen:
            self._voters_seen = voters
            self._single_voter = voters == frozenset((self.member_id,))
        return self._single_voter

    def is_listed_learner(self) -> bool:
        """This member is a learner of the current configuration (cheap: asked per request)."""
        return self.member_id in self.raw.raft.trk.learners

    def is_learner(self) -> bool:
        """Not (yet) a voter: a learner, or a joining member that has not applied its own
        addition yet (it cannot vote either)."""
        return self.member_id not in self.conf_state().voters

    def status(self) -> Any:
        return self.raw.status()

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
        """The entry bytes of a request built in the server: the header first (so the leader
        finds its waiter without decoding, :func:`peek_header`), then the request."""
        header = req.header
        header.member_id = self.member_id
        header.ID = self._next_id
        self._next_id += 1
        head = header.SerializeToString()
        req.ClearField("header")
        body = req.SerializeToString()
        req.header.ParseFromString(head)
        data = b"".join((_HEADER_TAG, _varint(len(head)), head, body))
        if len(data) > self.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)
        return data

    def prepare(self, field: str, payload: bytes, username: str, auth_revision: int = 0) -> Prepared:
        """A client request received as bytes (``payload``, e.g. a PutRequest) made into its
        log entry without re-encoding it, then decoded once (raises protobuf's DecodeError
        for a malformed payload). The header carries who asked and the auth revision they
        were authorised at (checked again when applied). The size limit is checked when it
        is submitted."""
        head = raft_internal_pb2.RequestHeader(ID=self._next_id, username=username, auth_revision=auth_revision,
                                               member_id=self.member_id).SerializeToString()
        self._next_id += 1
        data = b"".join((_HEADER_TAG, _varint(len(head)), head, _ENTRY_TAGS[field], _varint(len(payload)), payload))
        req = raft_internal_pb2.InternalRaftRequest.FromString(data)
        return Prepared(data, req, getattr(req, field), field, payload)

    def submit_prepared(self, prepared: Prepared, done: Done) -> None:
        """Non-blocking propose of a prepared entry (trio thread); ``done`` gets the result."""
        if self.stopped:
            raise err(ERR_STOPPED)
        if len(prepared.data) > self.max_request_bytes:
            raise err(ERR_REQUEST_TOO_LARGE)
        try:
            self._send.send_nowait((prepared.data, prepared.request, done))
        except trio.WouldBlock:
            raise err(ERR_TOO_MANY_REQUESTS) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None
        self._poke()

    async def propose(self, req: raft_internal_pb2.InternalRaftRequest) -> Any:
        """Return the ApplyResult once the entry is committed and applied; raise its EtcdError."""
        if self.stopped:
            raise err(ERR_STOPPED)
        data = self.encode(req)
        waiter = _Waiter()
        try:
            await self._send.send((data, req, waiter))
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
        data = self.encode(req)
        try:
            self._send.send_nowait((data, req, done))
        except trio.WouldBlock:
            raise err(ERR_TOO_MANY_REQUESTS) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise err(ERR_STOPPED) from None
        self._poke()

    def propose_nowait(self, req: raft_internal_pb2.InternalRaftRequest) -> bool:
        """Fire-and-forget internal proposal (lease expiry); False when the queue is full."""
        if self.stopped:
            return False
        try:
            self._send.send_nowait((self.encode(req), req, None))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._poke()
        return True

    def propose_raw(self, data: bytes) -> bool:
        """A node-level NORMAL entry (member attributes); best effort."""
        if self.stopped:
            return False
        try:
            self.raw.propose(data)
        except ProposalDropped:
            return False
        self._poke()
        return True

    async def propose_conf_change(self, cc: ConfChange) -> None:
        """Propose a membership change and wait until it is applied (or fails/times out)."""
        if self.stopped:
            raise err(ERR_STOPPED)
        key = cc.encode()
        waiter = _Waiter()
        if self.raw.raft.lead == 0:
            raise err(ERR_NO_LEADER)
        try:
            self.raw.propose_conf_change(cc)
        except ProposalDropped as exc:
            if "no leader" in str(exc):
                raise err(ERR_NO_LEADER) from None
            raise err(ERR_TIMEOUT) from None
        self._conf_waiters[key] = (waiter, self.clock() + self.request_timeout)
        self._poke()
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def read_index(self, callback: Callable[[BaseException | None], None]) -> None:
        """Linearizable read point: ``callback(None)`` once this member applied up to it."""
        if self.stopped:
            callback(err(ERR_STOPPED))
            return
        self._reads_new.append(callback)
        self._poke()

    async def wait_read_index(self) -> None:
        waiter = _Waiter()
        self.read_index(lambda e: waiter(None, e))
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error

    def transfer_leader(self, to: int) -> None:
        self.raw.transfer_leader(to)
        self._poke()

    async def hand_over_leadership(self) -> None:
        """Stopping as leader: transfer leadership to the most up-to-date voter first (etcd
        does this on a graceful stop), so clients of the others see no election gap."""
        if not self.is_leader or self.stopped:
            return
        progress = self.status().progress
        others = [(pr.match, mid) for mid, pr in progress.items()
                  if mid != self.member_id and not pr.is_learner and mid in self.conf_state().voters]
        if not others:
            return
        _, target = max(others)
        log.info("stopping: transferring leadership to %x", target)
        self.transfer_leader(target)
        while self.leader == self.member_id:
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
                self.raw.campaign()  # the only voter: no reason to wait an election timeout
            task_status.started()
            try:
                await self._loop()
            finally:
                ticker.cancel()
                self._commit_send.close()  # the committer drains what is queued, then ends

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
        async with self._commit_recv:
            closed = False
            while not closed:
                try:
                    item = await self._commit_recv.receive()
                except trio.EndOfChannel:
                    return
                if item is _FLUSH:
                    continue
                pending, last = list(item[0]), item[1]
                with trio.move_on_after(self.backend_batch_interval):
                    while last - self.committed_index < self.backend_batch_limit and not self._flush_asked:
                        try:
                            item = await self._commit_recv.receive()
                        except trio.EndOfChannel:
                            closed = True
                            break
                        if item is _FLUSH:
                            break
                        pending.extend(item[0])
                        last = item[1]
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
                self.committed_index = last
                self._committed.set()
                self._committed = trio.Event()

    async def wait_committed(self, index: int) -> None:
        while self.committed_index < index:
            if not self._flush_asked:
                self._flush_asked = True
                try:
                    self._commit_send.send_nowait(_FLUSH)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # the committer has work queued (or is stopping) and commits anyway
            await self._committed.wait()

    async def _loop(self) -> None:
        try:
            while True:
                self._wake = trio.Event()
                closed = self._take_inputs()
                if self.raw.has_ready():
                    with trio.CancelScope(shield=True):
                        await self._handle_ready()
                    continue
                if closed:
                    break
                if self._recv_pending():
                    continue
                await self._wake.wait()
        finally:
            self.stopped = True
            self._fail_queued()
            self._recv.close()

    def _recv_pending(self) -> bool:
        return self._recv.statistics().current_buffer_used > 0

    def _take_inputs(self) -> bool:
        """Feed everything waiting to the core; True once the proposal channel is closed."""
        raw = self.raw
        closed = False
        inbox, self._inbox = self._inbox, []
        for m in inbox:
            if isinstance(m, tuple):
                if m[0] == "unreachable":
                    raw.report_unreachable(m[1])
                else:
                    raw.report_snapshot(m[1], m[2])
            else:
                try:
                    raw.step(m)
                except Exception:
                    log.exception("raft rejected a message from %x", getattr(m, "frm", 0))
        ticks, self._ticks = self._ticks, 0
        for _ in range(min(ticks, 100)):
            raw.tick()
        if ticks:
            self._expire_waiters()
            if self._held and not self._waiters:
                self._held = []
        batch: list[tuple[bytes, Any, Done | None]] = []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._recv.receive_nowait())
            except trio.WouldBlock:
                break
            except (trio.EndOfChannel, trio.ClosedResourceError):
                closed = True
                break
        if self._held and raw.raft.lead != 0:
            held, self._held = self._held, []
            try:
                raw.propose_many(held)
            except ProposalDropped:
                pass  # their waiters time out
        if batch:
            self._propose_batch(batch)
        if self._reads_new:
            reads, self._reads_new = self._reads_new, []
            self._read_seq += 1
            # Unique across members: the leader keys pending reads by context.
            ctx = self.member_id.to_bytes(8, "big") + self._read_seq.to_bytes(8, "big")
            try:
                if raw.raft.lead == 0:
                    raise ProposalDropped("no leader")
                raw.read_index(ctx)
                self._reads_sent[ctx] = reads
            except ProposalDropped:
                self.read_indexes_failed += len(reads)
                for cb in reads:
                    _safe(cb, err(ERR_NO_LEADER))
        return closed

    def _propose_batch(self, batch: list[tuple[bytes, Any, Done | None]]) -> None:
        deadline = self.clock() + self.request_timeout
        for _, req, done in batch:
            self._waiters[req.header.ID] = (req, done, deadline)
        if self.raw.raft.lead == 0:
            # No leader (an election is running): hold them until one appears or they time out.
            self._held.extend(data for data, _, _ in batch)
            return
        try:
            self.raw.propose_many([data for data, _, _ in batch])
        except ProposalDropped as exc:
            error = err(ERR_NO_LEADER) if "no leader" in str(exc) else err(ERR_TIMEOUT)
            self.proposals_failed += len(batch)
            for _, req, done in batch:
                self._waiters.pop(req.header.ID, None)
                if done is not None:
                    _safe2(done, None, error)

    def _expire_waiters(self) -> None:
        now = self.clock()
        if self._waiters:
            late = [k for k, (_, _, d) in self._waiters.items() if d < now]
            self.proposals_failed += len(late)
            for k in late:
                _, done, _ = self._waiters.pop(k)
                if done is not None:
                    _safe2(done, None, err(ERR_TIMEOUT))
        if self._conf_waiters:
            late_cc = [k for k, (_, d) in self._conf_waiters.items() if d < now]
            for k in late_cc:
                done, _ = self._conf_waiters.pop(k)
                _safe2(done, None, err(ERR_TIMEOUT))

    def _fail_queued(self) -> None:
        """Shutting down: whoever still waits on a proposal gets ERR_STOPPED, not silence."""
        while True:
            try:
                _, _, done = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if done is not None:
                _safe2(done, None, err(ERR_STOPPED))
        waiters, self._waiters = self._waiters, {}
        for _, done, _ in waiters.values():
            if done is not None:
                _safe2(done, None, err(ERR_STOPPED))
        for done, _ in self._conf_waiters.values():
            _safe2(done, None, err(ERR_STOPPED))
        self._conf_waiters = {}
        applied, self._conf_applied = self._conf_applied, []
        for done in applied:  # applied before the loop stopped: they succeeded
            _safe2(done, None, None)
        for reads in list(self._reads_sent.values()) + [cbs for _, cbs in self._reads_ready] + [self._reads_new]:
            for cb in reads:
                _safe(cb, err(ERR_STOPPED))
        self._reads_sent, self._reads_ready, self._reads_new = {}, [], []

    async def _handle_ready(self) -> None:
        raw = self.raw
        rd = raw.ready()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state)
        # 1. persist (one fsync), then mirror into the in-memory Raft storage
        fsync_seconds = 0.0
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            await self._install_snapshot(rd.snapshot)
        if rd.entries or rd.hard_state is not None:
            started = time.monotonic()
            try:
                # Encoding the records is Python work: done here, so the worker thread only
                # writes and fsyncs (C calls without the GIL) and never competes with this
                # thread for it. Only the fsync leaves the thread.
                self.wal_bytes += sum(len(e.data) for e in rd.entries)
                self.wal.append(rd.entries, hard_state=rd.hard_state)
                if rd.must_sync or rd.entries:
                    await trio.to_thread.run_sync(self.wal.sync)
            except BaseException as exc:  # the log is unusable: fail everyone, stop
                log.critical("WAL write failed, stopping: %s", exc)
                self.stopped = True
                self._fatal(exc)
                raise
            fsync_seconds = time.monotonic() - started
            if rd.entries:
                self.storage.append(list(rd.entries))
            if rd.hard_state is not None:
                self.storage.set_hard_state(rd.hard_state)
        # 2. send
        if rd.messages and self.transport is not None:
            now = time.perf_counter()
            for m in rd.messages:
                if m.type == MessageType.HEARTBEAT:
                    self._heartbeats[m.to] = now
            self.transport.send(rd.messages)
        # 3. apply
        for rs in rd.read_states:
            reads = self._reads_sent.pop(rs.request_ctx, None)
            if reads:
                self._reads_ready.append((rs.index, reads))
        if rd.committed_entries:
            await self._apply(rd.committed_entries, fsync_seconds)
        if self._reads_ready:
            applied = self.applier.applied_index
            keep = []
            for index, reads in self._reads_ready:
                if index <= applied:
                    for cb in reads:
                        _safe(cb, None)
                else:
                    keep.append((index, reads))
            self._reads_ready = keep
        # 4. advance
        raw.advance()
        if self._conf_applied:
            applied, self._conf_applied = self._conf_applied, []
            for done in applied:
                _safe2(done, None, None)

    def _on_soft_state(self, soft: Any) -> None:
        old = self.leader
        self.leader = soft.leader
        self.role = soft.role
        if old != soft.leader:
            term = self.raw.raft.term
            if soft.leader:  # etcd's raft.node lines, which operators' leader-change alerts match
                text = f"raft.node: {self.member_id:x} elected leader {soft.leader:x} at term {term}"
            else:
                text = f"raft.node: {self.member_id:x} lost leader {old:x} at term {term}"
            event(log, logging.INFO, text, pkg="raft")
            self.leader_changes += 1 if soft.leader else 0
            if soft.leader == 0 or self._reads_sent:
                # Reads sent to a leader that is gone will never be answered: fail them fast.
                pending, self._reads_sent = self._reads_sent, {}
                for reads in pending.values():
                    self.read_indexes_failed += len(reads)
                    for cb in reads:
                        _safe(cb, err(ERR_NO_LEADER))
            self._leader_event.set()
            self._leader_event = trio.Event()
            if self.on_leader_change is not None:
                try:
                    self.on_leader_change(old, soft.leader)
                except Exception:
                    log.exception("leader change hook failed")

    async def _apply(self, entries: Any, fsync_seconds: float) -> None:
        now = self.clock()
        applier = self.applier
        results = []
        members_changed = False
        requests = 0
        dones: list[tuple[Done, Any, BaseException | None]] = []
        for entry in entries:
            index = entry.index
            if entry.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(entry.data)
                cs = self.raw.apply_conf_change(cc)
                self._conf_history.append((index, cs))
                if index > applier.applied_index:
                    self.membership.apply_conf_change(cc)
                    members_changed = True
                    results.append(applier.apply(index, _EMPTY, now=now))
                    self._log_conf_change(cc)
                    if cc.type == ConfChangeType.REMOVE_NODE and cc.node_id == self.member_id:
                        log.warning("this member (%x) was removed from the cluster", self.member_id)
                    if self.transport is not None:
                        self._sync_transport_peer(cc)
                if self.raw.raft.lead == 0 and tuple(cs.voters) == (self.member_id,):
                    self.raw.campaign()  # now the only voter (e.g. --force-new-cluster)
                waiter = self._conf_waiters.pop(bytes(entry.data), None)
                if waiter is not None:
                    # Woken after raw.advance(): until Raft knows the change is applied it drops
                    # the next conf change ("already pending"), and the waiter's task may run at
                    # any checkpoint of this batch (the committer hand-off below is one).
                    self._conf_applied.append(waiter[0])
                continue
            if index <= applier.applied_index:
                continue  # replay of an entry the backend already holds
            data = entry.data
            if not data:
                results.append(applier.apply(index, _EMPTY, now=now))
                continue
            if data.startswith(PUBLISH_PREFIX):
                try:
                    self.membership.apply_publish(data)
                    members_changed = True
                except Exception:
                    log.exception("bad member attribute entry at %d", index)
                results.append(applier.apply(index, _EMPTY, now=now))
                continue
            requests += 1
            # Our own proposal: apply the request decoded from these very bytes when it was
            # prepared (no second decode); anything else (followers, replay) is decoded here.
            waiter = None
            ids = peek_header(data)
            if ids is not None and ids[0] == self.member_id:
                waiter = self._waiters.pop(ids[1], None)
            if waiter is not None:
                req = waiter[0]
            else:
                req = raft_internal_pb2.InternalRaftRequest()
                try:
                    req.ParseFromString(data)
                except Exception:
                    log.error("undecodable entry at index %d skipped", index)
                    results.append(applier.apply(index, _EMPTY, now=now))
                    continue
                if req.header.member_id == self.member_id:
                    waiter = self._waiters.pop(req.header.ID, None)
            try:
                started = time.perf_counter()
                result = applier.apply(index, req, now=now)
                took = time.perf_counter() - started
                if took > self.warning_apply_duration:
                    self._slow_apply(req, took)
            except EtcdError as exc:  # not expected from the applier, but never kill the loop
                result = _Failed(index, exc)
                results.append(result)
                if waiter is not None and waiter[1] is not None:
                    dones.append((waiter[1], None, exc))
                continue
            results.append(result)
            # Tell the hub right away (same synchronous step as the apply), so no stream can
            # read history between the store changing and the hub knowing.
            if result.error is None and not result.skipped:
                if req.WhichOneof("request") == "compaction":
                    self.hub.compact(req.compaction.revision)
                if result.events:
                    self.hub.notify(result.revision, list(result.events))
                    self.events_notified += len(result.events)
            if waiter is not None and waiter[1] is not None:
                dones.append((waiter[1], result, None))
        if members_changed and self.transport is not None and self.member_id in self.membership.members:
            self._prune_transport_peers()
        for done, result, error in dones:
            _safe2(done, result, error)
        self._applied_event.set()
        self._applied_event = trio.Event()
        if not results:
            return
        last = entries[-1].index
        writes = self.to_write_batch(results, last)
        self.compacted_keys += sum(len(getattr(w, "deletes", ())) for w in writes)
        if members_changed and writes:
            writes[-1].meta[META_KEY] = self.membership.encode()
        # Acknowledged above: the entries are durable in the WAL and applied in memory. The
        # committer task writes the rows while this loop handles the next Ready (pipelining).
        try:
            await self._commit_send.send((writes, last))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # shutting down: the WAL replay at the next start writes these rows
        if last - self.snapshot_index >= self.snapshot_count:
            await self._snapshot(last)
        if requests:
            self.stats.batches += 1
            self.stats.entries += requests
            self.stats.last_batch = requests
        if self.on_batch is not None:
            self.on_batch(requests, fsync_seconds, last)

    def _slow_apply(self, req: raft_internal_pb2.InternalRaftRequest, took: float) -> None:
        """etcd's warnOfExpensiveRequest: the request is named by type and key, never its value."""
        from securekv.client.gofmt import duration

        self.slow_applies += 1
        kind = req.WhichOneof("request") or "unknown"
        inner = getattr(req, kind, None) if kind != "unknown" else None
        key = getattr(inner, "key", b"") if inner is not None else b""
        shown = f"{kind} key:{key.decode('utf-8', 'replace')!r}" if key else kind
        event(log, logging.WARNING, "apply request took too long",
              capnslog=f"apply entries took too long [{duration(took)} for 1 entries]", pkg="etcdserver",
              took=duration(took), **{"expected-duration": duration(self.warning_apply_duration)},
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

    def conf_state_at(self, index: int) -> Any:
        cs = self.storage.marker_conf_state()
        best = None
        for i, state in self._conf_history:
            if i <= index:
                best = state
        if best is not None:
            return best
        return cs if cs is not None else self.storage.initial_state()[1]

    async def _snapshot(self, index: int) -> None:
        """Every --snapshot-count entries: backend durable at ``index``, marker, release WAL."""
        from securekv.storage import SnapshotMarker

        await self.wait_committed(index)
        term = self.storage.term(index)
        cs = self.conf_state_at(index)
        marker = SnapshotMarker(index=index, term=term, voters=cs.voters, learners=cs.learners)

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
        self.snapshot_index = index
        self.storage.set_marker(index, term, cs)
        self.storage.compact_to(index - CATCHUP_ENTRIES)
        self._conf_history = [(i, s) for i, s in self._conf_history if i >= index] or self._conf_history[-1:]
        log.info("snapshot at index %d; released %d WAL segment(s)", index, len(released))

    _nursery: Any = None
    on_install_snapshot: Any = None  # async (Snapshot) -> None, set by the server
    #: Called once the member cannot go on (its WAL or backend failed): the process entry point
    #: bounds how long the orderly stop may take (serve_cmd). Set by the server; None in tests.
    on_fatal: Callable[[BaseException], None] | None = None

    def _fatal(self, exc: BaseException) -> None:
        if self.on_fatal is not None:
            try:
                self.on_fatal(exc)
            except Exception:
                log.exception("fatal-error hook failed")

    def _request_snapshot(self) -> None:
        """The core needs snapshot data for a follower: build a backend copy off-thread."""
        if self._snap_building or self._nursery is None:
            return
        self._snap_building = True
        self._nursery.start_soon(self._build_snapshot)

    async def _build_snapshot(self) -> None:
        from securekv.raft import Snapshot, SnapshotMetadata

        try:
            target = self.applier.applied_index
            await self.wait_committed(target)
            async with self.backend_lock:
                index = self.committed_index
                data = await trio.to_thread.run_sync(self.backend.snapshot_bytes)
            term = self.storage.term(index)
            cs = self.conf_state_at(index)
            self.storage.cached = Snapshot(SnapshotMetadata(index, term, cs), bytes(data))
            log.info("built snapshot data at index %d (%d bytes) for a lagging follower", index, len(data))
        except Exception:
            log.exception("building snapshot data failed")
        finally:
            self._snap_building = False
            self._poke()

    async def _install_snapshot(self, snap: Any) -> None:
        """A follower received the leader's snapshot: replace the backend and rebuild state."""
        from securekv.storage import SnapshotMarker

        if self.on_install_snapshot is None:
            raise RuntimeError("cannot install a snapshot: no installer")
        await self.wait_committed(self.applier.applied_index)
        meta = snap.metadata
        started = time.perf_counter()
        self.installing_snapshot = True
        async with self.backend_lock:
            try:
                await self.on_install_snapshot(snap)
            finally:
                self.installing_snapshot = False
            if self.metrics is not None:
                self.metrics.snap_db_save_seconds.observe(time.perf_counter() - started)
            marker = SnapshotMarker(index=meta.index, term=meta.term, voters=meta.conf_state.voters,
                                    learners=meta.conf_state.learners)
            await trio.to_thread.run_sync(self.wal.save_snapshot, marker)
        self.storage.apply_snapshot(snap)
        self.committed_index = meta.index
        self.snapshot_index = meta.index
        self._conf_history = [(meta.index, meta.conf_state)]

    def _commit_backend(self, writes: list[Any]) -> None:
        started = time.perf_counter()
        for wb in writes:
            self.backend.commit(wb)
        if self.metrics is not None:
            self.metrics.backend_commit_seconds.observe(time.perf_counter() - started)

    async def backend_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking backend call in a worker, serialised with the node's commits, after
        the backend holds every entry applied so far (so snapshots include acknowledged writes)."""
        await self.wait_committed(self.applier.applied_index)
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
