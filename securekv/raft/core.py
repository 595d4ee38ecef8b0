"""The Raft state machine: ``step`` a message, ``tick`` the clock, per-role behaviour.

Outputs accumulate in ``msgs`` and ``read_states`` (drained by :class:`RawNode`); the log's
unstable part is what must be persisted. Nothing here blocks or performs I/O.
"""

from __future__ import annotations

import enum
from typing import Callable

import attrs

from . import confchange
from .config import Config
from .errors import DropReason, ProposalDropped, RaftError, SnapshotTemporarilyUnavailable, StorageError
from .log import RaftLog
from .progress import ProgressState, ProgressTracker
from .quorum import VoteResult
from .read_only import ReadOnly
from .types import (
    NONE,
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

MT = MessageType

#: Context marking a vote request caused by leadership transfer: it bypasses the leader lease.
CAMPAIGN_TRANSFER = b"CampaignTransfer"


class CampaignType(enum.Enum):
    PRE_ELECTION = "pre-election"
    ELECTION = "election"
    TRANSFER = "transfer"


def vote_resp_type(t: MessageType) -> MessageType:
    return MT.VOTE_RESP if t is MT.VOTE else MT.PRE_VOTE_RESP


def _payload_size(entries: list[Entry] | tuple[Entry, ...]) -> int:
    return sum(len(e.data) for e in entries)


class Raft:
    """One node's consensus state. Use it through :class:`securekv.raft.RawNode`."""

    def __init__(self, c: Config) -> None:
        self.id = c.id
        max_next = c.max_committed_size_per_ready or None
        self.log = RaftLog(c.storage, max_next)
        self.max_msg_size = c.max_size_per_msg
        self.max_msg_entries = c.max_entries_per_msg
        self.max_uncommitted_size = c.max_uncommitted_entries_size
        self.trk = ProgressTracker(c.max_inflight_msgs)
        self.check_quorum = c.check_quorum
        self.pre_vote = c.pre_vote
        self.heartbeat_timeout = c.heartbeat_tick
        self.election_timeout = c.election_tick
        self.rng = c.rng

        self.term = 0
        self.vote = NONE
        self.lead = NONE
        self.state = Role.FOLLOWER
        self.is_learner = False
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = c.election_tick
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.lead_transferee = NONE
        self.read_only = ReadOnly()
        self.pending_read_index_messages: list[Message] = []
        self._step: Callable[[Message], None] = self._step_follower
        self._tick: Callable[[], None] = self._tick_election

        hs, cs = c.storage.initial_state()
        self._switch_to_config(cs)
        if not hs.is_empty():
            self._load_state(hs)
        if c.applied > 0:
            self.log.applied_to(c.applied)
        self.become_follower(self.term, NONE)

    # -- state snapshots -------------------------------------------------------------------
    def soft_state(self) -> SoftState:
        return SoftState(self.lead, self.state)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _load_state(self, hs: HardState) -> None:
        if hs.commit < self.log.committed or hs.commit > self.log.last_index():
            raise RaftError(
                f"{self.id} state.commit {hs.commit} is out of range "
                f"[{self.log.committed}, {self.log.last_index()}]")
        self.log.committed = hs.commit
        self.term = hs.term
        self.vote = hs.vote

    # -- sending ---------------------------------------------------------------------------
    def _send(self, t: MessageType, to: int, term: int | None = None, **fields: object) -> None:
        """Queue a message from us. Votes carry an explicit term; PROP and READ_INDEX carry
        none (they are local requests); everything else carries our current term."""
        if term is None:
            term = 0 if t is MT.PROP or t is MT.READ_INDEX else self.term
        elif term == 0 and not fields.get("reject"):
            raise RaftError(f"term should be set when sending {t.name}")
        self.msgs.append(Message(t, to, self.id, term, **fields))  # type: ignore[arg-type]

    def _forward(self, m: Message, to: int) -> None:
        """Pass a request on to the leader, keeping its origin (``frm``) when it has one."""
        term = 0 if m.type is MT.PROP or m.type is MT.READ_INDEX else self.term
        self.msgs.append(attrs.evolve(m, to=to, frm=m.frm or self.id, term=term))

    def send_append(self, to: int) -> None:
        self.maybe_send_append(to, True)

    def maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        """Send entries (or a snapshot) to ``to`` if its flow control allows; True if sent."""
        pr = self.trk.progress[to]
        if pr.is_paused():
            return False
        log = self.log
        prev_index = pr.next - 1
        try:
            prev_term = log.term(prev_index)
            if self.max_msg_entries:
                hi = min(log.last_index() + 1, pr.next + self.max_msg_entries)
                ents = log.slice(pr.next, hi, self.max_msg_size) if pr.next < hi else []
            else:
                ents = log.entries(pr.next, self.max_msg_size)
        except StorageError:
            return self._maybe_send_snapshot(to)
        if not ents and not send_if_empty:
            return False
        self._send(MT.APP, to, index=prev_index, log_term=prev_term, entries=tuple(ents),
                   commit=log.committed)
        if pr.state is ProgressState.REPLICATE:
            if ents:  # optimistic: assume delivery, keep the pipeline going
                pr.next = ents[-1].index + 1
                pr.inflights.add(ents[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True  # one probe at a time until the follower answers
        return True

    def _maybe_send_snapshot(self, to: int) -> bool:
        pr = self.trk.progress[to]
        if not pr.recent_active:
            return False  # don't ship a snapshot to a peer that may well be down
        try:
            snap = self.log.snapshot()
        except SnapshotTemporarilyUnavailable:
            return False
        if snap.is_empty():
            raise RaftError("need non-empty snapshot")
        self._send(MT.SNAP, to, snapshot=snap)
        pr.become_snapshot(snap.metadata.index)
        return True

    def send_heartbeat(self, to: int, ctx: bytes) -> None:
        # Never tell a follower to commit past what it is known to hold.
        commit = min(self.trk.progress[to].match, self.log.committed)
        self._send(MT.HEARTBEAT, to, commit=commit, context=ctx)

    def bcast_append(self) -> None:
        for pid in sorted(self.trk.progress):
            if pid != self.id:
                self.send_append(pid)

    def bcast_heartbeat(self) -> None:
        self._bcast_heartbeat_with_ctx(self.read_only.last_pending_request_ctx())

    def _bcast_heartbeat_with_ctx(self, ctx: bytes) -> None:
        for pid in sorted(self.trk.progress):
            if pid != self.id:
                self.send_heartbeat(pid, ctx)

    # -- commit / append -------------------------------------------------------------------
    def maybe_commit(self) -> bool:
        return self.log.maybe_commit(self.trk.committed(), self.term)

    def append_entry(self, entries: list[Entry]) -> bool:
        li = self.log.last_index()
        ents = [Entry(self.term, li + 1 + i, e.type, e.data) for i, e in enumerate(entries)]
        if not self._increase_uncommitted_size(ents):
            return False
        li = self.log.append(ents)
        pr = self.trk.progress.get(self.id)
        if pr is not None:
            pr.maybe_update(li)
        self.maybe_commit()
        return True

    def _increase_uncommitted_size(self, ents: list[Entry]) -> bool:
        s = _payload_size(ents)
        if (self.uncommitted_size > 0 and s > 0 and self.max_uncommitted_size > 0
                and self.uncommitted_size + s > self.max_uncommitted_size):
            return False
        self.uncommitted_size += s
        return True

    def reduce_uncommitted_size(self, ents: tuple[Entry, ...] | list[Entry]) -> None:
        if self.state is not Role.LEADER:
            return
        self.uncommitted_size = max(0, self.uncommitted_size - _payload_size(ents))

    # -- role transitions ------------------------------------------------------------------
    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_randomized_election_timeout()
        self.abort_leader_transfer()
        self.trk.reset_votes()
        last = self.log.last_index()
        for pid, pr in self.trk.progress.items():
            learner = pr.is_learner
            pr.__init__(last + 1, self.trk.max_inflight, learner)  # type: ignore[misc]
            if pid == self.id:
                pr.match = last
        self.pending_conf_index = 0
        self.uncommitted_size = 0
        self.read_only = ReadOnly()
        self.pending_read_index_messages = []

    def become_follower(self, term: int, lead: int) -> None:
        self._step = self._step_follower
        self._reset(term)
        self._tick = self._tick_election
        self.lead = lead
        self.state = Role.FOLLOWER

    def become_candidate(self) -> None:
        if self.state is Role.LEADER:
            raise RaftError("invalid transition [leader -> candidate]")
        self._step = self._step_candidate
        self._reset(self.term + 1)
        self._tick = self._tick_election
        self.vote = self.id
        self.state = Role.CANDIDATE

    def become_pre_candidate(self) -> None:
        if self.state is Role.LEADER:
            raise RaftError("invalid transition [leader -> pre-candidate]")
        # Neither term nor vote change: a pre-election must not disturb anyone.
        self._step = self._step_candidate
        self.trk.reset_votes()
        self._tick = self._tick_election
        self.lead = NONE
        self.state = Role.PRE_CANDIDATE

    def become_leader(self) -> None:
        if self.state is Role.FOLLOWER:
            raise RaftError("invalid transition [follower -> leader]")
        self._step = self._step_leader
        self._reset(self.term)
        self._tick = self._tick_heartbeat
        self.lead = self.id
        self.state = Role.LEADER
        pr = self.trk.progress[self.id]
        pr.become_replicate()
        pr.recent_active = True
        # Conf changes proposed before this point may be uncommitted: wait for them.
        self.pending_conf_index = self.log.last_index()
        # The empty entry of our term lets us commit everything before it (and serve reads).
        self.append_entry([Entry(0, 0)])

    # -- ticking ---------------------------------------------------------------------------
    def tick(self) -> None:
        self._tick()

    def _reset_randomized_election_timeout(self) -> None:
        et = self.election_timeout
        self.randomized_election_timeout = et + self.rng.randrange(0, et)

    def past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MT.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.election_timeout:
            self.election_elapsed = 0
            if self.check_quorum:
                self.step(Message(MT.CHECK_QUORUM, frm=self.id))
            if self.state is Role.LEADER:
                self._unstick_snapshots()
                if self.lead_transferee != NONE:
                    self.abort_leader_transfer()
        if self.state is not Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.heartbeat_timeout:
            self.heartbeat_elapsed = 0
            self.step(Message(MT.BEAT, frm=self.id))

    def _unstick_snapshots(self) -> None:
        """A snapshot unanswered for a whole election timeout is presumed lost: probe again.

        The transport should call ``report_snapshot``; this is the fallback when it cannot know.
        """
        for pid, pr in self.trk.progress.items():
            if pid == self.id or pr.state is not ProgressState.SNAPSHOT:
                continue
            if pr.snapshot_stale:
                pr.become_probe()
            else:
                pr.snapshot_stale = True

    # -- elections -------------------------------------------------------------------------
    def promotable(self) -> bool:
        pr = self.trk.progress.get(self.id)
        return pr is not None and not pr.is_learner and not self.log.has_pending_snapshot()

    def _has_unapplied_conf_change(self) -> bool:
        if self.log.applied >= self.log.committed:
            return False
        lo = max(self.log.applied + 1, self.log.first_index())
        for e in self.log.slice(lo, self.log.committed + 1):
            if e.type is EntryType.CONF_CHANGE:
                return True
        return False

    def hup(self, t: CampaignType) -> None:
        if self.state is Role.LEADER or not self.promotable():
            return
        if self._has_unapplied_conf_change():
            return  # our configuration may be about to change; wait until it is applied
        self.campaign(t)

    def campaign(self, t: CampaignType) -> None:
        if t is CampaignType.PRE_ELECTION:
            self.become_pre_candidate()
            vote_msg = MT.PRE_VOTE
            term = self.term + 1  # the term we would campaign in; our own term is untouched
        else:
            self.become_candidate()
            vote_msg = MT.VOTE
            term = self.term
        if self._poll(self.id, True) is VoteResult.WON:
            # Single voter: won straight away.
            if t is CampaignType.PRE_ELECTION:
                self.campaign(CampaignType.ELECTION)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if t is CampaignType.TRANSFER else b""
        last = self.log.last_index()
        last_term = self.log.last_term()
        for pid in sorted(self.trk.voters):
            if pid == self.id:
                continue
            self._send(vote_msg, pid, term=term, index=last, log_term=last_term,
                       context=ctx)

    def _poll(self, pid: int, granted: bool) -> VoteResult:
        self.trk.record_vote(pid, granted)
        return self.trk.tally_votes()[2]

    # -- the step function -----------------------------------------------------------------
    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message or forwarded request
        elif m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.election_timeout)
                if not force and in_lease:
                    # We heard from a live leader within the election timeout: ignore the
                    # vote so a rejoining, partitioned node cannot depose it.
                    return
            if m.type is MT.PRE_VOTE:
                pass  # never change our term because of a pre-vote
            elif m.type is MT.PRE_VOTE_RESP and not m.reject:
                pass  # the term is ours-to-be; we bump it only if we win the pre-election
            elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.check_quorum or self.pre_vote) and m.type in (MT.HEARTBEAT, MT.APP):
                # A stale leader; answering with our term makes it step down. Without this a
                # node partitioned with CheckQuorum/Pre-Vote could never rejoin.
                self._send(MT.APP_RESP, m.frm)
            elif m.type is MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.frm, term=self.term, reject=True)
            return

        t = m.type
        if t is MT.HUP:
            self.hup(CampaignType.PRE_ELECTION if self.pre_vote else CampaignType.ELECTION)
        elif t is MT.VOTE or t is MT.PRE_VOTE:
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t is MT.PRE_VOTE and m.term > self.term)
            )
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                self._send(vote_resp_type(t), m.frm, term=m.term)
                if t is MT.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(vote_resp_type(t), m.frm, term=self.term, reject=True)
        else:
            self._step(m)

    # -- leader ----------------------------------------------------------------------------
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MT.BEAT:
            self.bcast_heartbeat()
            return
        if t is MT.CHECK_QUORUM:
            if not self.trk.quorum_active():
                self.become_follower(self.term, NONE)
            else:
                for pid, pr in self.trk.progress.items():
                    if pid != self.id:
                        pr.recent_active = False
            return
        if t is MT.PROP:
            self._leader_propose(m)
            return
        if t is MT.READ_INDEX:
            if self.trk.is_singleton():
                self._response_to_read_index_req(m, self.log.committed)
            elif not self._committed_entry_in_current_term():
                # Our commit index may lag the previous leader's until an entry of our term
                # commits; answer then.
                self.pending_read_index_messages.append(m)
            else:
                self._send_read_index_quorum_check(m)
            return

        pr = self.trk.progress.get(m.frm)
        if pr is None:
            return
        if t is MT.APP_RESP:
            pr.recent_active = True
            if m.reject:
                next_probe = m.reject_hint
                if m.log_term > 0:
                    # Skip every entry of ours whose term is above the follower's conflict term.
                    next_probe = self.log.find_conflict_by_term(m.reject_hint, m.log_term)[0]
                if pr.maybe_decr_to(m.index, next_probe):
                    if pr.state is ProgressState.REPLICATE:
                        pr.become_probe()
                    self.send_append(m.frm)
                return
            old_paused = pr.is_paused()
            if not pr.maybe_update(m.index):
                return
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT:
                if pr.match + 1 >= self.log.first_index():
                    pr.become_probe()
                    pr.become_replicate()
            elif pr.state is ProgressState.REPLICATE:
                pr.inflights.free_le(m.index)
            if self.maybe_commit():
                self._release_pending_read_index_messages()
                self.bcast_append()
            elif old_paused:
                self.send_append(m.frm)
            # Pipelining: keep the window full.
            while self.maybe_send_append(m.frm, False):
                pass
            if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                self._send_timeout_now(m.frm)
        elif t is MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self.send_append(m.frm)
            if not m.context:
                return
            acks = self.read_only.recv_ack(m.frm, m.context)
            if acks is None or not self.trk.acks_won(acks):
                return
            for rs in self.read_only.advance(m.context):
                self._response_to_read_index_req(rs.req, rs.index)
        elif t is MT.SNAP_STATUS:
            if pr.state is not ProgressState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            # Wait for an append response or heartbeat response before probing again.
            pr.probe_sent = True
        elif t is MT.UNREACHABLE:
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
        elif t is MT.TRANSFER_LEADER:
            if pr.is_learner:
                return
            transferee = m.frm
            if self.lead_transferee != NONE:
                if self.lead_transferee == transferee:
                    return
                self.abort_leader_transfer()
            if transferee == self.id:
                return
            # Transfer must finish within one election timeout or it is aborted.
            self.election_elapsed = 0
            self.lead_transferee = transferee
            if pr.match == self.log.last_index():
                self._send_timeout_now(transferee)
            else:
                self.send_append(transferee)

    def _leader_propose(self, m: Message) -> None:
        if not m.entries:
            raise RaftError("stepped empty proposal")
        if self.id not in self.trk.progress:
            raise ProposalDropped(DropReason.REMOVED)
        if self.lead_transferee != NONE:
            raise ProposalDropped(DropReason.TRANSFERRING)
        for e in m.entries:
            if e.type is EntryType.CONF_CHANGE:
                if self.pending_conf_index > self.log.applied:
                    raise ProposalDropped(DropReason.CONF_CHANGE_PENDING)
                try:
                    ConfChange.decode(e.data)  # refuse garbage before it reaches the log
                except ValueError as exc:
                    raise ProposalDropped(DropReason.BAD_CONF_CHANGE, str(exc)) from None
        if not self.append_entry(list(m.entries)):
            raise ProposalDropped(DropReason.TOO_MANY_UNCOMMITTED)
        for e in m.entries:
            if e.type is EntryType.CONF_CHANGE:
                self.pending_conf_index = self.log.last_index()
        self.bcast_append()

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.zero_term_on_err(self.log.committed) == self.term

    def _send_read_index_quorum_check(self, m: Message) -> None:
        self.read_only.add_request(self.log.committed, m)
        self.read_only.recv_ack(self.id, m.context)
        self._bcast_heartbeat_with_ctx(m.context)

    def _release_pending_read_index_messages(self) -> None:
        if not self.pending_read_index_messages or not self._committed_entry_in_current_term():
            return
        msgs, self.pending_read_index_messages = self.pending_read_index_messages, []
        for m in msgs:
            self._send_read_index_quorum_check(m)

    def _response_to_read_index_req(self, req: Message, index: int) -> None:
        if req.frm == NONE or req.frm == self.id:
            self.read_states.append(ReadState(index, req.context))
        else:
            self._send(MT.READ_INDEX_RESP, req.frm, index=index, context=req.context)

    def _send_timeout_now(self, to: int) -> None:
        self._send(MT.TIMEOUT_NOW, to)

    def abort_leader_transfer(self) -> None:
        self.lead_transferee = NONE

    # -- candidate / pre-candidate ---------------------------------------------------------
    def _step_candidate(self, m: Message) -> None:
        my_resp = MT.PRE_VOTE_RESP if self.state is Role.PRE_CANDIDATE else MT.VOTE_RESP
        t = m.type
        if t is MT.PROP:
            raise ProposalDropped(DropReason.NO_LEADER)
        if t is MT.READ_INDEX:
            raise ProposalDropped(DropReason.NO_LEADER, read=True)
        if t is MT.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append_entries(m)
        elif t is MT.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t is MT.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t is my_resp:
            res = self._poll(m.frm, not m.reject)
            if res is VoteResult.WON:
                if self.state is Role.PRE_CANDIDATE:
                    self.campaign(CampaignType.ELECTION)
                else:
                    self.become_leader()
                    self.bcast_append()
            elif res is VoteResult.LOST:
                # A pre-vote rejection carries the rejecter's term; stay at ours otherwise.
                self.become_follower(self.term, NONE)

    # -- follower --------------------------------------------------------------------------
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MT.PROP:
            if self.lead == NONE:
                raise ProposalDropped(DropReason.NO_LEADER)
            self._forward(m, self.lead)
        elif t is MT.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append_entries(m)
        elif t is MT.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t is MT.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t is MT.TRANSFER_LEADER:
            if self.lead == NONE:
                return
            self._forward(m, self.lead)
        elif t is MT.TIMEOUT_NOW:
            # Campaign right away, bypassing Pre-Vote and the peers' leader lease.
            self.hup(CampaignType.TRANSFER)
        elif t is MT.READ_INDEX:
            if self.lead == NONE:
                raise ProposalDropped(DropReason.NO_LEADER, read=True)
            self._forward(m, self.lead)
        elif t is MT.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append_entries(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(MT.APP_RESP, m.frm, index=self.log.committed)
            return
        last_new, ok = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if ok:
            self._send(MT.APP_RESP, m.frm, index=last_new)
            return
        # Hint the leader at the last index whose term is <= the term it probed with, so it
        # can skip whole terms of conflicting entries in one round trip.
        hint_index = min(m.index, self.log.last_index())
        hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.log_term)
        self._send(MT.APP_RESP, m.frm, index=m.index, reject=True,
                   reject_hint=hint_index, log_term=hint_term)

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context)

    def _handle_snapshot(self, m: Message) -> None:
        assert m.snapshot is not None
        if self.restore(m.snapshot):
            self._send(MT.APP_RESP, m.frm, index=self.log.last_index())
        else:
            self._send(MT.APP_RESP, m.frm, index=self.log.committed)

    def restore(self, s: Snapshot) -> bool:
        """Install a leader's snapshot; False if it is stale or we already have its entries."""
        md = s.metadata
        if md.index <= self.log.committed:
            return False
        if self.state is not Role.FOLLOWER:
            self.become_follower(self.term + 1, NONE)  # defensive: should never happen
            return False
        cs = md.conf_state
        if (self.id not in cs.voters and self.id not in cs.learners
                and self.id in self.trk.progress):
            # A member being sent a snapshot of a configuration without it: refuse. A node
            # that is not in any configuration yet (just added, log compacted since) accepts
            # it and learns of its own addition from the entries after the snapshot.
            return False
        if self.log.match_term(md.index, md.term):
            # We already hold the snapshot's last entry: just fast-forward the commit index.
            self.log.commit_to(md.index)
            return False
        self.log.restore(s)
        self.trk = ProgressTracker(self.trk.max_inflight)
        self._switch_to_config(cs)
        pr = self.trk.progress.get(self.id)
        if pr is not None:
            pr.maybe_update(pr.next - 1)
        return True

    # -- membership ------------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        new = confchange.apply_change(self.trk.conf_state(), cc)
        if new is None:
            return self.trk.conf_state()
        return self._switch_to_config(new)

    def _switch_to_config(self, cs: ConfState) -> ConfState:
        self.trk.apply_conf_state(cs, self.log.last_index() + 1)
        if self.id in self.trk.progress and self.state is Role.LEADER:
            self.trk.progress[self.id].match = max(self.trk.progress[self.id].match,
                                                   self.log.last_index())
        pr = self.trk.progress.get(self.id)
        self.is_learner = pr is not None and pr.is_learner
        if (pr is None or pr.is_learner) and self.state is Role.LEADER:
            # Removed or demoted: a leader that is not a voter must not keep leading.
            self.become_follower(self.term, NONE)
            return self.trk.conf_state()
        if self.state is not Role.LEADER or not self.trk.voters:
            return self.trk.conf_state()
        if self.maybe_commit():
            # The quorum shrank and that committed more: tell everyone.
            self._release_pending_read_index_messages()
            self.bcast_append()
        else:
            for pid in sorted(self.trk.progress):
                if pid != self.id:
                    self.maybe_send_append(pid, False)
        if self.lead_transferee != NONE and self.lead_transferee not in self.trk.voters:
            self.abort_leader_transfer()
        return self.trk.conf_state()
