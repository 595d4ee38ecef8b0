"""One seeded simulation run: the server's node core over a simulated network, disk and clock.

Each member is the server's own node logic (``securekv/sim/member.py``: NodeCore, the applier
over the MVCC store and lessor, the watch hub, the request path, the restart path); this
module is its driver — the simulator's counterpart of ``securekv/server/node.py`` — plus the
network, the faults, the clients and the checks.

The driver is single-threaded and event-driven on a virtual clock. Every bit of randomness
comes from the ``random.Random`` passed in, and every collection that is iterated is ordered,
so a seed replays exactly (whatever ``PYTHONHASHSEED`` is).

Phases: a *chaos* phase with faults injected at random, then *heal* (every fault undone,
crashed nodes restarted) and a bounded *liveness* window in which the cluster must elect a
leader, commit, and complete a client operation.
"""

from __future__ import annotations

import heapq
import random
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from securekv.node import effects as fx
from securekv.proto import kv_pb2, raft_internal_pb2, rpc_pb2
from securekv.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    Role,
)
from securekv.rpctypes import EtcdError
from securekv.sim.clients import (LEASE_PREFIX, REGISTER_PREFIX, Client, History, LeaseRecord, Outstanding,
                                  Watcher)
from securekv.sim.disk import Marker
from securekv.sim.member import SECONDS_PER_UNIT, SimNode
from securekv.sim.network import LinkFaults, SimNetwork
from securekv.testing.history_checks import Event, EventKind, LeaseCall, check_kv, check_leases, check_watch
from securekv.testing.raft_invariants import InvariantViolation, SafetyMonitor

LIVENESS = "Liveness"
LINEARIZABILITY = "Linearizability"
LOST_WRITE = "Lost Write"
WATCH = "Watch Delivery"
LEASE_SAFETY = "Lease Safety"
CORE_PANIC = "Core Panic"
READY_LOOP = "Ready Loop"

TRACE_TAIL = 40
_MT = MessageType


@attrs.frozen(kw_only=True)
class SimParams:
    """Shape of a run. Times are in virtual units; ``tick`` is the nominal tick period."""

    nodes: int = 3
    chaos_ticks: int = 400
    liveness_ticks: int = 150
    tick: int = 10
    election_tick: int = 10
    heartbeat_tick: int = 2
    clients: int = 3
    keys: tuple[bytes, ...] = (b"k/x", b"k/y")
    watchers: int = 2
    client_timeout_ticks: int = 25
    max_extra_nodes: int = 2
    max_search_steps: int = 2_000_000
    keep_full_trace: bool = False


@attrs.frozen(slots=True)
class Violation:
    invariant: str
    detail: str
    time: int
    trace: tuple[str, ...]


@attrs.frozen(slots=True)
class RunResult:
    seed: int
    commits: int
    elections: int
    faults: int
    crashes: int
    ops: int
    pending_ops: int
    messages: int
    snapshots: int
    conf_changes: int
    end_time: int
    undecided: int
    violation: Violation | None
    trace: tuple[str, ...] = ()
    reads: int = 0
    writes: int = 0
    leases: int = 0
    lease_expiries: int = 0
    watch_events: int = 0
    torn_writes: int = 0
    lost_records: int = 0
    installs: int = 0

    def stats(self) -> dict[str, int]:
        return {
            "commits": self.commits, "elections": self.elections, "faults": self.faults,
            "crashes": self.crashes, "ops": self.ops, "pending_ops": self.pending_ops,
            "messages": self.messages, "snapshots": self.snapshots,
            "conf_changes": self.conf_changes, "undecided": self.undecided,
            "reads": self.reads, "writes": self.writes, "leases": self.leases,
            "lease_expiries": self.lease_expiries, "watch_events": self.watch_events,
            "torn_writes": self.torn_writes, "lost_records": self.lost_records,
            "snapshot_installs": self.installs,
        }


