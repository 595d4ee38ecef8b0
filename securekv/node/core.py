"""The node core: Raft in a member, as one pure state machine (sans-IO).

It owns the ``RawNode``, the in-memory mirror of the log (the Raft ``Storage``) and the
replicated state machine, and keeps the bookkeeping around them: proposals and their
waiting callers (held while no leader is known, failed when they time out), linearizable
reads (one ReadIndex round per batch of reads, released once applied far enough), conf
changes and their callers, lease expiry proposals on the leader, and the decisions to build,
save and install snapshots. It never does I/O: every input returns the effects the driver must
carry out, in order (``securekv/node/effects.py``).

A Ready is handled in two steps, with the driver's I/O between them::

    effects = core.poll()          # maybe starts a Ready: [SendMessages (early)], [InstallSnapshot], [Persist]
    ... the driver sends, installs (then steps SnapshotInstalled), persists (fsync) ...
    effects = core.persisted()     # mirror the log, SendMessages, apply, reads, advance:
                                   # Resolve..., ReadDone..., CommitRows, Applied, [SaveSnapshot]

The trio server (``securekv/server/node.py``) and the simulator (``securekv/sim``) are its two
drivers, so every simulated seed runs the server's own node logic; the Raft unit tests'
network (``tests/raft/raft_testnet.py``) drives it with a recording machine.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

from securekv.errors import UsageError
from securekv.raft import (
    ConfChange,
    ConfState,
    Config,
    DropReason,
    EntryType,
    MessageType,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMetadata,
    SoftState,
)
from securekv.raft.errors import StorageError
from securekv.rpctypes import (ERR_LEARNER_NOT_SUPPORTED, ERR_NO_LEADER, ERR_NO_SPACE, ERR_STOPPED, ERR_TIMEOUT,
                               EtcdError, err)

from . import inputs as I
from .effects import (BuildSnapshot, Effect, InstallSnapshot, LeaderChanged, Persist, ReadDone, Resolve,
                      SaveSnapshot, SendMessages)
from .entry import EntryCodec
from .machine import Machine

#: Entries kept in memory behind a snapshot so slow followers catch up from the log
#: (etcd's SnapshotCatchUpEntries).
CATCHUP_ENTRIES = 5000
#: At most this many ticks are replayed at once (a driver that was starved for a while must
#: not fire many elections' worth of timeouts in one go).
MAX_TICKS = 100


class _Waiter:
    __slots__ = ("request", "token", "deadline")

    def __init__(self, request: Any, token: Any, deadline: float) -> None:
        self.request = request
        self.token = token
        self.deadline = deadline


def _drop_error(exc: ProposalDropped) -> EtcdError:
    """What a caller sees for a refused proposal: no leader, or etcd's generic timeout."""
    return err(ERR_NO_LEADER) if exc.reason is DropReason.NO_LEADER else err(ERR_TIMEOUT)


