"""Runs seeds: owns the only ``random.Random`` construction (one per seed) and aggregates
results in seed order, so the summary is identical however the seeds were scheduled."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import attrs

from securekv.raft import Entry, Message, RawNode, Ready, ReadState
from securekv.sim.world import RunResult, SimParams, Simulation

#: Deliberately broken rules ``--inject-bug`` can patch into the Raft core or the node core
#: (see inject_bug).
BUGS = ("figure8", "figure8-with-noop", "local-reads", "send-before-persist", "ack-before-fsync",
        "apply-before-commit", "follower-read-without-readindex")
NODE_CORE_BUGS = ("ack-before-fsync", "apply-before-commit", "follower-read-without-readindex")


def run_seed(seed: int, params: SimParams, bug: str | None = None) -> RunResult:
    """One deterministic run: everything random derives from ``random.Random(seed)``."""
    with inject_bug(bug):
        return Simulation(seed, random.Random(seed), params).run()


@contextlib.contextmanager
def inject_bug(bug: str | None) -> Iterator[None]:
    """Temporarily break a rule of the core, to prove the simulator notices (never in
    production: only ``--inject-bug`` and the tests use it). Patches classes, not source."""
    if bug is None:
        yield
        return
    if bug not in BUGS:
        raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
    if bug in NODE_CORE_BUGS:
        with _node_core_bug(bug):
            yield
        return
    from securekv.raft.core import Raft
    from securekv.raft.log import RaftLog

    saved = {(RaftLog, "maybe_commit"): RaftLog.maybe_commit,
             (Raft, "become_leader"): Raft.become_leader,
             (Raft, "append_entry"): Raft.append_entry,
             (RawNode, "read_index"): RawNode.read_index,
             (Ready, "messages_before_persist"): Ready.messages_before_persist,
             (Ready, "messages_after_persist"): Ready.messages_after_persist}

    def everything_early(self: Ready) -> tuple[Message, ...]:
        # Votes and append acknowledgements leave before the state they promise is durable:
        # a crash inside the Ready breaks the promise (seeds that send early only).
        return self.messages

    def nothing_late(self: Ready) -> tuple[Message, ...]:
        return ()

    def read_index_locally(self: RawNode, context: bytes) -> None:
        # Answers every ReadIndex at once from whatever this node has applied, without asking
        # a quorum whether it is (still) the leader: etcd's "serializable" read sold as
        # linearizable. Only the client-history check can see this one.
        self.raft.read_states.append(ReadState(0, bytes(context)))

    def commit_by_counting_only(self: RaftLog, max_index: int, term: int) -> bool:
        # Raft paper, Figure 8: an entry of an earlier term is committed as soon as a
        # majority stores it (the correct rule also demands that it is of the current term).
        if max_index > self.committed:
            self.commit_to(max_index)
            return True
        return False

    def become_leader_without_noop(self: Raft) -> None:
        # The paper's Figure 8 leader does not open its term with an empty entry; without
        # this, the no-op (of the current term) usually reaches a majority together with the
        # old entries and hides the broken commit rule.
        self._sim_skip_noop = True  # type: ignore[attr-defined]
        try:
            saved[(Raft, "become_leader")](self)
        finally:
            self._sim_skip_noop = False  # type: ignore[attr-defined]

    def append_entry(self: Raft, entries: list[Entry]) -> bool:
        if getattr(self, "_sim_skip_noop", False):
            return True
        return saved[(Raft, "append_entry")](self, entries)

    if bug == "local-reads":
        RawNode.read_index = read_index_locally  # type: ignore[method-assign]
    elif bug == "send-before-persist":
        Ready.messages_before_persist = everything_early  # type: ignore[method-assign]
        Ready.messages_after_persist = nothing_late  # type: ignore[method-assign]
    else:
        RaftLog.maybe_commit = commit_by_counting_only  # type: ignore[method-assign]
    if bug == "figure8":
        Raft.become_leader = become_leader_without_noop  # type: ignore[method-assign]
        Raft.append_entry = append_entry  # type: ignore[method-assign]
    try:
        yield
    finally:
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)


@contextlib.contextmanager
def _node_core_bug(bug: str) -> Iterator[None]:
    """Break the node core (``securekv/node/core.py``), the server's own Ready step."""
    from securekv.node import effects as fx
    from securekv.node.core import NodeCore
    from securekv.raft import EntryType

    saved = {"poll": NodeCore.poll, "persisted": NodeCore.persisted, "needs_read_index": NodeCore.needs_read_index}

    def poll_acking_early(self: NodeCore) -> list[fx.Effect]:
        # The Ready's acknowledgements leave before the Ready is durable: the messages that
        # promise it is persisted (append acks, votes) go out with the early batch, and the
        # committed entries are applied and their callers answered before the Persist effect.
        # A crash or power loss in between loses what a follower acknowledged, or what a
        # single voter committed and answered from its own unsynced log.
        out = saved["poll"](self)
        rd = self._rd
        if rd is None:
            return out
        early: list[fx.Effect] = []
        if self._late:
            early.append(fx.SendMessages(tuple(self._late)))
            self._late = ()
        normal = []  # up to the first conf change (those stay in order, in persisted())
        for e in rd.committed_entries if not self._installing else ():
            if e.type is not EntryType.NORMAL:
                break
            normal.append(e)
        if normal:
            saving, self._saving = self._saving, True  # no snapshot of entries not yet in the log
            try:
                self._apply(normal, early, [])  # persisted() skips them as replays
            finally:
                self._saving = saving
        at = next((i for i, e in enumerate(out) if type(e) in (fx.Persist, fx.InstallSnapshot)), len(out))
        out[at:at] = early
        return out

    def persisted_applying_uncommitted(self: NodeCore) -> list[fx.Effect]:
        # Entries are applied (and their callers answered) as soon as they are in the log,
        # before a quorum has them: a leader change can overwrite what was acknowledged.
        out = saved["persisted"](self)
        machine = self.machine
        first, last = machine.applied_index + 1, self.raw.last_index
        if last >= first:
            extra = []
            for e in self.storage.entries(first, last + 1):
                if e.type is not EntryType.NORMAL:
                    break
                extra.append(e)
            if extra:
                self._apply(extra, out, [])
        return out

    def reads_locally_on_followers(self: NodeCore, serializable: bool) -> bool:
        # A follower serves a linearizable read from its own state, without asking the leader
        # for a read index: it may be behind (or partitioned away).
        saved["needs_read_index"](self, serializable)  # keeps the learner refusal
        return not serializable and self.is_leader and not self.single_voter()

    patch = {"ack-before-fsync": ("poll", poll_acking_early),
             "apply-before-commit": ("persisted", persisted_applying_uncommitted),
             "follower-read-without-readindex": ("needs_read_index", reads_locally_on_followers)}[bug]
    setattr(NodeCore, patch[0], patch[1])
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(NodeCore, name, fn)