class Simulation:
    def __init__(self, seed: int, rng: random.Random, params: SimParams) -> None:
        self.seed = seed
        self.rng = rng
        self.p = params
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, str, object, object]] = []
        self.monitor = SafetyMonitor()
        self.history = History()
        self._trace: deque[str] = deque(maxlen=None if params.keep_full_trace else TRACE_TAIL)
        # Per-seed knobs: the same code sees many shapes of cluster.
        self.max_size_per_msg = rng.choice([1, 300, 1 << 20])
        self.max_inflight = rng.choice([1, 4, 256])
        self.max_entries_per_msg = rng.choice([0, 0, 2])
        # Half the seeds send what a Ready marks as independent of its persistence before
        # persisting it (so a crash at stage 0 or 1 has already let them out).
        self.send_early = rng.random() < 0.5
        # Pre-Vote is the default; without it a node with a stale log and a fast clock can
        # keep every other node's election timer reset (etcd semantics), so those seeds get
        # milder clock skew to stay live.
        self.pre_vote = rng.random() < 0.75
        self.check_quorum = rng.random() < 0.5
        # Weather: calm seeds have few long faults, stormy ones many short ones (leader churn
        # and divergent log tails — where commit-rule bugs show).
        self.stormy = rng.random() < 0.5
        # Half the seeds keep a fixed membership, where the monitor can also check the
        # stronger electability invariant (SafetyMonitor.check_electability).
        self.reconfigure = rng.random() < 0.5 and params.nodes >= 3
        # Workload: busy or idle clients, read- or write-heavy, some leases.
        self.think_ticks = rng.choice([3, 3, 20])
        self.read_share = rng.choice([0.3, 0.3, 0.6])
        self.lease_share = rng.choice([0.0, 0.15, 0.3])
        self.follower_share = rng.choice([0.2, 0.5])  # requests sent to a random member, not the leader
        self.skew_pct = 30 if self.pre_vote else 8
        self.snapshot_count = rng.choice([8, 25, 10_000])
        self.catchup = rng.choice([0, 3])
        self.net = SimNetwork(rng, max_delay=rng.randint(1, 6), long_delay=rng.choice([20, 60]))
        self.nodes: dict[int, SimNode] = {}
        voters = list(range(1, params.nodes + 1))
        for nid in voters:
            self._add_node(nid, MemoryStorage.with_peers(voters))
        self.next_id = params.nodes + 1
        self.clients = {cid: Client(cid) for cid in range(1, params.clients + 1)}
        self.watchers = [Watcher(wid) for wid in range(1, params.watchers + 1)]
        self.faults = 0
        self.crashes = 0
        self.snapshots = 0
        self.installs = 0
        self.torn_writes = 0
        self.conf_changes = 0
        self.reads = 0
        self.writes = 0
        self.watch_events = 0
        self._fault_ids = 0
        self._undo: dict[int, Callable[[], None]] = {}
        self._flaky_id = 0
        self._leader_trap: int | None = None
        self._conf_seen: set[int] = set()
        self.phase = "chaos"
        self._heal_commit = 0
        self._heal_clock = 0
        self._completed_after_heal = 0
        self.violation: Violation | None = None
        self._checked_commit = 0
        self._initial_voters = tuple(voters)
        self._lease_ids = 0

    # -- plumbing --------------------------------------------------------------------------
    def _push(self, at: int, kind: str, a: object = None, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b))

    def trace(self, line: str) -> None:
        self._trace.append(f"{self.now:>6} {line}")

    def _config(self, node: SimNode) -> Config:
        return Config(
            id=node.id, storage=node.disk.log, rng=node.rng, election_tick=self.p.election_tick,
            heartbeat_tick=self.p.heartbeat_tick, applied=0,
            max_size_per_msg=self.max_size_per_msg, max_inflight_msgs=self.max_inflight,
            max_entries_per_msg=self.max_entries_per_msg,
            check_quorum=self.check_quorum, pre_vote=self.pre_vote,
        )

    def _add_node(self, nid: int, log: MemoryStorage) -> SimNode:
        # Clock skew: each node ticks at its own rate, up to +-30% off nominal.
        spread = max(1, self.p.tick * self.skew_pct // 100)
        period = self.p.tick + self.rng.randint(-spread, spread)
        node = SimNode(nid, log, self.monitor, random.Random(self.rng.getrandbits(64)), period, self.p.tick)
        node.now = self.now
        self.nodes[nid] = node
        self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        node.now = self.now
        election_seconds = self.p.election_tick * self.p.heartbeat_tick * self.p.tick * SECONDS_PER_UNIT
        node.boot(self._config(node), send_before_persist=self.send_early, snapshot_count=self.snapshot_count,
                  catchup=self.catchup, request_timeout=self.p.client_timeout_ticks * self.p.tick * SECONDS_PER_UNIT,
                  lease_extend=election_seconds, first_id=(node.id << 48) | (node.epoch << 32))
        self._push(self.now + self.rng.randint(1, node.period), "tick", node.id, node.epoch)
        self._push(self.now + self.rng.randint(1, 5 * node.period), "lease_tick", node.id, node.epoch)

    def _leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            if (node.alive and not node.removed and node.core.role is Role.LEADER
                    and (best is None or node.core.term > best.core.term)):
                best = node
        return best

    def _members(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive and not n.removed]

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunResult:
        p = self.p
        chaos_end = p.chaos_ticks * p.tick
        deadline = chaos_end + p.liveness_ticks * p.tick
        for cid in self.clients:
            self._push(self.rng.randint(1, 5 * p.tick), "client", cid)
        for w in self.watchers:
            self._push(self.rng.randint(1, 10 * p.tick), "watch", w.id)
        self._push(self.rng.randint(p.tick * p.election_tick, 3 * p.tick * p.election_tick), "fault")
        self._push(chaos_end, "heal")
        self._push(deadline, "deadline")
        try:
            while self._queue:
                at, _, kind, a, b = heapq.heappop(self._queue)
                self.now = at
                getattr(self, f"_on_{kind}")(a, b)
                self._drain()
                if self.phase == "liveness" and self._lively():
                    self.trace(f"liveness ok: leader n{self._leader().id}, "  # type: ignore[union-attr]
                               f"commit {self.monitor.max_committed}")
                    break
                if self.phase == "done":
                    break
        except InvariantViolation as v:
            self._fail(v.invariant, v.detail)
        except Exception as exc:  # the node core (or the driver) raised: a bug either way
            frames = traceback.extract_tb(exc.__traceback__)
            where = frames[-1]
            self._fail(CORE_PANIC, f"{type(exc).__name__}: {exc} "
                       f"(at {where.filename.rsplit('/', 2)[-1]}:{where.lineno} {where.name})")
        undecided = 0
        if self.violation is None:
            try:
                undecided = self._check_history()
            except Exception as exc:
                where = traceback.extract_tb(exc.__traceback__)[-1]
                self._fail(CORE_PANIC, f"{type(exc).__name__} in the final checks: {exc} "
                           f"(at {where.filename.rsplit('/', 2)[-1]}:{where.lineno} {where.name})")
        lost = sum(n.disk.wal.lost_records for n in self.nodes.values())
        return RunResult(
            seed=self.seed, commits=len(self.monitor.committed),
            elections=self.monitor.elections, faults=self.faults, crashes=self.crashes,
            ops=self.history.completed, pending_ops=self.history.abandoned,
            messages=self.net.sent, snapshots=self.snapshots, conf_changes=self.conf_changes,
            end_time=self.now, undecided=undecided, violation=self.violation,
            trace=tuple(self._trace) if self.p.keep_full_trace else (),
            reads=self.reads, writes=self.writes, leases=len(self.history.leases),
            lease_expiries=sum(n.core.leases_expired for n in self.nodes.values() if n.core is not None),
            watch_events=self.watch_events, torn_writes=self.torn_writes, lost_records=lost,
            installs=self.installs,
        )

    def _fail(self, invariant: str, detail: str) -> None:
        if self.violation is None:
            self.trace(f"VIOLATION {invariant}: {detail.splitlines()[0]}")
            tail = tuple(self._trace)[-TRACE_TAIL:]
            self.violation = Violation(invariant, detail, self.now, tail)

    def _final_node(self) -> SimNode | None:
        """The member whose store the others' histories are judged against: the live one that
        applied the most (every member applies the same entries: State Machine Safety)."""
        best = None
        for n in self._members():
            if best is None or n.machine.applied_index > best.machine.applied_index:
                best = n
        return best

    def _check_history(self) -> int:
        for client in self.clients.values():
            if client.current is not None:
                self._abandon(client.current)
        for w in self.watchers:
            self._poll_watch(w)
            w.close()
        final = self._final_node()
        if final is None:
            return 0
        reference = [_event(e) for e in final.store.events_between(1, final.store.current_revision, b"\0", b"\0")]
        report = check_kv(self.history.ops, reference, prefix=REGISTER_PREFIX,
                          max_steps_per_key=self.p.max_search_steps)
        if report.lost:
            self._fail(LOST_WRITE, report.lost[0] + (f" (and {len(report.lost) - 1} more)" if len(report.lost) > 1 else ""))
            return report.undecided
        if report.violations:
            self._fail(LINEARIZABILITY, report.result.explain() if not report.result.ok else report.phantoms[0])
            return report.undecided
        for w in self.watchers:
            wr = check_watch(f"w{w.id}", w.segments, reference, REGISTER_PREFIX)
            if wr.gaps or wr.errors:
                problems = list(wr.errors) + list(wr.gaps)
                self._fail(WATCH, f"watcher w{w.id}: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                                      if len(problems) > 1 else ""))
                return report.undecided
        lessor = final.machine.applier.lessor
        final_keys = [(kv.key, kv.lease) for kv in final.store.range(rpc_pb2.RangeRequest(
            key=LEASE_PREFIX, range_end=LEASE_PREFIX[:-1] + bytes([LEASE_PREFIX[-1] + 1]))).kvs]
        # A lease the replicated state no longer holds was revoked (by a client or by expiry):
        # a key still attached to it is the bug the check looks for. A live one counts as alive.
        final_ttl = {lease: (1 if lease in lessor else -1) for lease in self.history.leases}
        leases = check_leases([r.log() for r in self.history.leases.values()], final_keys, final_ttl)
        if leases.errors:
            self._fail(LEASE_SAFETY, leases.errors[0])
        return report.undecided

    def _lively(self) -> bool:
        return (self._leader() is not None and self.monitor.max_committed > self._heal_commit
                and self._completed_after_heal > 0)

    # -- events ----------------------------------------------------------------------------
    def _on_tick(self, nid: object, epoch: object) -> None:
        node = self.nodes[nid]  # type: ignore[index]
        if not node.alive or node.epoch != epoch:
            return
        node.now = self.now
        self._run(node, node.core.tick())
        self._push(self.now + node.period, "tick", node.id, epoch)

    def _on_lease_tick(self, nid: object, epoch: object) -> None:
        """The server's lease ticker (every 0.5 s of the member's own clock)."""
        node = self.nodes[nid]  # type: ignore[index]
        if not node.alive or node.epoch != epoch:
            return
        node.now = self.now
        before = node.core.leases_expired
        node.core.expire_leases()
        if node.core.leases_expired > before:
            self.trace(f"n{node.id} proposes the revoke of {node.core.leases_expired - before} expired lease(s)")
        self._push(self.now + 5 * node.period, "lease_tick", node.id, epoch)

    def _on_commit(self, nid: object, epoch: object) -> None:
        """The committer's batch interval ended: the queued rows reach the backend."""
        node = self.nodes[nid]  # type: ignore[index]
        if node.alive and node.epoch == epoch:
            node.commit_rows()

    def _on_msg(self, m: object, epoch: object) -> None:
        assert isinstance(m, Message)
        dst = self.nodes.get(m.to)
        src = self.nodes.get(m.frm)
        src_same = src is not None and src.alive and src.epoch == epoch
        if dst is None or not dst.alive or self.net.blocked(m.frm, m.to):
            if src_same and m.type in (_MT.APP, _MT.SNAP, _MT.HEARTBEAT):
                assert src is not None
                if m.type is _MT.SNAP:
                    src.core.snapshot_status(m.to, failed=True)
                src.core.unreachable(m.to)
            return
        dst.now = self.now
        dst.core.receive(m)
        if m.type is _MT.SNAP:
            self.snapshots += 1
            self.trace(f"n{m.to} receives snapshot {m.snapshot.metadata.index}@t"  # type: ignore[union-attr]
                       f"{m.snapshot.metadata.term} from n{m.frm}")  # type: ignore[union-attr]
            if src_same:
                src.core.snapshot_status(m.to, failed=False)  # type: ignore[union-attr]

    def _on_heal(self, _a: object, _b: object) -> None:
        for fid in sorted(self._undo):
            self._undo.pop(fid)()
        self.net.clear()
        for node in self.nodes.values():
            node.now = self.now
            if node.period != node.base_period:
                node.set_period(node.base_period)
            node.crash_stage = None
            if not node.alive and not node.removed:
                self._restart(node)
        self.phase = "liveness"
        self._heal_commit = self.monitor.max_committed
        self._heal_clock = self.history.clock
        self.trace(f"HEAL: all faults undone; commit {self._heal_commit}")

    def _on_deadline(self, _a: object, _b: object) -> None:
        leader = self._leader()
        state = ", ".join(
            f"n{n.id}:{n.core.role.value if n.alive else 'down'}@t{n.core.term if n.alive else '?'}"
            for n in self.nodes.values() if not n.removed)
        self._fail(LIVENESS,
                   f"{self.p.liveness_ticks} ticks after healing: leader="
                   f"{'n%d' % leader.id if leader else 'none'}, commit "
                   f"{self._heal_commit}->{self.monitor.max_committed}, client ops completed "
                   f"since heal={self._completed_after_heal} [{state}]")
        self.phase = "done"

    # -- the driver: the simulator's node loop ---------------------------------------------
    def _drain(self) -> None:
        for node in list(self.nodes.values()):
            rounds = 0
            while node.alive:
                node.now = self.now
                if node.queue:
                    batch, node.queue = node.queue, []
                    self._run(node, node.core.propose(batch))
                    if not node.alive:
                        break
                effects = node.core.poll()
                if not node.core.ready_pending:
                    self._run(node, effects)
                    break
                rounds += 1
                if rounds > 100:
                    raise InvariantViolation(READY_LOOP, f"n{node.id} never runs out of Ready")
                self._handle_ready(node, effects)
        if self.monitor.max_committed != self._checked_commit:
            self._checked_commit = self.monitor.max_committed
            if not self.monitor.membership_changed:
                self.monitor.check_electability({n.id: n.disk.log for n in self.nodes.values()},
                                                self._initial_voters)

    def _handle_ready(self, node: SimNode, effects: list[Any]) -> None:
        """One Ready, the way ``securekv/server/node.py`` handles it, with a crash possible
        at any stage: 0 before persisting, 1 during it (a torn write), 2 after it before
        anything was sent or applied, 3 after sending some messages, 4 after applying and
        answering but before the backend commit."""
        core = node.core
        rd = core.ready
        assert rd is not None
        stage = node.crash_stage
        if (self._leader_trap is not None and rd.soft_state is not None
                and rd.soft_state.role is Role.LEADER):
            stage, self._leader_trap = self._leader_trap, None
            self.trace(f"n{node.id} wins an election and walks into the trap")
            self._push(self.now + self.rng.randint(5 * self.p.tick, 60 * self.p.tick),
                       "restart", node.id, node.epoch + 1)
        wal = node.disk.wal
        epoch = node.epoch
        for eff in effects:
            kind = type(eff)
            if kind is fx.Persist:
                if stage == 0:
                    return self._crash(node, "before persisting its Ready")
                wal.append(eff.entries, eff.hard_state)
                if stage == 1:
                    self.torn_writes += 1
                    kept, lost = wal.crash(self.rng)
                    return self._crash(node, f"mid-write: {kept} of {kept + lost} unsynced WAL records reached the disk")
                if eff.sync or eff.entries:
                    wal.sync()
                if eff.entries:
                    self.trace(f"n{node.id} persists {_span(list(eff.entries))}")
            elif kind is fx.InstallSnapshot:
                if stage == 0:
                    return self._crash(node, "before installing the leader's snapshot")
                self._install(node, eff.snapshot, stage)
                if not node.alive or node.epoch != epoch:
                    return None
            else:
                self._run(node, [eff])
                if not node.alive or node.epoch != epoch:
                    return None
        if stage in (0, 1):  # a Ready with nothing to persist: dies after its early messages
            return self._crash(node, "inside a Ready with nothing to persist")
        if rd.soft_state is not None:
            self.trace(f"n{node.id} is {rd.soft_state.role.value} (leader n{rd.soft_state.leader}) term "
                       f"{core.term}, log {node.disk.log.first_index()}..{node.disk.log.last_index()}")
            if rd.soft_state.role is Role.LEADER:
                self.monitor.observe_leader(node.id, core.term, node.disk.log)
        if stage == 2:
            return self._crash(node, "after persisting, before sending")
        effects = core.persisted()
        if stage == 3:
            for eff in effects:
                if type(eff) is fx.SendMessages:
                    sent = tuple(m for m in eff.messages if self.rng.random() < 0.5)
                    self._send(node, sent)
                    return self._crash(node, f"after sending {len(sent)}/{len(eff.messages)} messages")
        self._run(node, effects)
        if stage == 4 and node.alive and node.epoch == epoch:
            return self._crash(node, "after applying and answering, before the backend commit")
        return None

    def _run(self, node: SimNode, effects: list[Any]) -> None:
        """Carry out the core's effects (outside the persistence of a Ready)."""
        epoch = node.epoch
        for eff in effects:
            if not node.alive or node.epoch != epoch:
                return
            kind = type(eff)
            if kind is fx.Resolve or kind is fx.ReadDone:
                tokens = (eff.token,) if kind is fx.Resolve else eff.tokens
                for token in tokens:
                    if kind is fx.Resolve:
                        token(eff.result, eff.error)
                    else:
                        token(eff.error)
            elif kind is fx.SendMessages:
                self._send(node, eff.messages)
            elif kind is fx.CommitRows:
                node.commits.append((eff.writes, eff.last))
                self._push(self.now + self.rng.randint(0, self.p.tick), "commit", node.id, node.epoch)
            elif kind is fx.SaveSnapshot:
                node.commit_rows()  # the server waits until the backend holds everything up to it
                cs = eff.conf_state
                node.disk.wal.save_snapshot(Marker(eff.index, eff.term, tuple(cs.voters), tuple(cs.learners)))
                node.core.snapshot_saved(eff.index, eff.term, cs)
            elif kind is fx.BuildSnapshot:
                node.commit_rows()
                backend = node.disk.backend
                node.core.snapshot_built(backend.consistent_index(), backend.snapshot_bytes())
            elif kind is fx.MemberChanged:
                self._conf_applied(eff.index, eff.change)
            elif kind is fx.LeaderChanged:
                pass  # traced with the Ready's soft state
            elif kind in (fx.Applied, fx.MembersApplied, fx.SlowApply):
                pass
            elif kind is fx.BadEntry:
                raise AssertionError(f"n{node.id}: bad entry {eff.index}: {eff.reason}")
            else:
                raise AssertionError(f"unexpected effect {eff!r}")

    def _install(self, node: SimNode, snap: Any, stage: int | None) -> None:
        """InstallSnapshot: the server first waits for its committer, swaps the backend in,
        rebuilds the state machine, then writes the WAL marker."""
        meta = snap.metadata
        node.commit_rows()
        node.install_snapshot(snap.data, self.p.election_tick * self.p.heartbeat_tick)
        self.installs += 1
        self.trace(f"n{node.id} installs snapshot {meta.index}@t{meta.term} voters={list(meta.conf_state.voters)}")
        if stage == 1:
            # Between the backend swap and the WAL marker: a restart finds a backend ahead of
            # its log (the WAL replay skips what the backend holds).
            self.torn_writes += 1
            return self._crash(node, "after swapping in the snapshot's backend, before its WAL marker")
        cs = meta.conf_state
        node.disk.wal.save_snapshot(Marker(meta.index, meta.term, tuple(cs.voters), tuple(cs.learners)))
        node.core.snapshot_installed(node.machine.applier, node.machine.membership)
        return None

    def _send(self, node: SimNode, messages: tuple[Message, ...]) -> None:
        for m in messages:
            # A forwarded proposal is never duplicated: the peer transport is a TCP stream,
            # and the server applies a request as often as it is in the log (as etcd does).
            for delay in self.net.schedule(may_duplicate=m.type is not _MT.PROP):
                self._push(self.now + delay, "msg", m, node.epoch)

    def _conf_applied(self, index: int, cc: ConfChange) -> None:
        if index in self._conf_seen or index <= len(self._initial_voters):
            return  # applied elsewhere already, or a founders' bootstrap entry
        self._conf_seen.add(index)
        self.conf_changes += 1
        self.trace(f"conf change {cc.type.name} n{cc.node_id} committed at {index}")
        if (cc.type in (ConfChangeType.ADD_LEARNER, ConfChangeType.ADD_NODE)
                and cc.node_id not in self.nodes):
            self._add_node(cc.node_id, MemoryStorage())
        elif cc.type is ConfChangeType.REMOVE_NODE and cc.node_id in self.nodes:
            gone = self.nodes[cc.node_id]
            if not gone.removed:
                # Like a real member, it keeps running until it notices (it may not have
                # applied its removal yet, or be a leader that must step down): shut it down
                # a little later. Clients and faults leave it alone from now on.
                gone.removed = True
                self._push(self.now + self.rng.randint(0, 30 * self.p.tick), "shutdown", gone.id)

    # -- crashes ---------------------------------------------------------------------------
    def _crash(self, node: SimNode, why: str, count: bool = True) -> None:
        kept, lost = node.disk.wal.crash(self.rng)  # power loss: unsynced records may go
        node.alive = False
        node.crash_stage = None
        node.epoch += 1
        node.commits = []  # the committer's queue is volatile (the WAL replay restores it)
        node.queue = []
        if count:
            self.crashes += 1
        log = node.disk.log
        self.trace(f"n{node.id} CRASH {why} (disk: log {log.first_index()}..{log.last_index()}, commit "
                   f"{log.hard_state.commit}; {lost} unsynced record(s) lost, {kept} kept)")
        for token in sorted(node.tokens):
            self._abandon(node.tokens[token])
        node.tokens = {}
        for w in self.watchers:
            if w.stream is not None and w.node == node.id:
                w.close()

    def _restart(self, node: SimNode) -> None:
        self._boot(node)
        log = node.disk.log
        self.trace(f"n{node.id} restarts (disk: log {log.first_index()}..{log.last_index()}, {log.hard_state}, "
                   f"backend at {node.disk.backend.consistent_index()})")

    # -- clients ---------------------------------------------------------------------------
    def _on_client(self, cid: object, _b: object) -> None:
        client = self.clients[cid]  # type: ignore[index]
        if client.current is not None or self.phase == "done":
            return
        node = self._target(client)
        if node is None:
            return self._client_later(client)
        node.now = self.now
        req = client.next_req
        client.next_req += 1
        roll = self.rng.random()
        if roll < self.lease_share:
            op = self._lease_op(client, node, req)
        else:
            op = self._kv_op(client, node, req)
        if op is None:
            return self._client_later(client)
        client.current = op
        node.tokens[req * 1000 + client.id] = op
        try:
            self._issue(node, op)
        except EtcdError as exc:  # refused up front (a learner, ...): no effect, not recorded
            node.tokens.pop(req * 1000 + client.id, None)
            client.current = None
            client.target = None
            self.trace(f"{op.describe()} refused: {exc.message}")
            return self._client_later(client)
        if op.kind == "keepalive":
            return None  # answered at once
        self._push(self.now + self.p.client_timeout_ticks * self.p.tick, "timeout", client.id, req)
        return None

    def _kv_op(self, client: Client, node: SimNode, req: int) -> Outstanding:
        key = self.rng.choice(self.p.keys)
        roll = self.rng.random()
        call = self.history.now()
        value = b"c%d.%d" % (client.id, req)
        if roll < self.read_share:
            return Outstanding(client.id, req, "get", key, call, node.id)
        rest = (roll - self.read_share) / (1 - self.read_share)
        if rest < 0.45:
            return Outstanding(client.id, req, "put", key, call, node.id, value=value)
        if rest < 0.55:
            return Outstanding(client.id, req, "delete", key, call, node.id)
        pick = self.rng.random()
        expected = client.seen.get(key) if pick < 0.6 else (None if pick < 0.8 else b"c1.1")
        return Outstanding(client.id, req, "cas", key, call, node.id, value=value, expected=expected)

    def _lease_op(self, client: Client, node: SimNode, req: int) -> Outstanding | None:
        roll = self.rng.random()
        if not client.leases or roll < 0.25:
            lease = (client.id << 40) | client.next_lease
            client.next_lease += 1
            return Outstanding(client.id, req, "grant", b"", self.history.now(), node.id, lease=lease,
                               ttl=self.rng.randint(2, 4))
        lease = self.rng.choice(client.leases)
        record = self.history.leases[lease]
        if roll < 0.5:
            record.keys += 1
            key = LEASE_PREFIX + b"%x/%d" % (lease, record.keys)
            return Outstanding(client.id, req, "attach", key, self.history.now(), node.id, value=b"v", lease=lease)
        if roll < 0.85:
            return Outstanding(client.id, req, "keepalive", b"", self.history.now(), node.id, lease=lease)
        if roll < 0.95:
            return Outstanding(client.id, req, "revoke", b"", self.history.now(), node.id, lease=lease)
        client.leases.remove(lease)  # nobody renews it any more: it must expire
        record.abandoned = self.history.now()
        self.trace(f"c{client.id} abandons lease {lease:x}")
        return None

    def _issue(self, node: SimNode, op: Outstanding) -> None:
        """The request goes through the member's request path (``SimNode``: the server's)."""
        done = self._done_for(node, op)
        kind = op.kind
        if kind == "get":
            self.reads += 1
            node.get(op.key, done)
        elif kind == "put":
            self.writes += 1
            node.put(op.key, op.value or b"", 0, done)
        elif kind == "delete":
            self.writes += 1
            node.delete(op.key, done)
        elif kind == "cas":
            self.writes += 1
            if op.expected is None:
                cmp = rpc_pb2.Compare(key=op.key, target=rpc_pb2.Compare.CREATE, result=rpc_pb2.Compare.EQUAL,
                                      create_revision=0)
            else:
                cmp = rpc_pb2.Compare(key=op.key, target=rpc_pb2.Compare.VALUE, result=rpc_pb2.Compare.EQUAL,
                                      value=op.expected)
            put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=op.key, value=op.value))
            node.txn(rpc_pb2.TxnRequest(compare=[cmp], success=[put]), done)
        elif kind == "grant":
            node.propose_request(raft_internal_pb2.InternalRaftRequest(
                lease_grant=rpc_pb2.LeaseGrantRequest(ID=op.lease, TTL=op.ttl)), done)
        elif kind == "attach":
            node.put(op.key, b"v", op.lease, done)
        elif kind == "revoke":
            node.propose_request(raft_internal_pb2.InternalRaftRequest(
                lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=op.lease)), done)
        elif kind == "keepalive":
            self._keepalive(node, op)
        else:
            raise AssertionError(kind)

    def _keepalive(self, node: SimNode, op: Outstanding) -> None:
        """EtcdServer.keepalive: the leader's lessor renews; a follower forwards to its leader
        (a peer call, so only over a working link)."""
        record = self.history.leases[op.lease]
        target = node
        if not node.core.is_leader:
            leader = self.nodes.get(node.core.leader)
            if (leader is None or not leader.alive or self.net.blocked(node.id, leader.id)
                    or self.net.blocked(leader.id, node.id)):
                self._finish(op)
                record.keepalives.append(LeaseCall(op.call, self.history.now(), None, f"n{node.id}"))
                return
            target = leader
        target.now = self.now
        try:
            ttl = target.machine.applier.lessor.renew(op.lease, target.clock())
        except EtcdError:
            ttl = None  # not the leader after all: no answer
        record.keepalives.append(LeaseCall(op.call, self.history.now(), ttl, f"n{target.id}"))
        self._finish(op)

    def _done_for(self, node: SimNode, op: Outstanding) -> Callable[..., None]:
        epoch = node.epoch

        def done(result: Any, error: BaseException | None) -> None:
            if node.epoch != epoch:
                return
            node.tokens.pop(op.req * 1000 + op.client, None)
            self._answer(op, result, error)
        return done

    def _answer(self, op: Outstanding, result: Any, error: BaseException | None) -> None:
        client = self.clients[op.client]
        if client.current is not op:
            return  # timed out already: recorded as pending
        if error is None and getattr(result, "error", None) is not None:
            error = result.error
        kind = op.kind
        if error is not None:
            self.trace(f"{op.describe()} failed: {getattr(error, 'message', error)}")
            client.target = None
            if kind in ("put", "delete", "cas"):
                return self._abandon(op)  # it may have reached the log: outcome unknown
            return self._finish(op)
        ret = self.history.now()
        if kind == "get":
            kvs = result.kvs
            value = bytes(kvs[0].value) if kvs else None
            self.history.record_kv(op, ret, value=value)
            client.seen[op.key] = value
            self.trace(f"{op.describe()} -> {value!r}")
        elif kind in ("put", "delete", "cas"):
            resp = result.response
            revision = resp.header.revision or result.revision
            if kind == "put":
                self.history.record_kv(op, ret, revision=revision)
                client.seen[op.key] = op.value
            elif kind == "delete":
                self.history.record_kv(op, ret, revision=revision, deleted=resp.deleted)
                client.seen[op.key] = None
            else:
                self.history.record_kv(op, ret, ok=resp.succeeded, revision=revision)
                if resp.succeeded:
                    client.seen[op.key] = op.value
            self.trace(f"{op.describe()} ok at revision {revision}")
        elif kind == "grant":
            self.history.leases[op.lease] = LeaseRecord(op.lease, op.ttl, ret)
            client.leases.append(op.lease)
            self.trace(f"{op.describe()} ok")
        elif kind == "revoke":
            record = self.history.leases[op.lease]
            if record.revoked is None:
                record.revoked = ret
            if op.lease in client.leases:
                client.leases.remove(op.lease)
            self.trace(f"{op.describe()} ok")
        else:
            self.trace(f"{op.describe()} ok")
        if self.phase == "liveness" and op.call > self._heal_clock:
            self._completed_after_heal += 1
        return self._finish(op)

    def _finish(self, op: Outstanding) -> None:
        client = self.clients[op.client]
        if client.current is op:
            client.current = None
            self._client_later(client)

    def _target(self, client: Client) -> SimNode | None:
        """Clients mostly stick to the node they believe leads (even a stale, isolated leader)
        and re-discover it — by asking a random member — only after a failure; some requests
        go to a random member (followers serve reads and forward writes)."""
        members = self._members()
        if not members:
            return None
        if self.rng.random() < self.follower_share:
            return self.rng.choice(members)
        node = self.nodes.get(client.target) if client.target is not None else None
        if node is not None and node.alive and not node.removed:
            return node
        asked = self.rng.choice(members)
        hint = self.nodes.get(asked.core.leader)
        if hint is not None and hint.alive and not hint.removed and self.rng.random() < 0.8:
            asked = hint
        client.target = asked.id
        return asked

    def _client_later(self, client: Client) -> None:
        self._push(self.now + self.rng.randint(1, self.think_ticks * self.p.tick), "client", client.id)

    def _on_timeout(self, cid: object, req: object) -> None:
        op = self.clients[cid].current  # type: ignore[index]
        if op is not None and op.req == req:
            node = self.nodes[op.node]
            node.tokens.pop(op.req * 1000 + op.client, None)
            self.clients[op.client].target = None
            self.trace(f"{op.describe()} timed out")
            self._abandon(op)

    def _abandon(self, op: Outstanding) -> None:
        client = self.clients[op.client]
        if client.current is not op:
            return
        if op.kind in ("put", "get", "delete", "cas"):
            self.history.record_kv(op, None)
        client.current = None
        self._client_later(client)

    # -- watchers --------------------------------------------------------------------------
    def _on_watch(self, wid: object, _b: object) -> None:
        w = self.watchers[wid - 1]  # type: ignore[operator]
        if self.phase == "done":
            return
        node = self.nodes.get(w.node)
        if w.stream is not None and (node is None or not node.alive or node.epoch != w.epoch or node.removed):
            w.close()
        if w.stream is None:
            members = self._members()
            if members:
                node = self.rng.choice(members)
                node.now = self.now
                w.node, w.epoch, w.start, w.confirmed = node.id, node.epoch, w.next_start, w.next_start - 1
                w.stream = node.open_watch(REGISTER_PREFIX, w.next_start)
                self.trace(f"w{w.id} watches {REGISTER_PREFIX!r} on n{node.id} from revision {w.next_start}")
        if w.stream is not None:
            self._poll_watch(w)
            if self.rng.random() < 0.3:
                w.stream.request_progress()
        self._push(self.now + self.rng.randint(self.p.tick, 8 * self.p.tick), "watch", w.id)

    def _poll_watch(self, w: Watcher) -> None:
        if w.stream is None:
            return
        for _ in range(64):
            responses = w.stream.next_responses(64)
            if not responses:
                return
            for resp in responses:
                if resp.canceled or resp.compact_revision:
                    self.trace(f"w{w.id} stream canceled ({resp.cancel_reason or resp.compact_revision})")
                    w.close()
                    return
                if resp.events:
                    for ev in resp.events:
                        w.events.append(_event(ev))
                        self.watch_events += 1
                elif not resp.created:
                    w.confirmed = max(w.confirmed, resp.header.revision)  # progress: all up to it delivered

    # -- faults ----------------------------------------------------------------------------
    FAULTS = (("partition", 3), ("bridge", 3), ("asymmetric", 2), ("isolate_leader", 3),
              ("crash", 2), ("crash_leader", 2), ("leader_trap", 1), ("flaky", 2), ("slow", 1), ("membership", 3),
              ("transfer", 2), ("skew", 1), ("campaign", 1), ("power_loss", 1))

    def _on_fault(self, _a: object, _b: object) -> None:
        if self.phase != "chaos":
            return
        names = [name for name, _ in self.FAULTS]
        weights = [0 if name == "membership" and not self.reconfigure else w
                   for name, w in self.FAULTS]
        name = self.rng.choices(names, weights)[0]
        t = self.p.tick
        duration = self.rng.randint(3 * t, 40 * t) if self.stormy else self.rng.randint(10 * t, 120 * t)
        undo = getattr(self, f"_fault_{name}")()
        if undo is not False:
            self.faults += 1
            if callable(undo):
                self._fault_ids += 1
                self._undo[self._fault_ids] = undo
                self._push(self.now + duration, "undo", self._fault_ids)
        gap = self.rng.randint(t, 12 * t) if self.stormy else self.rng.randint(3 * t, 40 * t)
        self._push(self.now + gap, "fault")

    def _on_shutdown(self, nid: object, _b: object) -> None:
        node = self.nodes[nid]  # type: ignore[index]
        if node.alive:
            self._crash(node, "removed from the cluster: shut down", count=False)

    def _on_restart(self, nid: object, epoch: object) -> None:
        node = self.nodes[nid]  # type: ignore[index]
        if not node.alive and not node.removed and node.epoch == epoch and self.phase == "chaos":
            self._restart(node)

    def _on_undo(self, fid: object, _b: object) -> None:
        undo = self._undo.pop(fid, None)  # type: ignore[call-overload]
        if undo is not None:
            undo()

    def _cut(self, links: list[tuple[int, int]], what: str) -> Callable[[], None]:
        self.net.block(links)
        self.trace(f"FAULT {what}")

        def heal() -> None:
            self.net.unblock(links)
            self.trace(f"heal {what}")
        return heal

    def _fault_partition(self) -> Callable[[], None] | bool:
        ids = [n.id for n in self.nodes.values() if not n.removed]
        if len(ids) < 2:
            return False
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        a, b = sorted(ids[:cut]), sorted(ids[cut:])
        links = [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
        return self._cut(links, f"partition {a} | {b}")

    def _fault_bridge(self) -> Callable[[], None] | bool:
        """Cut one link only: connectivity stops being transitive (a sees b and c, b and c
        cannot see each other) — the partial partitions real networks produce."""
        ids = sorted(n.id for n in self.nodes.values() if not n.removed)
        if len(ids) < 2:
            return False
        a, b = sorted(self.rng.sample(ids, 2))
        return self._cut([(a, b), (b, a)], f"cut link n{a} <-> n{b}")

    def _fault_asymmetric(self) -> Callable[[], None] | bool:
        ids = sorted(n.id for n in self.nodes.values() if not n.removed)
        if len(ids) < 2:
            return False
        x = self.rng.choice(ids)
        others = [y for y in ids if y != x]
        if self.rng.random() < 0.5:
            return self._cut([(x, y) for y in others], f"n{x} cannot send")
        return self._cut([(y, x) for y in others], f"n{x} cannot receive")

    def _fault_isolate_leader(self) -> Callable[[], None] | bool:
        leader = self._leader()
        if leader is None:
            return self._fault_partition()
        others = [n.id for n in self.nodes.values() if n.id != leader.id and not n.removed]
        if not others:
            return False
        links = [(leader.id, y) for y in others] + [(y, leader.id) for y in others]
        return self._cut(links, f"isolate leader n{leader.id}")

    def _fault_crash_leader(self) -> Callable[[], None] | bool:
        """Jepsen's favourite: kill the primary — often in the middle of its next Ready, with
        a fresh client entry persisted locally and not (or partly) sent."""
        return self._fault_crash(self._leader())

    def _fault_crash(self, node: SimNode | None = None) -> Callable[[], None] | bool:
        members = self._members()
        if not members:
            return False
        if node is None:
            node = self.rng.choice(members)
        if self.rng.random() < 0.5:
            self._crash(node, "between Readies")
        else:
            node.crash_stage = self.rng.randrange(5)  # dies inside its next Ready
            self.trace(f"FAULT n{node.id} will crash at stage {node.crash_stage} of its next Ready")
        epoch = node.epoch

        def restart() -> None:
            if node.removed:
                return
            if node.alive and node.crash_stage is not None and node.epoch == epoch:
                node.crash_stage = None  # never got a Ready to die in
            elif not node.alive:
                self._restart(node)
        return restart

    def _fault_power_loss(self) -> Callable[[], None] | bool:
        """Every member loses power at once: what was not fsynced is lost (a random prefix of
        it survives); the cluster must come back with every acknowledged write."""
        members = self._members()
        if not members:
            return False
        self.trace("FAULT power loss: every member")
        for node in members:
            self._crash(node, "power loss")

        def power_on() -> None:
            for node in self.nodes.values():
                if not node.alive and not node.removed:
                    self._restart(node)
        return power_on

    def _fault_leader_trap(self) -> Callable[[], None] | bool:
        """The next node to win an election crashes inside that very Ready, after persisting
        its first entry of the new term (and maybe sending some of it): a new-term log tail
        that few or no followers have."""
        self._leader_trap = self.rng.choice([2, 3])
        self.trace(f"FAULT the next new leader crashes at stage {self._leader_trap}")

        def disarm() -> None:
            self._leader_trap = None
        return disarm

    def _fault_flaky(self) -> Callable[[], None] | bool:
        self.net.faults = LinkFaults(drop=self.rng.choice([0.05, 0.2, 0.4]),
                                     duplicate=self.rng.choice([0.0, 0.1, 0.3]),
                                     long_delay=self.rng.choice([0.0, 0.1, 0.3]))
        self._flaky_id += 1
        mine = self._flaky_id
        self.trace(f"FAULT flaky network {self.net.faults}")

        def calm() -> None:
            if self._flaky_id == mine:
                self.net.faults = LinkFaults()
                self.trace("heal flaky network")
        return calm

    def _fault_slow(self) -> Callable[[], None] | bool:
        self.net.max_delay = self.net.base_delay * self.rng.choice([4, 10])
        self.trace(f"FAULT slow network: delays up to {self.net.max_delay}")

        def fast() -> None:
            self.net.max_delay = self.net.base_delay
            self.trace("heal slow network")
        return fast

    def _fault_membership(self) -> Callable[[], None] | bool:
        leader = self._leader()
        if leader is None:
            return False
        cs = leader.core.conf_state()
        options: list[ConfChange] = []
        if len(self.nodes) < self.p.nodes + self.p.max_extra_nodes:
            options.append(ConfChange(ConfChangeType.ADD_LEARNER, self.next_id))
            options.append(ConfChange(ConfChangeType.ADD_NODE, self.next_id))  # straight to voter
        for nid in cs.learners:
            if nid in self.nodes and not self.nodes[nid].removed:
                options.append(ConfChange(ConfChangeType.PROMOTE_LEARNER, nid))
        if len(cs.voters) > 3:
            options += [ConfChange(ConfChangeType.REMOVE_NODE, v) for v in cs.voters]
        if not options:
            return False
        cc = self.rng.choice(options)
        leader.now = self.now

        def answered(_result: Any, error: BaseException | None) -> None:
            if error is not None:
                self.trace(f"conf change {cc.type.name} n{cc.node_id} failed: {getattr(error, 'message', error)}")

        effects = leader.core.propose_conf_change(cc, answered)
        refused = [e for e in effects if type(e) is fx.Resolve and e.error is not None]
        self._run(leader, effects)
        if refused:
            return False
        if cc.node_id == self.next_id:
            self.next_id += 1
        self.trace(f"FAULT propose {cc.type.name} n{cc.node_id} at leader n{leader.id}")
        return True

    def _fault_transfer(self) -> Callable[[], None] | bool:
        leader = self._leader()
        if leader is None:
            return False
        targets = [v for v in leader.core.conf_state().voters if v != leader.id]
        if not targets:
            return False
        to = self.rng.choice(targets)
        leader.core.transfer_leader(to)
        self.trace(f"FAULT transfer leadership n{leader.id} -> n{to}")
        return True

    def _fault_skew(self) -> Callable[[], None] | bool:
        """One member's clock runs 3x fast or slow: its ticks (elections, heartbeats) and its
        lease timers (the leader's lessor) with it."""
        members = self._members()
        if not members:
            return False
        node = self.rng.choice(members)
        node.now = self.now
        node.set_period(max(2, node.base_period // 3) if self.rng.random() < 0.5 else node.base_period * 3)
        self.trace(f"FAULT n{node.id} clock runs at period {node.period} (nominal {node.base_period})")

        def restore() -> None:
            node.now = self.now
            node.set_period(node.base_period)
        return restore

    def _fault_campaign(self) -> Callable[[], None] | bool:
        members = [n for n in self._members() if n.core.role is not Role.LEADER]
        if not members:
            return False
        node = self.rng.choice(members)
        node.core.campaign()
        self.trace(f"FAULT n{node.id} campaigns")
        return True


def _event(ev: kv_pb2.Event) -> Event:
    kind = EventKind.DELETE if ev.type == kv_pb2.Event.DELETE else EventKind.PUT
    kv = ev.kv
    return Event(kv.mod_revision, bytes(kv.key), kind, bytes(kv.value) if kind is EventKind.PUT else b"", kv.lease)


def _span(entries: list[Entry]) -> str:
    """``5..7 [t3 t3 t4]``: indexes and terms of a batch, short."""
    terms = " ".join(f"t{e.term}" for e in entries[:6]) + (" ..." if len(entries) > 6 else "")
    return f"{entries[0].index}..{entries[-1].index} [{terms}]"
