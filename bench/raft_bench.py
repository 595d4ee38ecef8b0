"""Microbenchmark of the Raft core: propose → commit on an in-memory 3-node cluster.

Each round the leader proposes one batch (1 or 64 entries, via ``propose`` / ``propose_many``)
and the cluster is pumped — persist to MemoryStorage, deliver messages, apply, advance — until
the batch is committed and applied on every node. So a round is a full replication round trip
through the real RawNode contract; the number is the core's CPU cost, not a network figure.

    python3 bench/raft_bench.py [--seconds 1] [--repeat 5] [--payload 128] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.raft import Config, MemoryStorage, Message, RawNode, Role  # noqa: E402


class Cluster:
    def __init__(self, n: int = 3) -> None:
        ids = list(range(1, n + 1))
        self.storage = {i: MemoryStorage.with_peers(ids) for i in ids}
        self.nodes = {
            i: RawNode(Config(id=i, storage=self.storage[i], rng=random.Random(i),
                              election_tick=10, heartbeat_tick=1))
            for i in ids
        }
        self.applied = {i: 0 for i in ids}

    def pump(self) -> None:
        while True:
            msgs: list[Message] = []
            for nid, node in self.nodes.items():
                if not node.has_ready():
                    continue
                rd = node.ready()
                st = self.storage[nid]
                if rd.snapshot is not None:
                    st.apply_snapshot(rd.snapshot)
                if rd.entries:
                    st.append(rd.entries)
                if rd.hard_state is not None:
                    st.set_hard_state(rd.hard_state)
                msgs.extend(rd.messages)
                if rd.committed_entries:
                    self.applied[nid] = rd.committed_entries[-1].index
                node.advance()
            if not msgs:
                return
            for m in msgs:
                self.nodes[m.to].step(m)

    def elect(self, nid: int) -> None:
        self.nodes[nid].campaign()
        self.pump()
        assert self.nodes[nid].role is Role.LEADER


def run(batch: int, seconds: float, payload: int) -> dict[str, float]:
    """One timed run; returns rates over wall-clock time and over this process's CPU time
    (the CPU figure is what the core costs; it is less sensitive to a busy machine)."""
    c = Cluster(3)
    c.elect(1)
    leader = c.nodes[1]
    data = [b"x" * payload] * batch
    entries = rounds = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            if batch == 1:
                leader.propose(data[0])
            else:
                leader.propose_many(data)
            c.pump()
            rounds += 1
            entries += batch
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    last = leader.last_index
    assert all(a == last for a in c.applied.values()), (c.applied, last)
    return {
        "batch": batch,
        "entries_per_s": entries / elapsed,
        "entries_per_cpu_s": entries / cpu,
        "us_per_round": elapsed / rounds * 1e6,
        "cpu_us_per_round": cpu / rounds * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="duration of each run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per batch size (median kept)")
    ap.add_argument("--payload", type=int, default=128, help="bytes per entry")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    runs: dict[int, list[dict[str, float]]] = {1: [], 64: []}
    for _ in range(args.repeat):  # interleaved, so load swings hit both sizes alike
        for b in runs:
            runs[b].append(run(b, args.seconds, args.payload))
    results = []
    for b, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        med["batch"] = b
        results.append(med)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "payload": args.payload,
                          "repeat": args.repeat, "results": results}))
        return 0
    print(f"raft core, 3 in-memory nodes, {args.payload}-byte entries, "
          f"Python {platform.python_version()}, median of {args.repeat} x {args.seconds:g} s")
    print(f"{'batch':>6} {'entries/s':>11} {'entries/CPU-s':>14} {'us/round':>9} {'CPU us/round':>13}")
    for r in results:
        print(f"{r['batch']:>6.0f} {r['entries_per_s']:>11.0f} {r['entries_per_cpu_s']:>14.0f} "
              f"{r['us_per_round']:>9.1f} {r['cpu_us_per_round']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
