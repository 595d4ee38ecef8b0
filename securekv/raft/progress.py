"""The leader's view of each peer: how far it matches, what to send next, and flow control."""

from __future__ import annotations

import enum
from collections import deque

from . import quorum
from .types import ConfState


class ProgressState(enum.Enum):
    PROBE = "probe"          # one append per heartbeat until the match point is found
    REPLICATE = "replicate"  # optimistic pipelining inside the inflight window
    SNAPSHOT = "snapshot"    # a snapshot is on its way; nothing else is sent


class Inflights:
    """Last indexes of the append messages in flight to one peer (a bounded FIFO)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._q: deque[int] = deque()

    def add(self, index: int) -> None:
        if self.full():
            raise AssertionError("cannot add into a full inflights window")
        self._q.append(index)

    def free_le(self, index: int) -> None:
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.size

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    __slots__ = ("match", "next", "state", "pending_snapshot", "recent_active", "probe_sent",
                 "inflights", "is_learner", "snapshot_stale")

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = max(next_index, 1)
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Fresh peers count as active so CheckQuorum does not step down right after a change.
        self.recent_active = True
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner
        self.snapshot_stale = False

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_stale = False
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, n: int) -> bool:
        """Record an acknowledgement of index ``n``; False if it is stale."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Back ``next`` off after a rejection of the append at ``rejected``; False if stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def __repr__(self) -> str:
        return (f"Progress(match={self.match}, next={self.next}, state={self.state.value}, "
                f"learner={self.is_learner})")


class ProgressTracker:
    """Current configuration plus per-peer progress and the votes of the running election."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.voters: frozenset[int] = frozenset()
        self.learners: frozenset[int] = frozenset()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(voters=self.voters, learners=self.learners)

    def apply_conf_state(self, cs: ConfState, next_index: int) -> None:
        """Switch to ``cs``; peers new to the configuration start probing at ``next_index``."""
        self.voters = frozenset(cs.voters)
        self.learners = frozenset(cs.learners)
        members = self.voters | self.learners
        for node_id in list(self.progress):
            if node_id not in members:
                del self.progress[node_id]
        for node_id in members:
            pr = self.progress.get(node_id)
            if pr is None:
                self.progress[node_id] = Progress(
                    next_index, self.max_inflight, node_id in self.learners)
            else:
                pr.is_learner = node_id in self.learners

    def is_singleton(self) -> bool:
        return len(self.voters) == 1

    def committed(self) -> int:
        prs = self.progress
        return quorum.committed_index(self.voters, {v: prs[v].match for v in self.voters})

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[int, int, quorum.VoteResult]:
        granted = sum(1 for v in self.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self.votes.get(v) is False)
        return granted, rejected, quorum.vote_result(self.voters, self.votes)

    def quorum_active(self) -> bool:
        votes = {v: self.progress[v].recent_active for v in self.voters}
        return quorum.vote_result(self.voters, votes) is quorum.VoteResult.WON

    def acks_won(self, acks: set[int]) -> bool:
        return quorum.vote_result(self.voters, {a: True for a in acks}) is quorum.VoteResult.WON
