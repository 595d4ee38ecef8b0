"""The deterministic simulator: the CI seed sweep, reproducibility, and proof that it bites.

The sweeps run the real CLI (``python -m securekv.sim``) as a process, like CI and a developer
would; the white-box tests drive ``Simulation`` directly.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from securekv.raft import Entry, MemoryStorage
from securekv.sim.kv import Command, KVStateMachine
from securekv.sim.runner import params_for, run_seed
from securekv.sim.world import LINEARIZABILITY, LIVENESS, SimParams, Simulation
from securekv.testing import raft_invariants as inv

ROOT = Path(__file__).resolve().parents[2]
SAFETY = {inv.ELECTION_SAFETY, inv.LOG_MATCHING, inv.LEADER_COMPLETENESS,
          inv.STATE_MACHINE_SAFETY, inv.COMMITTED_ENTRY_LOST, inv.COMMIT_DURABILITY}


def sim(*args: str, hashseed: str = "0", timeout: float = 240) -> tuple[int, str, dict]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "securekv.sim", *args, "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, proc.stdout, json.loads(lines[-1])


def assert_clean(rc: int, out: str, summary: dict, seeds: int) -> None:
    assert rc == 0 and summary["violations"] == 0, out[-4000:]
    assert summary["seeds"] == seeds
    assert summary["undecided"] == 0
    # The sweep really exercised the cluster (not a vacuous pass).
    assert summary["commits"] > 20 * seeds
    assert summary["elections"] >= 2 * seeds
    assert summary["faults"] > 10 * seeds
    assert summary["crashes"] > seeds
    assert summary["ops"] > 20 * seeds and summary["pending_ops"] > 0
    assert summary["snapshots"] > 0 and summary["conf_changes"] > 0


def test_ci_sweep_three_nodes_200_seeds() -> None:
    rc, out, summary = sim("--seeds", "200", "--nodes", "3", "--ticks", "800", "--jobs", "2")
    assert_clean(rc, out, summary, 200)
    assert summary["nodes"] == 3
    assert f"200 seeds (from 0, 3 nodes)" in out


def test_ci_sweep_five_nodes() -> None:
    rc, out, summary = sim("--seeds", "60", "--start", "1000", "--nodes", "5", "--ticks", "800",
                           "--jobs", "2")
    assert_clean(rc, out, summary, 60)


def test_same_seeds_give_identical_json() -> None:
    """No wall clock, no hash-order dependence, no dependence on how seeds are spread."""
    runs = [sim("--seeds", "6", "--start", "500", "--jobs", jobs, hashseed=hs)
            for jobs, hs in (("1", "1"), ("2", "4242"))]
    (rc1, out1, s1), (rc2, out2, s2) = runs
    assert rc1 == rc2 == 0
    assert out1.strip().splitlines()[-1] == out2.strip().splitlines()[-1]
    assert s1 == s2
    assert {"seeds", "commits", "elections", "faults", "violations"} <= set(s1)
    assert not {k for k in s1 if "time" in k or "duration" in k or "elapsed" in k}


def test_a_seed_replays_exactly() -> None:
    params = params_for(3, ticks=150, full_trace=True)
    a, b = run_seed(7, params), run_seed(7, params)
    assert a.trace and a.trace == b.trace
    assert a.stats() == b.stats()
    assert run_seed(8, params).trace != a.trace


# ------------------------------------------------------------------- the simulator bites


@pytest.mark.parametrize("bug", ["figure8", "figure8-with-noop"])
def test_simulator_catches_figure8(bug: str) -> None:
    """Commit an entry of an earlier term by counting replicas (Raft paper, Figure 8): some
    seed in 0..199 must end in a safety violation with the seed, the invariant and a trace."""
    rc, out, summary = sim("--seeds", "200", "--ticks", "1000", "--inject-bug", bug,
                           "--fail-fast")
    assert rc == 1, out[-3000:]
    assert summary["violations"] == 1
    (failure,) = summary["failures"]
    assert failure["invariant"] in SAFETY, failure
    assert f"VIOLATION seed={failure['seed']} invariant='{failure['invariant']}'" in out
    assert "trace (last events):" in out
    trace = out.split("trace (last events):", 1)[1].strip().splitlines()
    assert 5 <= len(trace) <= 45
    # ... and that seed is reproducible on its own.
    rc2, out2, summary2 = sim("--seeds", "1", "--start", str(failure["seed"]), "--ticks", "1000",
                              "--inject-bug", bug)
    assert rc2 == 1 and summary2["failures"] == summary["failures"]


def test_simulator_catches_messages_sent_before_persisting() -> None:
    """Every message of a Ready may leave before it is persisted (votes, append acks): a node
    that crashes inside that Ready breaks promises others already counted on."""
    rc, out, summary = sim("--seeds", "200", "--ticks", "800", "--inject-bug",
                           "send-before-persist", "--fail-fast")
    assert rc == 1, out[-3000:]
    (failure,) = summary["failures"]
    assert failure["invariant"] in SAFETY, failure
    assert f"VIOLATION seed={failure['seed']}" in out and "trace (last events):" in out


def test_simulator_catches_non_linearizable_reads() -> None:
    """ReadIndex answered locally without confirming leadership: every safety property of the
    log still holds, only the client-history check can tell."""
    rc, out, summary = sim("--seeds", "50", "--inject-bug", "local-reads", "--fail-fast")
    assert rc == 1
    assert summary["failures"][0]["invariant"] == LINEARIZABILITY
    assert "NOT linearizable" in out and "cannot place:" in out


def test_simulator_catches_lost_liveness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody ever campaigns: safe, but the cluster never recovers after the faults heal."""
    from securekv.raft.core import Raft

    monkeypatch.setattr(Raft, "promotable", lambda self: False)
    result = run_seed(3, params_for(3, ticks=40))
    assert result.violation is not None
    assert result.violation.invariant == LIVENESS
    assert "leader=none" in result.violation.detail