def _run_chunk(seeds: Sequence[int], params: SimParams, bug: str | None) -> list[RunResult]:
    return [run_seed(s, params, bug) for s in seeds]


def run_seeds(seeds: Sequence[int], params: SimParams, jobs: int = 1,
              bug: str | None = None, fail_fast: bool = False) -> list[RunResult]:
    """Results in the order of ``seeds``; ``jobs > 1`` spreads seeds over processes.
    ``fail_fast`` runs seeds in order in this process and stops after the first violation."""
    if fail_fast:
        results = []
        for s in seeds:
            results.append(run_seed(s, params, bug))
            if results[-1].violation is not None:
                break
        return results
    if jobs <= 1 or len(seeds) <= 1:
        return _run_chunk(seeds, params, bug)
    chunks = [list(seeds[i::jobs]) for i in range(jobs)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        parts = list(pool.map(_run_chunk, chunks, [params] * jobs, [bug] * jobs))
    by_seed = {r.seed: r for part in parts for r in part}
    return [by_seed[s] for s in seeds]


def summarize(results: Sequence[RunResult], params: SimParams) -> dict[str, object]:
    """The JSON summary: counts only (no wall-clock fields), so equal seeds give equal JSON."""
    totals: dict[str, int] = {}
    for r in results:
        for k, v in r.stats().items():
            totals[k] = totals.get(k, 0) + v
    failed = [
        {"seed": r.seed, "invariant": r.violation.invariant, "detail": r.violation.detail}
        for r in results if r.violation is not None
    ]
    return {
        "seeds": len(results),
        "first_seed": results[0].seed if results else None,
        "nodes": params.nodes,
        "ticks": params.chaos_ticks,
        **totals,
        "violations": len(failed),
        "failures": failed,
    }


def params_for(nodes: int, ticks: int | None = None, full_trace: bool = False) -> SimParams:
    base = SimParams(nodes=nodes, keep_full_trace=full_trace)
    if ticks is not None:
        base = attrs.evolve(base, chaos_ticks=ticks)
    return base