class NodeCore:
    """One member's node logic. Not thread-safe: the driver's single thread owns it.

    ``clock`` gives the driver's time in seconds (deadlines, lease timers); ``codec`` makes
    the server's own entries (lease revokes). ``send_before_persist`` lets a Ready's messages
    that do not depend on its persistence leave before the Persist effect (etcd's rule).
    ``leader_appends_early`` lets a leader's appends leave before it too, as etcd's raftNode
    sends a leader's messages before ``storage.Save`` (Raft thesis 10.2.1): the followers write
    to their disks while the leader writes to its own. Raft counts the leader's own unpersisted
    entries as matched, so messages received while such a Ready is outstanding are held and
    stepped once it is persisted: no acknowledgement can commit an entry before the leader's
    copy is on disk.
    """

    def __init__(
        self,
        config: Config,
        machine: Machine,
        *,
        clock: Callable[[], float],
        codec: EntryCodec | None = None,
        request_timeout: float = 7.0,
        snapshot_count: int = 100_000,
        snapshot_index: int = 0,
        catchup_entries: int = CATCHUP_ENTRIES,
        send_before_persist: bool = False,
        leader_appends_early: bool = False,
        lease_extend: float = 0.0,
        initial_term: int = 0,
    ) -> None:
        self.member_id = config.id
        self.storage: Any = config.storage
        self.machine = machine
        self.clock = clock
        self.codec = codec
        self.request_timeout = request_timeout
        self.snapshot_count = snapshot_count
        self.snapshot_index = snapshot_index
        self.catchup_entries = catchup_entries
        self.send_before_persist = send_before_persist
        self.leader_appends_early = leader_appends_early
        self._held_messages: list[Any] = []  # received during an early-sending Ready
        self.lease_extend = lease_extend  # seconds a new leader adds to every lease
        self.initial_term = initial_term
        if hasattr(self.storage, "request_snapshot"):
            self.storage.request_snapshot = self._want_snapshot
        self.raw = RawNode(config)
        # counters (etcd's metrics)
        self.leader_changes = 0
        self.proposals_failed = 0
        self.read_indexes_failed = 0
        self.leases_expired = 0
        self.leader = 0
        self.role = Role.FOLLOWER
        self.stopped = False
        self._waiters: dict[Hashable, _Waiter] = {}
        self._held: list[bytes] = []
        self._reads_new: list[Any] = []
        self._reads_sent: dict[bytes, list[Any]] = {}
        self._reads_ready: list[tuple[int, list[Any]]] = []
        self._read_seq = 0
        self._conf_waiters: dict[bytes, tuple[Any, float]] = {}
        self._conf_history: list[tuple[int, ConfState]] = []  # (index, ConfState) of applied conf changes
        self._rd: Ready | None = None
        self._late: tuple[Any, ...] = ()
        self._installing = False
        self._snapshot_wanted = False
        self._snapshot_building = False
        self._saving = False
        self._voters_seen: frozenset[int] | None = None
        self._single_voter = False

    # -- state (cheap: asked per request) ------------------------------------------------------

    @property
    def term(self) -> int:
        return max(self.raw.term, self.initial_term)

    @property
    def is_leader(self) -> bool:
        return self.leader == self.member_id

    @property
    def commit_index(self) -> int:
        return self.raw.commit_index

    @property
    def last_index(self) -> int:
        return self.raw.last_index

    @property
    def applied_index(self) -> int:
        return self.machine.applied_index

    @property
    def pending_proposals(self) -> int:
        return len(self._waiters)

    @property
    def ready(self) -> Ready | None:
        """The Ready being handled (between :meth:`poll` and :meth:`persisted`), read only:
        for the Raft tests' network and the simulator's invariant checks."""
        return self._rd

    @property
    def ready_pending(self) -> bool:
        """A Ready was started by :meth:`poll` and awaits :meth:`persisted`."""
        return self._rd is not None

    def conf_state(self) -> ConfState:
        return self.raw.conf_state()

    def single_voter(self) -> bool:
        """This member is the only voter (cached per configuration: the voter set is replaced,
        never mutated, when the configuration changes)."""
        voters = self.raw.voters
        if voters is not self._voters_seen:
            self._voters_seen = voters
            self._single_voter = voters == frozenset((self.member_id,))
        return self._single_voter

    def is_listed_learner(self) -> bool:
        return self.member_id in self.raw.learners

    def is_learner(self) -> bool:
        """Not (yet) a voter: a learner, or a joining member that has not applied its own
        addition yet (it cannot vote either)."""
        return self.member_id not in self.raw.voters

    def needs_read_index(self, serializable: bool) -> bool:
        """Whether a read must wait for a ReadIndex round. Serializable reads never do (a
        learner serves only those: a linearizable one is refused); linearizable ones always,
        except on the only voter when it leads (every acknowledged write is applied already)."""
        if serializable:
            return False
        if self.is_listed_learner():
            raise err(ERR_LEARNER_NOT_SUPPORTED)
        return not (self.single_voter() and self.is_leader)

    def check_quota(self, request: Any) -> None:
        """With NOSPACE raised, refuse writes before they reach the log (etcd's quota check).
        The first write over the quota still goes through the log: the applier refuses it and
        raises the alarm deterministically on every member."""
        applier = getattr(self.machine, "applier", None)
        if applier is None or not applier.alarms.nospace:
            return
        kind = request.WhichOneof("request")
        if kind is not None and not applier.quota_ok(getattr(request, kind)):
            raise err(ERR_NO_SPACE)

    def conf_state_at(self, index: int) -> ConfState:
        best = None
        for i, state in self._conf_history:
            if i <= index:
                best = state
        if best is not None:
            return best
        return self.storage.snapshot_metadata().conf_state

    # -- inputs ------------------------------------------------------------------------------

    def step(self, inp: I.Input) -> list[Effect]:
        """Feed one typed input (``securekv/node/inputs.py``); the effects to carry out."""
        return _DISPATCH[type(inp)](self, inp)

    def tick(self, count: int = 1) -> list[Effect]:
        raw = self.raw
        for _ in range(min(count, MAX_TICKS)):
            raw.tick()
        out = self._expire(self.clock())
        if self._held and not self._waiters:
            self._held = []  # their callers gave up: nothing left to hold them for
        return out

    def receive(self, message: Any) -> list[Effect]:
        if self._rd is not None and self.leader_appends_early:
            self._held_messages.append(message)  # stepped once this Ready is persisted
            return []
        self.raw.step(message)
        return []

    def unreachable(self, peer: int) -> list[Effect]:
        self.raw.report_unreachable(peer)
        return []

    def snapshot_status(self, peer: int, failed: bool) -> list[Effect]:
        self.raw.report_snapshot(peer, failed)
        return []

    def propose(self, proposals: Sequence[I.Proposal]) -> list[Effect]:
        """One batch of client requests (one append per follower). Without a known leader they
        are held until one appears or they time out."""
        if self.stopped:
            return [Resolve(p.token, None, err(ERR_STOPPED)) for p in proposals if p.token is not None]
        deadline = self.clock() + self.request_timeout
        waiters = self._waiters
        for p in proposals:
            key = p.key
            if key is not None:
                waiters[key] = _Waiter(p.request, p.token, deadline)
        if self.raw.leader == 0:
            # No leader (an election is running): hold them until one appears or they time out.
            self._held.extend(p.data for p in proposals)
            return []
        try:
            self.raw.propose_many([p.data for p in proposals])
        except ProposalDropped as exc:
            error = _drop_error(exc)
            self.proposals_failed += len(proposals)
            out: list[Effect] = []
            for p in proposals:
                if p.key is not None:
                    waiters.pop(p.key, None)
                if p.token is not None:
                    out.append(Resolve(p.token, None, error))
            return out
        return []

    def propose_conf_change(self, change: ConfChange, token: Any) -> list[Effect]:
        """A membership change; ``token`` is resolved once it is applied (and Raft advanced
        past it, so the next conf change is accepted), or fails."""
        if self.stopped:
            return [Resolve(token, None, err(ERR_STOPPED))]
        if self.raw.leader == 0:
            return [Resolve(token, None, err(ERR_NO_LEADER))]
        try:
            self.raw.propose_conf_change(change)
        except ProposalDropped as exc:
            return [Resolve(token, None, _drop_error(exc))]
        self._conf_waiters[change.encode()] = (token, self.clock() + self.request_timeout)
        return []

    def propose_raw(self, data: bytes) -> list[Effect]:
        if not self.stopped:
            try:
                self.raw.propose(data)
            except ProposalDropped:
                pass
        return []

    def read_index(self, token: Any) -> list[Effect]:
        """Queued; every read queued when the driver next calls :meth:`poll` shares one
        ReadIndex request."""
        if self.stopped:
            return [ReadDone((token,), err(ERR_STOPPED))]
        self._reads_new.append(token)
        return []

    def transfer_leader(self, to: int) -> list[Effect]:
        self.raw.transfer_leader(to)
        return []

    def campaign(self) -> list[Effect]:
        self.raw.campaign()
        return []

    def expire_leases(self, limit: int = 1000) -> list[Effect]:
        """On the leader: propose a revoke for every expired lease (through the log, so every
        member revokes it at the same index). The lessor re-offers a lease whose revoke got
        lost, so a dropped proposal is retried."""
        if not self.is_leader or self.stopped or self.codec is None:
            return []
        machine = self.machine
        ids = machine.expired_leases(self.clock(), limit)
        if not ids:
            return []
        datas = [self.codec.encode(machine.revoke_request(lease_id)) for lease_id in ids]
        try:
            self.raw.propose_many(datas)
        except ProposalDropped:
            return []
        self.leases_expired += len(datas)
        return []

    def stop(self) -> list[Effect]:
        """Every waiting caller fails with ERR_STOPPED (not silence)."""
        self.stopped = True
        out: list[Effect] = []
        stopped = err(ERR_STOPPED)
        waiters, self._waiters = self._waiters, {}
        for w in waiters.values():
            if w.token is not None:
                out.append(Resolve(w.token, None, stopped))
        for token, _ in self._conf_waiters.values():
            out.append(Resolve(token, None, stopped))
        self._conf_waiters = {}
        self._held = []
        reads = [t for ts in self._reads_sent.values() for t in ts]
        reads += [t for _, ts in self._reads_ready for t in ts] + self._reads_new
        self._reads_sent, self._reads_ready, self._reads_new = {}, [], []
        if reads:
            out.append(ReadDone(reads, stopped))
        return out

    # -- snapshots ---------------------------------------------------------------------------

    def _want_snapshot(self) -> None:
        """The Raft storage was asked for snapshot data it does not have (a lagging follower):
        the next :meth:`poll` asks the driver to build it."""
        self._snapshot_wanted = True

    def snapshot_built(self, index: int, data: bytes | None) -> list[Effect]:
        self._snapshot_building = False
        self._snapshot_wanted = False
        if data is None:
            return []
        try:
            term = self.storage.term(index)
        except StorageError:
            return []  # the log moved past it meanwhile: Raft asks again
        self.storage.cached = Snapshot(SnapshotMetadata(index, term, self.conf_state_at(index)), bytes(data))
        return []

    def snapshot_saved(self, index: int, term: int, conf_state: ConfState) -> list[Effect]:
        """The backend is durable at ``index`` and the log holds a marker: keep only the
        catch-up tail of the in-memory log behind it."""
        self._saving = False
        if index > self.snapshot_index:
            self.snapshot_index = index
        self.storage.set_marker(index, term, conf_state)
        self.storage.compact_to(index - self.catchup_entries)
        self._conf_history = [(i, s) for i, s in self._conf_history if i >= index] or self._conf_history[-1:]
        return []

    def snapshot_installed(self, applier: Any, membership: Any) -> list[Effect]:
        """The leader's snapshot replaced the state machine (the driver rebuilt ``applier``
        and ``membership`` from it)."""
        rd = self._rd
        if rd is None or rd.snapshot is None or not self._installing:
            raise UsageError("node core: no snapshot is being installed")
        snap = rd.snapshot
        meta = snap.metadata
        replace = getattr(self.machine, "replace", None)
        if replace is not None:
            replace(applier, membership)
        self.storage.apply_snapshot(snap)
        self.snapshot_index = meta.index
        self._conf_history = [(meta.index, meta.conf_state)]
        self._installing = False
        if self.is_leader:
            self.machine.on_leader_change(self.member_id, self.member_id, self.clock(), self.lease_extend)
        return []

    # -- the Ready ---------------------------------------------------------------------------

    def poll(self) -> list[Effect]:
        """Propose held requests once a leader is known, send the batched ReadIndex, ask for
        snapshot data if Raft wants some; then, if Raft has a Ready and none is outstanding,
        start handling it: the effects up to its persistence."""
        out: list[Effect] = []
        raw = self.raw
        if self._held and raw.leader != 0:
            held, self._held = self._held, []
            try:
                raw.propose_many(held)
            except ProposalDropped:
                pass  # their callers time out
        if self._reads_new:
            self._send_reads(out)
        if self._snapshot_wanted and not self._snapshot_building:
            self._snapshot_building = True
            out.append(BuildSnapshot(self.machine.applied_index))
        if self._rd is not None or not raw.has_ready():
            return out
        rd = self._rd = raw.ready()
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state, out)
        if rd.messages and (self.send_before_persist or self.leader_appends_early):
            if self.send_before_persist:
                early, late = list(rd.messages_before_persist()), list(rd.messages_after_persist())
            else:
                early, late = [], list(rd.messages)
            if self.leader_appends_early and rd.must_sync and self.raw.role is Role.LEADER:
                early += [m for m in late if m.type == MessageType.APP]
                late = [m for m in late if m.type != MessageType.APP]
            if early:
                out.append(SendMessages(tuple(early)))
            self._late = tuple(late)
        else:
            self._late = rd.messages
        if rd.snapshot is not None and not rd.snapshot.is_empty():
            self._installing = True
            out.append(InstallSnapshot(rd.snapshot))
        if rd.entries or rd.hard_state is not None:
            out.append(Persist(rd.entries, rd.hard_state, rd.must_sync))
        return out

    def persisted(self) -> list[Effect]:
        """The Ready's state is durable: mirror it into the Raft storage, let the messages go,
        apply the committed entries, release reads, advance."""
        rd = self._rd
        if rd is None:
            raise UsageError("node core: persisted() without a Ready")
        if self._installing:
            raise UsageError("node core: the Ready's snapshot must be installed before its entries")
        st = self.storage
        if rd.entries:
            st.append(rd.entries)
        if rd.hard_state is not None:
            st.set_hard_state(rd.hard_state)
        out: list[Effect] = []
        if self._late:
            out.append(SendMessages(self._late))
            self._late = ()
        for rs in rd.read_states:
            reads = self._reads_sent.pop(rs.request_ctx, None)
            if reads:
                self._reads_ready.append((rs.index, reads))
        conf_done: list[Any] = []
        if rd.committed_entries:
            self._apply(rd.committed_entries, out, conf_done)
        if self._reads_ready:
            self._release_reads(out)
        self.raw.advance()
        self._rd = None
        if self._held_messages:
            held, self._held_messages = self._held_messages, []
            for m in held:
                self.raw.step(m)
        # Woken only now: until Raft knows a conf change is applied it drops the next one
        # ("already pending"), and the caller may propose again as soon as it runs.
        for token in conf_done:
            out.append(Resolve(token, None, None))
        return out

    # -- internals ---------------------------------------------------------------------------

    def _apply(self, entries: Sequence[Any], out: list[Effect], conf_done: list[Any]) -> None:
        machine = self.machine
        raw = self.raw
        waiters = self._waiters
        machine.begin(self.clock(), out)
        for entry in entries:
            index = entry.index
            if entry.type == EntryType.CONF_CHANGE:
                cc = ConfChange.decode(entry.data)
                cs = raw.apply_conf_change(cc)
                self._conf_history.append((index, cs))
                if index > machine.applied_index:
                    machine.apply_conf_change(entry, cc)
                if raw.leader == 0 and tuple(cs.voters) == (self.member_id,):
                    raw.campaign()  # now the only voter (e.g. --force-new-cluster)
                waiter = self._conf_waiters.pop(bytes(entry.data), None)
                if waiter is not None:
                    conf_done.append(waiter[0])
                continue
            if index <= machine.applied_index:
                continue  # replay of an entry the state machine already holds
            waiter = None
            if waiters:
                key = machine.request_key(entry.data)
                if key is not None:
                    waiter = waiters.pop(key, None)
            if waiter is not None:
                result, error = machine.apply_entry(entry, waiter.request)
                if waiter.token is not None:
                    out.append(Resolve(waiter.token, result, error))
            else:
                machine.apply_entry(entry, None)
        last = entries[-1].index
        machine.end(last)
        if (self.snapshot_count > 0 and not self._saving and last - self.snapshot_index >= self.snapshot_count
                and hasattr(self.storage, "set_marker")):
            self._saving = True
            out.append(SaveSnapshot(last, self.storage.term(last), self.conf_state_at(last)))

    def _release_reads(self, out: list[Effect]) -> None:
        applied = self.machine.applied_index
        keep = []
        for index, reads in self._reads_ready:
            if index <= applied:
                out.append(ReadDone(reads, None))
            else:
                keep.append((index, reads))
        self._reads_ready = keep

    def _send_reads(self, out: list[Effect]) -> None:
        reads, self._reads_new = self._reads_new, []
        self._read_seq += 1
        # Unique across members: the leader keys pending reads by context.
        ctx = self.member_id.to_bytes(8, "big") + self._read_seq.to_bytes(8, "big")
        try:
            if self.raw.leader == 0:
                raise ProposalDropped(DropReason.NO_LEADER, read=True)
            self.raw.read_index(ctx)
            self._reads_sent[ctx] = reads
        except ProposalDropped:
            self.read_indexes_failed += len(reads)
            out.append(ReadDone(reads, err(ERR_NO_LEADER)))

    def _on_soft_state(self, soft: SoftState, out: list[Effect]) -> None:
        old = self.leader
        self.leader = soft.leader
        self.role = soft.role
        if old == soft.leader:
            return
        self.leader_changes += 1 if soft.leader else 0
        if soft.leader == 0 or self._reads_sent:
            # Reads sent to a leader that is gone will never be answered: fail them fast.
            pending, self._reads_sent = self._reads_sent, {}
            for reads in pending.values():
                self.read_indexes_failed += len(reads)
                out.append(ReadDone(reads, err(ERR_NO_LEADER)))
        extend = 0.0 if self.single_voter() else self.lease_extend
        self.machine.on_leader_change(old, soft.leader, self.clock(), extend)
        out.append(LeaderChanged(old, soft.leader, self.raw.term))

    def _expire(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self._waiters:
            late = [k for k, w in self._waiters.items() if w.deadline < now]
            if late:
                self.proposals_failed += len(late)
                timeout = err(ERR_TIMEOUT)
                for k in late:
                    w = self._waiters.pop(k)
                    if w.token is not None:
                        out.append(Resolve(w.token, None, timeout))
        if self._conf_waiters:
            late_cc = [k for k, (_, d) in self._conf_waiters.items() if d < now]
            for k in late_cc:
                token, _ = self._conf_waiters.pop(k)
                out.append(Resolve(token, None, err(ERR_TIMEOUT)))
        return out


_DISPATCH: dict[type, Callable[[NodeCore, Any], list[Effect]]] = {
    I.Tick: lambda c, i: c.tick(i.count),
    I.Receive: lambda c, i: c.receive(i.message),
    I.Unreachable: lambda c, i: c.unreachable(i.peer),
    I.SnapshotStatus: lambda c, i: c.snapshot_status(i.peer, i.failed),
    I.Propose: lambda c, i: c.propose(i.proposals),
    I.ProposeConfChange: lambda c, i: c.propose_conf_change(i.change, i.token),
    I.ProposeRaw: lambda c, i: c.propose_raw(i.data),
    I.ReadIndex: lambda c, i: c.read_index(i.token),
    I.TransferLeader: lambda c, i: c.transfer_leader(i.to),
    I.Campaign: lambda c, i: c.campaign(),
    I.ExpireLeases: lambda c, i: c.expire_leases(i.limit),
    I.Persisted: lambda c, i: c.persisted(),
    I.SnapshotInstalled: lambda c, i: c.snapshot_installed(i.applier, i.membership),
    I.SnapshotSaved: lambda c, i: c.snapshot_saved(i.index, i.term, i.conf_state),
    I.SnapshotBuilt: lambda c, i: c.snapshot_built(i.index, i.data),
    I.Stop: lambda c, i: c.stop(),
}

__all__ = ["CATCHUP_ENTRIES", "NodeCore"]
