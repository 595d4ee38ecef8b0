"""One seeded simulation run: real Raft nodes over a simulated network, disk and clock.

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

import attrs

from securekv.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
)
from securekv.sim.clients import Client, History, Outstanding
from securekv.sim.kv import Command, KVStateMachine
from securekv.sim.network import LinkFaults, SimNetwork
from securekv.testing.linearizability import OpKind, Outcome, check
from securekv.testing.raft_invariants import InvariantViolation, SafetyMonitor

LIVENESS = "Liveness"
LINEARIZABILITY = "Linearizability"
CORE_PANIC = "Core Panic"
READY_LOOP = "Ready Loop"

TRACE_TAIL = 40


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
    keys: tuple[str, ...] = ("x", "y")
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

    def stats(self) -> dict[str, int]:
        return {
            "commits": self.commits, "elections": self.elections, "faults": self.faults,
            "crashes": self.crashes, "ops": self.ops, "pending_ops": self.pending_ops,
            "messages": self.messages, "snapshots": self.snapshots,
            "conf_changes": self.conf_changes, "undecided": self.undecided,
        }


class SimNode:
    """One member: its disk (a MemoryStorage only the driver writes) survives crashes; the
    RawNode, the state machine and everything else is volatile."""

    def __init__(self, nid: int, storage: MemoryStorage, rng: random.Random, period: int) -> None:
        self.id = nid
        self.storage = storage
        self.rng = rng
        self.period = period
        self.base_period = period
        self.raw: RawNode | None = None
        self.epoch = 0
        self.sm = KVStateMachine()
        self.applied = 0
        self.conf_state = ConfState()
        self.term = 0
        self.role = Role.FOLLOWER
        self.leader = 0
        self.removed = False
        self.crash_stage: int | None = None
        self.writes: dict[tuple[int, int], Outstanding] = {}
        self.reads: dict[bytes, Outstanding] = {}

    @property
    def alive(self) -> bool:
        return self.raw is not None


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
        self.reconfigure = rng.random() < 0.5
        # Workload: busy or idle clients, read- or write-heavy.
        self.think_ticks = rng.choice([3, 3, 20])
        self.read_share = rng.choice([0.35, 0.35, 0.7])
        self.skew_pct = 30 if self.pre_vote else 8
        self.compact_every = rng.choice([8, 25, 10_000])
        self.compact_keep = rng.choice([0, 3])
        self.net = SimNetwork(rng, max_delay=rng.randint(1, 6), long_delay=rng.choice([20, 60]))
        self.nodes: dict[int, SimNode] = {}
        voters = list(range(1, params.nodes + 1))
        for nid in voters:
            self._add_node(nid, MemoryStorage.with_peers(voters))
        self.next_id = params.nodes + 1
        self.clients = {cid: Client(cid) for cid in range(1, params.clients + 1)}
        self.faults = 0
        self.crashes = 0
        self.snapshots = 0
        self.conf_changes = 0
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
        self._applied_cmds: set[tuple[int, int]] = set()
        self._initial_voters = tuple(voters)

    # -- plumbing --------------------------------------------------------------------------
    def _push(self, at: int, kind: str, a: object = None, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b))

    def trace(self, line: str) -> None:
        self._trace.append(f"{self.now:>6} {line}")

    def _config(self, node: SimNode) -> Config:
        return Config(
            id=node.id, storage=node.storage, rng=node.rng, election_tick=self.p.election_tick,
            heartbeat_tick=self.p.heartbeat_tick, applied=node.applied,
            max_size_per_msg=self.max_size_per_msg, max_inflight_msgs=self.max_inflight,
            max_entries_per_msg=self.max_entries_per_msg,
            check_quorum=self.check_quorum, pre_vote=self.pre_vote,
        )

    def _add_node(self, nid: int, storage: MemoryStorage) -> SimNode:
        # Clock skew: each node ticks at its own rate, up to +-30% off nominal.
        spread = max(1, self.p.tick * self.skew_pct // 100)
        period = self.p.tick + self.rng.randint(-spread, spread)
        node = SimNode(nid, storage, random.Random(self.rng.getrandbits(64)), period)
        self.nodes[nid] = node
        self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        hard, conf = node.storage.initial_state()
        snap = node.storage.snapshot()
        node.sm = KVStateMachine.decode(snap.data)
        node.applied = snap.metadata.index
        node.conf_state = conf
        node.term = hard.term
        node.role, node.leader = Role.FOLLOWER, 0
        node.crash_stage = None
        node.raw = RawNode(self._config(node))
        node.epoch += 1
        self.monitor.restarted(node.id, node.applied, hard.commit)
        self._push(self.now + self.rng.randint(1, node.period), "tick", node.id, node.epoch)

    def _leader(self) -> SimNode | None:
        best = None
        for node in self.nodes.values():
            if (node.alive and not node.removed and node.role is Role.LEADER
                    and (best is None or node.term > best.term)):
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
        self._push(self.rng.randint(p.tick * p.election_tick, 3 * p.tick * p.election_tick),
                   "fault")
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
        except Exception as exc:  # the core (or the driver) raised: a bug either way
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._fail(CORE_PANIC, f"{type(exc).__name__}: {exc} "
                       f"(at {where.filename.rsplit('/', 2)[-1]}:{where.lineno} {where.name})")
        undecided = 0
        if self.violation is None:
            undecided = self._check_history()
        return RunResult(
            seed=self.seed, commits=len(self.monitor.committed),
            elections=self.monitor.elections, faults=self.faults, crashes=self.crashes,
            ops=self.history.completed, pending_ops=self.history.abandoned,
            messages=self.net.sent, snapshots=self.snapshots, conf_changes=self.conf_changes,
            end_time=self.now, undecided=undecided, violation=self.violation,
            trace=tuple(self._trace) if self.p.keep_full_trace else (),
        )

    def _fail(self, invariant: str, detail: str) -> None:
        if self.violation is None:
            self.trace(f"VIOLATION {invariant}: {detail.splitlines()[0]}")
            tail = tuple(self._trace)[-TRACE_TAIL:]
            self.violation = Violation(invariant, detail, self.now, tail)

    def _check_history(self) -> int:
        for client in self.clients.values():
            if client.current is not None:
                self.history.abandon(client.current)
                client.current = None
        # A pending op whose command never reached the committed log had no effect (nobody can
        # observe it after the history ends), and a pending read tells nothing: drop both. This
        # keeps the search small and can only make the check stricter.
        ops = [op for op in self.history.ops
               if not op.pending or (op.kind is not OpKind.READ
                                     and (op.client, op.value) in self._applied_cmds)]
        result = check(ops, max_steps_per_key=self.p.max_search_steps)
        if result.outcome is Outcome.VIOLATION:
            self._fail(LINEARIZABILITY, result.explain())
        return sum(1 for k in result.keys if k.outcome is Outcome.UNKNOWN)

    def _lively(self) -> bool:
        return (self._leader() is not None and self.monitor.max_committed > self._heal_commit
                and self._completed_after_heal > 0)

    # -- events ----------------------------------------------------------------------------
    def _on_tick(self, nid: object, epoch: object) -> None:
        node = self.nodes[nid]  # type: ignore[index]
        if node.raw is None or node.epoch != epoch:
            return
        node.raw.tick()
        self._push(self.now + node.period, "tick", node.id, epoch)

    def _on_msg(self, m: object, epoch: object) -> None:
        assert isinstance(m, Message)
        dst = self.nodes.get(m.to)
        src = self.nodes.get(m.frm)
        src_same = src is not None and src.raw is not None and src.epoch == epoch
        if dst is None or dst.raw is None or self.net.blocked(m.frm, m.to):
            if src_same and m.type in (MessageType.APP, MessageType.SNAP, MessageType.HEARTBEAT):
                assert src is not None and src.raw is not None
                if m.type is MessageType.SNAP:
                    src.raw.report_snapshot(m.to, failed=True)
                src.raw.report_unreachable(m.to)
            return
        dst.raw.step(m)
        if m.type is MessageType.SNAP:
            self.snapshots += 1
            self.trace(f"n{m.to} receives snapshot {m.snapshot.metadata.index}@t"  # type: ignore[union-attr]
                       f"{m.snapshot.metadata.term} from n{m.frm}")  # type: ignore[union-attr]
            if src_same:
                src.raw.report_snapshot(m.to, failed=False)  # type: ignore[union-attr]

    def _on_heal(self, _a: object, _b: object) -> None:
        for fid in sorted(self._undo):
            self._undo.pop(fid)()
        self.net.clear()
        for node in self.nodes.values():
            node.period = node.base_period
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
            f"n{n.id}:{n.role.value if n.alive else 'down'}@t{n.term}"
            for n in self.nodes.values() if not n.removed)
        self._fail(LIVENESS,
                   f"{self.p.liveness_ticks} ticks after healing: leader="
                   f"{'n%d' % leader.id if leader else 'none'}, commit "
                   f"{self._heal_commit}->{self.monitor.max_committed}, client ops completed "
                   f"since heal={self._completed_after_heal} [{state}]")
        self.phase = "done"

    # -- Ready handling --------------------------------------------------------------------
    def _drain(self) -> None:
        for node in list(self.nodes.values()):
            rounds = 0
            while node.raw is not None and node.raw.has_ready():
                rounds += 1
                if rounds > 100:
                    raise InvariantViolation(READY_LOOP, f"n{node.id} never runs out of Ready")
                self._handle_ready(node, node.raw.ready())
        if self.monitor.max_committed != self._checked_commit:
            self._checked_commit = self.monitor.max_committed
            if not self.monitor.membership_changed:
                self.monitor.check_electability(
                    {n.id: n.storage for n in self.nodes.values()}, self._initial_voters)

    def _handle_ready(self, node: SimNode, rd: Ready) -> None:
        raw = node.raw
        assert raw is not None
        stage = node.crash_stage
        if (self._leader_trap is not None and rd.soft_state is not None
                and rd.soft_state.role is Role.LEADER):
            stage, self._leader_trap = self._leader_trap, None
            self.trace(f"n{node.id} wins an election and walks into the trap")
            self._push(self.now + self.rng.randint(5 * self.p.tick, 60 * self.p.tick),
                       "restart", node.id, node.epoch + 1)
        st = node.storage
        late = rd.messages
        if self.send_early:
            self._send(node, rd.messages_before_persist())
            late = rd.messages_after_persist()
        if stage == 0 or (stage == 1 and rd.snapshot is not None and not rd.snapshot.is_empty()):
            # A snapshot persisted without the hard state of its Ready is newer than the
            # persisted commit index; recovery must ignore it (etcd's ValidSnapshotEntries),
            # which is the same as never having written it.
            return self._crash(node, "before persisting its Ready")
        # 1. persist: snapshot, entries, hard state (the simulated fsync)
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            meta = rd.snapshot.metadata
            st.apply_snapshot(rd.snapshot)
            self.monitor.observe_snapshot(node.id, meta.index, meta.term)
            node.sm = KVStateMachine.decode(rd.snapshot.data)
            node.applied = meta.index
            node.conf_state = meta.conf_state
            self.trace(f"n{node.id} installs snapshot {meta.index}@t{meta.term} "
                       f"voters={list(meta.conf_state.voters)}")
        kept = 0
        if rd.entries:
            ents = list(rd.entries)
            if stage == 1:
                ents = ents[:self.rng.randrange(len(ents))]  # a torn write keeps a prefix
            if ents:
                self.monitor.before_append(node.id, st, ents)
                st.append(ents)
                self.monitor.after_append(node.id, st, ents)
                self.trace(f"n{node.id} persists {_span(ents)}")
            kept = len(ents)
        if stage == 1:  # a torn write: the hard state goes after the entries, so it is lost
            return self._crash(node, f"mid-write: {kept}/"
                               f"{len(rd.entries)} entries and no hard state persisted")
        if rd.hard_state is not None:
            hs = rd.hard_state
            st.set_hard_state(hs)
            self.monitor.observe_hard_state(node.id, hs.commit, st)
            if hs.term != node.term:
                self.trace(f"n{node.id} term {hs.term} vote {hs.vote} commit {hs.commit}")
            node.term = hs.term
        if stage == 2:
            return self._crash(node, "after persisting, before sending")
        if rd.soft_state is not None:
            node.role, node.leader = rd.soft_state.role, rd.soft_state.leader
            self.trace(f"n{node.id} is {node.role.value} (leader n{node.leader}) term {node.term},"
                       f" log {st.first_index()}..{st.last_index()}")
            if node.role is Role.LEADER:
                self.monitor.observe_leader(node.id, node.term, st)
        # 2. send what had to wait (only now: everything above is durable)
        messages = late
        if stage == 3:
            messages = tuple(m for m in messages if self.rng.random() < 0.5)
        self._send(node, messages)
        if stage == 3:
            return self._crash(node, f"after sending {len(messages)}/{len(late)} messages")
        # 3. apply
        for rs in rd.read_states:
            op = node.reads.get(rs.request_ctx)
            if op is not None and op.read_index is None:
                op.read_index = rs.index
        for e in rd.committed_entries:
            self._apply(node, e)
            if node.raw is None:  # removed by its own conf change
                return None
        if stage == 4:
            return self._crash(node, "after applying, before advance")
        # 4. advance
        raw.advance()
        self._finish_reads(node)
        self._maybe_compact(node)
        return None

    def _send(self, node: SimNode, messages: tuple[Message, ...]) -> None:
        for m in messages:
            for delay in self.net.schedule():
                self._push(self.now + delay, "msg", m, node.epoch)

    def _apply(self, node: SimNode, e: Entry) -> None:
        self.monitor.observe_applied(node.id, e)
        node.applied = e.index
        assert node.raw is not None
        if e.type is EntryType.CONF_CHANGE:
            cc = ConfChange.decode(e.data)
            node.conf_state = node.raw.apply_conf_change(cc)
            if e.term > 0:  # term-0 entries are the founders' bootstrap configuration
                self._conf_applied(e.index, cc)
        elif e.data:
            cmd = Command.decode(e.data)
            res = node.sm.apply(cmd)
            self._applied_cmds.add((cmd.client, cmd.value))
            if not res.duplicate:
                op = node.writes.pop((cmd.client, cmd.req), None)
                if op is not None:
                    self._complete(op, res.result)

    def _conf_applied(self, index: int, cc: ConfChange) -> None:
        if index in self._conf_seen:
            return
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
                self._push(self.now + self.rng.randint(0, 30 * self.p.tick), "shutdown",
                           gone.id)

    def _finish_reads(self, node: SimNode) -> None:
        for ctx, op in list(node.reads.items()):
            if op.read_index is not None and op.read_index <= node.applied:
                del node.reads[ctx]
                self._complete(op, node.sm.data.get(op.key))

    def _maybe_compact(self, node: SimNode) -> None:
        st = node.storage
        if node.applied - st.first_index() < self.compact_every:
            return
        st.create_snapshot(node.applied, node.conf_state, node.sm.encode())
        keep_from = node.applied - self.compact_keep
        if keep_from >= st.first_index():
            st.compact(keep_from)

    # -- crashes ---------------------------------------------------------------------------
    def _crash(self, node: SimNode, why: str, count: bool = True) -> None:
        node.raw = None
        node.crash_stage = None
        node.epoch += 1
        node.role, node.leader = Role.FOLLOWER, 0
        if count:
            self.crashes += 1
        self.trace(f"n{node.id} CRASH {why} (disk: log {node.storage.first_index()}.."
                   f"{node.storage.last_index()}, commit {node.storage.hard_state.commit})")
        for op in list(node.writes.values()) + list(node.reads.values()):
            self._abandon(op)
        node.writes.clear()
        node.reads.clear()

    def _restart(self, node: SimNode) -> None:
        self._boot(node)
        self.trace(f"n{node.id} restarts (disk: log {node.storage.first_index()}.."
                   f"{node.storage.last_index()}, {node.storage.hard_state})")

    # -- clients ---------------------------------------------------------------------------
    def _on_client(self, cid: object, _b: object) -> None:
        client = self.clients[cid]  # type: ignore[index]
        if client.current is not None or self.phase == "done":
            return
        node = self._target(client)
        if node is None:
            return self._client_later(client)
        raw = node.raw
        assert raw is not None
        req = client.next_req
        client.next_req += 1
        key = self.rng.choice(self.p.keys)
        roll = self.rng.random()
        call = self.history.now()
        write_share = (1 - self.read_share) / 2
        if roll < self.read_share:
            op = Outstanding(client.id, req, OpKind.READ, key, call, node.id,
                             ctx=f"{client.id}:{req}".encode())
        elif roll < self.read_share + write_share:
            op = Outstanding(client.id, req, OpKind.WRITE, key, call, node.id,
                             value=client.id * 100_000 + req)
        else:
            pick = self.rng.random()
            expected = client.seen.get(key) if pick < 0.6 else (
                None if pick < 0.8 else self.rng.choice([None, 100_001, 200_002]))
            op = Outstanding(client.id, req, OpKind.CAS, key, call, node.id,
                             value=client.id * 100_000 + req, expected=expected)
        try:
            if op.kind is OpKind.READ:
                raw.read_index(op.ctx)
                node.reads[op.ctx] = op
            else:
                kind = "write" if op.kind is OpKind.WRITE else "cas"
                assert op.value is not None
                raw.propose(Command(client.id, req, kind, key, op.value, op.expected).encode())
                node.writes[(client.id, req)] = op
        except ProposalDropped:
            client.target = None
            return self._client_later(client)  # refused up front: no effect, not recorded
        client.current = op
        self._push(self.now + self.p.client_timeout_ticks * self.p.tick, "timeout", client.id, req)
        return None

    def _target(self, client: Client) -> SimNode | None:
        """Clients stick to the node they believe leads (even a stale, isolated leader) and
        re-discover it — by asking a random member — only after a failure."""
        node = self.nodes.get(client.target) if client.target is not None else None
        if node is not None and node.alive and not node.removed:
            return node
        members = self._members()
        if not members:
            return None
        asked = self.rng.choice(members)
        hint = self.nodes.get(asked.leader)
        if hint is not None and hint.alive and not hint.removed and self.rng.random() < 0.8:
            asked = hint
        client.target = asked.id
        return asked

    def _client_later(self, client: Client) -> None:
        self._push(self.now + self.rng.randint(1, self.think_ticks * self.p.tick), "client",
                   client.id)

    def _on_timeout(self, cid: object, req: object) -> None:
        op = self.clients[cid].current  # type: ignore[index]
        if op is not None and op.req == req:
            node = self.nodes[op.node]
            node.writes.pop((op.client, op.req), None)
            node.reads.pop(op.ctx, None)
            self._abandon(op)
            self.clients[op.client].target = None

    def _complete(self, op: Outstanding, output: object) -> None:
        client = self.clients[op.client]
        if client.current is not op:
            return
        done = self.history.complete(op, output)
        if op.kind is OpKind.READ:
            client.seen[op.key] = output  # type: ignore[assignment]
        elif op.kind is OpKind.WRITE or output:
            client.seen[op.key] = op.value
        if self.phase == "liveness" and op.call > self._heal_clock:
            self._completed_after_heal += 1
        self.trace(f"{done.describe()} (n{op.node})")
        client.current = None
        self._client_later(client)

    def _abandon(self, op: Outstanding) -> None:
        client = self.clients[op.client]
        if client.current is not op:
            return
        self.history.abandon(op)
        client.current = None
        self._client_later(client)

    # -- faults ----------------------------------------------------------------------------
    FAULTS = (("partition", 3), ("bridge", 3), ("asymmetric", 2), ("isolate_leader", 3),
              ("crash", 2), ("crash_leader", 2), ("leader_trap", 1), ("flaky", 2), ("slow", 1), ("membership", 3), ("transfer", 2),
              ("skew", 1), ("campaign", 1))

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
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        a, b = sorted(ids[:cut]), sorted(ids[cut:])
        links = [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]
        return self._cut(links, f"partition {a} | {b}")

    def _fault_bridge(self) -> Callable[[], None] | bool:
        """Cut one link only: connectivity stops being transitive (a sees b and c, b and c
        cannot see each other) — the partial partitions real networks produce."""
        ids = sorted(n.id for n in self.nodes.values() if not n.removed)
        a, b = sorted(self.rng.sample(ids, 2))
        return self._cut([(a, b), (b, a)], f"cut link n{a} <-> n{b}")

    def _fault_asymmetric(self) -> Callable[[], None] | bool:
        ids = sorted(n.id for n in self.nodes.values() if not n.removed)
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
        if leader is None or leader.raw is None:
            return False
        cs = leader.conf_state
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
        try:
            leader.raw.propose_conf_change(cc)
        except ProposalDropped as exc:
            self.trace(f"conf change {cc.type.name} n{cc.node_id} refused: {exc}")
            return False
        if cc.node_id == self.next_id:
            self.next_id += 1
        self.trace(f"FAULT propose {cc.type.name} n{cc.node_id} at leader n{leader.id}")
        return True

    def _fault_transfer(self) -> Callable[[], None] | bool:
        leader = self._leader()
        if leader is None or leader.raw is None:
            return False
        targets = [v for v in leader.conf_state.voters if v != leader.id]
        if not targets:
            return False
        to = self.rng.choice(targets)
        leader.raw.transfer_leader(to)
        self.trace(f"FAULT transfer leadership n{leader.id} -> n{to}")
        return True

    def _fault_skew(self) -> Callable[[], None] | bool:
        members = self._members()
        if not members:
            return False
        node = self.rng.choice(members)
        node.period = max(2, node.base_period // 3) if self.rng.random() < 0.5 else node.base_period * 3
        self.trace(f"FAULT n{node.id} clock runs at period {node.period} (nominal {node.base_period})")

        def restore() -> None:
            node.period = node.base_period
        return restore

    def _fault_campaign(self) -> Callable[[], None] | bool:
        members = [n for n in self._members() if n.role is not Role.LEADER]
        if not members:
            return False
        node = self.rng.choice(members)
        assert node.raw is not None
        node.raw.campaign()
        self.trace(f"FAULT n{node.id} campaigns")
        return True


def _span(entries: list[Entry]) -> str:
    """``5..7 [t3 t3 t4]``: indexes and terms of a batch, short."""
    terms = " ".join(f"t{e.term}" for e in entries[:6]) + (" ..." if len(entries) > 6 else "")
    return f"{entries[0].index}..{entries[-1].index} [{terms}]"
