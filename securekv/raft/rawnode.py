"""RawNode: the application-facing handle on a Raft node (inputs in, Ready batches out)."""

from __future__ import annotations

from typing import Mapping, Sequence

import attrs

from .config import Config
from .core import Raft
from .errors import ProposalDropped, StepLocalMessage
from .types import (
    LOCAL_MESSAGES,
    NONE,
    RESPONSE_MESSAGES,
    SEND_BEFORE_PERSIST,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    ReadState,
    Role,
    SoftState,
)
from securekv.errors import UsageError


@attrs.frozen
class ProgressView:
    match: int
    next: int
    state: str
    recent_active: bool
    is_learner: bool


@attrs.frozen
class BasicStatus:
    """The cheap part of :class:`Status` (no per-peer progress): what callers ask often."""

    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    leader: int
    role: Role
    lead_transferee: int


@attrs.frozen
class Status:
    id: int
    hard_state: HardState
    soft_state: SoftState
    applied: int
    lead_transferee: int
    conf_state: ConfState
    progress: Mapping[int, ProgressView]


class RawNode:
    """Drive with :meth:`tick`/:meth:`step`/proposals; drain with :meth:`ready`/:meth:`advance`.

    Not thread-safe, by design: the caller owns the single thread of control.
    """

    def __init__(self, config: Config) -> None:
        self._raft = Raft(config)
        self._prev_soft = self._raft.soft_state()
        self._prev_hard = self._raft.hard_state()
        self._pending: Ready | None = None

    @property
    def id(self) -> int:
        return self._raft.id

    @property
    def raft(self) -> Raft:
        """The underlying state machine, for the core's own tests and invariant checks. Read
        only; everything else uses the accessors below (or :meth:`status`)."""
        return self._raft

    # -- status accessors (cheap: read on every request by the server) ---------------------
    @property
    def leader(self) -> int:
        """The leader this node knows of (``NONE`` = none)."""
        return self._raft.lead

    @property
    def term(self) -> int:
        return self._raft.term

    @property
    def role(self) -> Role:
        return self._raft.state

    @property
    def commit_index(self) -> int:
        return self._raft.log.committed

    @property
    def applied_index(self) -> int:
        return self._raft.log.applied

    @property
    def last_index(self) -> int:
        return self._raft.log.last_index()

    @property
    def voters(self) -> frozenset[int]:
        """The voters of the current configuration. The set is replaced (never mutated) when
        the configuration changes, so callers may cache on its identity."""
        return self._raft.trk.voters

    @property
    def learners(self) -> frozenset[int]:
        return self._raft.trk.learners

    def conf_state(self) -> ConfState:
        return self._raft.trk.conf_state()

    def basic_status(self) -> BasicStatus:
        r = self._raft
        return BasicStatus(r.id, r.term, r.vote, r.log.committed, r.log.applied, r.log.last_index(),
                           r.lead, r.state, r.lead_transferee)

    # -- inputs ----------------------------------------------------------------------------
    def tick(self) -> None:
        self._raft.tick()

    def campaign(self) -> None:
        self._raft.step(Message(MessageType.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        """Raises ProposalDropped if this node cannot accept (or forward) the proposal."""
        self._raft.step(Message(MessageType.PROP, frm=self.id,
                                entries=(Entry(0, 0, EntryType.NORMAL, bytes(data)),)))

    def propose_many(self, datas: Sequence[bytes]) -> None:
        """Propose several entries as one batch (one append message per follower)."""
        if not datas:
            return
        self._raft.step(Message(MessageType.PROP, frm=self.id, entries=tuple(
            Entry(0, 0, EntryType.NORMAL, bytes(d)) for d in datas)))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self._raft.step(Message(MessageType.PROP, frm=self.id,
                                entries=(Entry(0, 0, EntryType.CONF_CHANGE, cc.encode()),)))

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; ``context`` must be unique among pending reads.
        The answer is a ``ReadState`` with the same ``request_ctx`` in a later Ready."""
        self._raft.step(Message(MessageType.READ_INDEX, context=bytes(context)))

    def transfer_leader(self, to: int) -> None:
        """Ask the leader to hand leadership to ``to`` (ignored if there is no leader)."""
        self._raft.step(Message(MessageType.TRANSFER_LEADER, frm=to))

    def step(self, m: Message) -> None:
        """Feed a message received from a peer."""
        if m.type in LOCAL_MESSAGES:
            raise StepLocalMessage(f"raft: cannot step raft local message {m.type.name}")
        if m.type in RESPONSE_MESSAGES and m.frm not in self._raft.trk.progress:
            return  # a response from a peer no longer (or not yet) in our configuration
        try:
            self._raft.step(m)
        except ProposalDropped:
            pass  # a forwarded request that cannot be served here; the origin will time out

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed conf change; returns the resulting configuration (unchanged if the
        change was invalid, e.g. removing the last voter)."""
        return self._raft.apply_conf_change(cc)

    def report_unreachable(self, node_id: int) -> None:
        self._raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        self._raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=failed))

    # -- outputs ---------------------------------------------------------------------------
    def has_ready(self) -> bool:
        r = self._raft
        if self._pending is not None:
            return False
        if r.msgs or r.read_states or r.log.unstable.entries or r.log.has_pending_snapshot():
            return True
        if r.log.has_next_ents():
            return True
        soft = self._prev_soft
        if soft.leader != r.lead or soft.role is not r.state:
            return True
        hard = self._prev_hard
        return (r.term, r.vote, r.log.committed) != (hard.term, hard.vote, hard.commit)

    def ready(self) -> Ready:
        if self._pending is not None:
            raise UsageError("raft: advance() the previous Ready before asking for another")
        r = self._raft
        prev_soft, prev_hard = self._prev_soft, self._prev_hard
        soft = prev_soft
        if prev_soft.leader != r.lead or prev_soft.role is not r.state:
            soft = r.soft_state()
        hard = prev_hard
        if (r.term, r.vote, r.log.committed) != (prev_hard.term, prev_hard.vote, prev_hard.commit):
            hard = r.hard_state()
        entries = tuple(r.log.unstable.entries)
        snap = r.log.unstable.snapshot
        must_sync = (bool(entries) or snap is not None or hard.term != prev_hard.term
                     or hard.vote != prev_hard.vote)
        # (Empty parts cost nothing to build: a lone put's Ready on one member has no
        # messages and no read states.)
        messages: tuple[Message, ...] = ()
        after_persist: tuple[bool, ...] = ()
        if r.msgs:
            messages = tuple(r.msgs)
            r.msgs = []
            # Without anything to sync, nothing a message could depend on is at risk.
            after_persist = tuple(must_sync and m.type not in SEND_BEFORE_PERSIST for m in messages)
        read_states: tuple[ReadState, ...] = ()
        if r.read_states:
            read_states = tuple(r.read_states)
            r.read_states = []
        rd = Ready(
            soft_state=soft if soft is not prev_soft else None,
            hard_state=hard if hard is not prev_hard else None,
            read_states=read_states,
            entries=entries,
            snapshot=snap,
            committed_entries=tuple(r.log.next_ents()),
            messages=messages,
            must_sync=must_sync,
            after_persist=after_persist,
        )
        self._prev_soft = soft
        self._prev_hard = hard
        self._pending = rd
        return rd

    def advance(self) -> None:
        """The last Ready was fully handled (persisted, sent, applied)."""
        rd = self._pending
        if rd is None:
            raise UsageError("raft: advance() without a pending Ready")
        self._pending = None
        r = self._raft
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.metadata.index)
            if rd.snapshot.metadata.index > r.log.applied:
                r.log.applied_to(rd.snapshot.metadata.index)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)
            r.reduce_uncommitted_size(rd.committed_entries)
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)

    def status(self) -> Status:
        r = self._raft
        progress: dict[int, ProgressView] = {}
        if r.lead == r.id and r.lead != NONE:
            progress = {
                pid: ProgressView(pr.match, pr.next, pr.state.value, pr.recent_active,
                                  pr.is_learner)
                for pid, pr in sorted(r.trk.progress.items())
            }
        return Status(r.id, r.hard_state(), r.soft_state(), r.log.applied, r.lead_transferee,
                      r.trk.conf_state(), progress)
