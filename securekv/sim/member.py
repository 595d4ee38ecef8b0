"""One simulated member: the server's node core, state machine and request path on a simulated
disk and clock.

What runs here is the server's code: the :class:`~securekv.node.NodeCore` (proposals and their
callers, ReadIndex reads, conf changes, lease expiry, snapshot decisions, the Ready step), the
:class:`~securekv.node.ServerMachine` (the deterministic applier over the MVCC store and the
lessor, the watch hub, the membership), the entry codec, the request validation of the hot
path (``securekv/mvcc/validate.py``), and the restart path — the Raft storage rebuilt from the
WAL image (``RaftStorage.from_wal``) and the state machine from the backend
(``persist.restore_machine``). Only the I/O is simulated: ``securekv/sim/disk.py``.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from securekv.lease import min_lease_ttl
from securekv.mvcc import (MVCCStore, is_txn_readonly, prefix_end, validate_delete_range, validate_put,
                           validate_range, validate_txn)
from securekv.node import EntryCodec, NodeCore, ServerMachine
from securekv.node.inputs import Proposal
from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.raft import Config, ConfChange, ConfState, Entry, MemoryStorage
from securekv.rpctypes import ERR_LEARNER_NOT_SUPPORTED, err
from securekv.server.persist import restore_machine, to_write_batches
from securekv.storage.raftstorage import RaftStorage
from securekv.testing.raft_invariants import SafetyMonitor
from securekv.watch import WatchHub
from securekv.watch.hub import HubConfig

from .disk import SimDisk

#: One virtual time unit is 10 ms of a nominal clock: the heartbeat (one tick) is 10 units.
SECONDS_PER_UNIT = 0.01
HEARTBEAT_MS = 100
MAX_TXN_OPS = 128


class SimMachine(ServerMachine):
    """The server's machine, reporting every entry it applies to the safety monitor."""

    def __init__(self, monitor: SafetyMonitor, node: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.monitor = monitor
        self.node = node

    def apply_entry(self, entry: Entry, request: Any) -> tuple[Any, BaseException | None]:
        self.monitor.observe_applied(self.node, entry)
        return super().apply_entry(entry, request)

    def apply_conf_change(self, entry: Entry, change: ConfChange) -> None:
        self.monitor.observe_applied(self.node, entry)
        super().apply_conf_change(entry, change)


class SimNode:
    """A member: its disk survives crashes; everything else is rebuilt by :meth:`boot`."""

    def __init__(self, nid: int, log: MemoryStorage, monitor: SafetyMonitor, rng: random.Random,
                 period: int, nominal_tick: int) -> None:
        self.id = nid
        self.disk = SimDisk(nid, log, monitor)
        self.monitor = monitor
        self.rng = rng
        self.period = period
        self.base_period = period
        self.nominal_tick = nominal_tick
        self.epoch = 0
        self.alive = False
        self.removed = False
        self.crash_stage: int | None = None
        # the local clock: seconds, running at nominal_tick/period of virtual time
        self._clock_base = 0.0
        self._time_base = 0
        self.now = 0  # the world's virtual time, kept current by the world
        self.core: NodeCore = None  # type: ignore[assignment]
        self.machine: SimMachine = None  # type: ignore[assignment]
        self.store: MVCCStore = None  # type: ignore[assignment]
        self.hub: WatchHub = None  # type: ignore[assignment]
        self.codec: EntryCodec = None  # type: ignore[assignment]
        self.queue: list[Proposal] = []  # proposals waiting for the next loop turn
        self.commits: list[tuple[list[Any], int]] = []  # rows the committer has not written yet
        self.tokens: dict[int, Any] = {}  # outstanding client operations (abandoned at a crash)

    # -- the clock ---------------------------------------------------------------------------
    def clock(self) -> float:
        """This member's local time in seconds (skewed: it runs at its own tick rate)."""
        rate = self.nominal_tick / self.period
        return self._clock_base + (self.now - self._time_base) * rate * SECONDS_PER_UNIT

    def set_period(self, period: int) -> None:
        self._clock_base = self.clock()
        self._time_base = self.now
        self.period = period

    # -- boot: the server's restart path -----------------------------------------------------
    def boot(self, config: Config, *, send_before_persist: bool, snapshot_count: int, catchup: int,
             request_timeout: float, lease_extend: float, first_id: int) -> None:
        disk = self.disk
        image = disk.wal.image()
        storage = RaftStorage.from_wal(image, ConfState())
        backend = disk.backend
        compact = backend.get_meta("compact_revision")
        self.store = MVCCStore.restore(backend.iter_revisions(),
                                       compact_revision=int(compact) if compact is not None else -1)
        _lessor, applier, membership = restore_machine(
            backend, self.store, min_ttl=min_lease_ttl(HEARTBEAT_MS, HEARTBEAT_MS * config.election_tick),
            quota_bytes=0, now=self.clock())
        self.hub = WatchHub(lambda *a, **kw: self.store.events_between(*a, **kw),
                            revision=self.store.current_revision, compact_revision=max(self.store.compact_revision, 0),
                            config=HubConfig(catchup_revisions=16))
        self.machine = SimMachine(self.monitor, self.id, applier=applier, hub=self.hub, membership=membership,
                                  member_id=self.id, to_write_batch=to_write_batches)
        self.codec = EntryCodec(self.id, 1 << 20, first_id)
        marker = image.snapshot
        self.core = NodeCore(
            attrs_evolve(config, storage=storage, applied=storage.first_index() - 1), self.machine,
            clock=self.clock, codec=self.codec, request_timeout=request_timeout, snapshot_count=snapshot_count,
            snapshot_index=marker.index if marker is not None else 0, catchup_entries=catchup,
            send_before_persist=send_before_persist, leader_appends_early=True, lease_extend=lease_extend,
            initial_term=image.hard_state.term)
        self.queue = []
        self.commits = []
        self.tokens = {}
        self.alive = True
        self.crash_stage = None
        self.epoch += 1
        self.monitor.restarted(self.id, applier.applied_index, image.hard_state.commit)
        if self.core.single_voter() and not self.core.is_learner():
            self.core.campaign()  # as the server's node loop does at start

    def install_snapshot(self, data: bytes, election_tick: int) -> None:
        """The leader's backend copy replaces ours (``_State.install_snapshot``'s steps)."""
        from .disk import SimBackend

        disk = self.disk
        disk.backend = SimBackend.restore(data)
        self.store = MVCCStore.restore(disk.backend.iter_revisions())
        _lessor, applier, membership = restore_machine(
            disk.backend, self.store, min_ttl=min_lease_ttl(HEARTBEAT_MS, HEARTBEAT_MS * election_tick),
            quota_bytes=0, now=0.0)
        self.machine.replace(applier, membership)
        if self.store.compact_revision > 0:
            self.hub.compact(self.store.compact_revision)
        self.hub.advance(self.store.current_revision)

    def commit_rows(self) -> None:
        """The committer: everything queued goes to the backend (in order)."""
        rows, self.commits = self.commits, []
        self.disk.backend.commit_all([wb for writes, _last in rows for wb in writes])

    # -- the request path (EtcdServer's hot path, same checks in the same order) -------------
    def _refuse_learner(self) -> None:
        if self.core.is_listed_learner():
            raise err(ERR_LEARNER_NOT_SUPPORTED)

    def _submit(self, field: str, body: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        entry = self.codec.prepare(field, body.SerializeToString(), "")
        self._refuse_learner()
        self.core.check_quota(entry.request)
        self.codec.check_size(entry.data)
        self.queue.append(Proposal(entry.data, entry.request, done, entry.request.header.ID))

    def put(self, key: bytes, value: bytes, lease: int, done: Callable[[Any, BaseException | None], None]) -> None:
        req = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        validate_put(req)
        self._submit("put", req, done)

    def delete(self, key: bytes, done: Callable[[Any, BaseException | None], None]) -> None:
        req = rpc_pb2.DeleteRangeRequest(key=key)
        validate_delete_range(req)
        self._submit("delete_range", req, done)

    def txn(self, req: rpc_pb2.TxnRequest, done: Callable[[Any, BaseException | None], None]) -> None:
        validate_txn(req, MAX_TXN_OPS, self.codec.max_request_bytes)
        if is_txn_readonly(req):
            raise AssertionError("the simulator's transactions write")
        self._submit("txn", req, done)

    def get(self, key: bytes, done: Callable[[Any, BaseException | None], None]) -> None:
        """A linearizable read: a ReadIndex round unless the node core says this member may
        serve it at once; then from the store as it is when the read is released."""
        req = rpc_pb2.RangeRequest(key=key)
        validate_range(req)
        if self.core.needs_read_index(False):
            def ready(error: BaseException | None) -> None:
                if error is not None:
                    done(None, error)
                else:
                    done(self.store.range(req), None)
            self.core.read_index(ready)
            return
        done(self.store.range(req), None)

    def propose_request(self, req: raft_internal_pb2.InternalRaftRequest,
                        done: Callable[[Any, BaseException | None], None]) -> None:
        """A request built by the server (EtcdServer._propose: lease grant/revoke)."""
        self._refuse_learner()
        data = self.codec.encode(req)
        self.queue.append(Proposal(data, req, done, req.header.ID))

    def open_watch(self, prefix: bytes, start_revision: int) -> Any:
        stream = self.hub.open_stream()
        stream.handle(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=prefix, range_end=prefix_end(prefix), start_revision=start_revision)))
        return stream


def attrs_evolve(config: Config, **changes: Any) -> Config:
    import attrs

    return attrs.evolve(config, **changes)