# ------------------------------------------------------------------- the simulated parts


def test_crash_loses_what_was_not_persisted() -> None:
    """A node that crashes before persisting its Ready keeps nothing of it; one that crashes
    after persisting keeps everything, however the rest of the Ready went."""
    world = Simulation(1, random.Random(1), SimParams(nodes=3, chaos_ticks=40))
    world.pre_vote = False  # so that campaigning bumps (and must persist) the term at once
    node = world.nodes[1]
    for stage, kept in ((0, False), (1, False), (2, True)):
        world._boot(node)  # a fresh RawNode on the same disk
        term = node.storage.hard_state.term
        node.raw.campaign()  # type: ignore[union-attr]
        node.crash_stage = stage
        world._drain()
        assert not node.alive
        assert (node.storage.hard_state.term > term) is kept, stage


@pytest.mark.parametrize("pre_vote,escapes", [(True, True), (False, False)])
def test_early_messages_leave_even_if_the_ready_is_lost(pre_vote: bool, escapes: bool) -> None:
    """Seeds that send early let a Ready's independent messages (pre-votes) out before the
    crash point; messages that must wait (votes: the term and vote were never persisted)
    die with the node."""
    world = Simulation(1, random.Random(1), SimParams(nodes=3, chaos_ticks=40))
    world.send_early, world.pre_vote = True, pre_vote
    node = world.nodes[1]
    world._boot(node)  # with this seed's Pre-Vote setting
    world._queue.clear()
    node.raw.campaign()  # type: ignore[union-attr]
    node.crash_stage = 0
    world._drain()
    assert not node.alive and node.storage.hard_state.term == 0
    sent = [ev[3] for ev in world._queue if ev[2] == "msg"]
    assert bool(sent) is escapes
    assert all(m.frm == 1 and m.type.name == "PRE_VOTE" for m in sent)


def test_kv_state_machine_dedups_and_round_trips() -> None:
    sm = KVStateMachine()
    w = Command(1, 1, "write", "x", 10)
    assert not sm.apply(w).duplicate
    assert sm.apply(w).duplicate  # a proposal the network duplicated applies once
    assert sm.apply(Command(2, 1, "cas", "x", 20, expected=10)).result is True
    assert sm.apply(Command(2, 2, "cas", "x", 30, expected=10)).result is False
    again = KVStateMachine.decode(sm.encode())
    assert again.data == {"x": 20} and again.done == sm.done
    assert Command.decode(w.encode()) == w


def test_monitor_reads_the_same_storage_the_node_uses() -> None:
    """The disk of a simulated node is the MemoryStorage its RawNode reads."""
    world = Simulation(2, random.Random(2), SimParams(nodes=3, chaos_ticks=40))
    node = world.nodes[2]
    assert isinstance(node.storage, MemoryStorage)
    assert node.raw.raft.log.storage is node.storage  # type: ignore[union-attr]
    assert isinstance(node.storage.entries(1, 2)[0], Entry)


def test_cli_rejects_bad_usage() -> None:
    proc = subprocess.run([sys.executable, "-m", "securekv.sim", "--nodes", "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Invalid value for '--nodes'" in proc.stderr
    assert "Traceback" not in proc.stderr
