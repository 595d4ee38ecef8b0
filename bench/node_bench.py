"""CPU per put through the node path of one member, in process (no client port, no TLS).

A one-member ``Node`` (real WAL, sqlite backend, MVCC applier, Raft) runs in trio; ``--clients``
callers each keep one put in flight through the dispatcher's hot path (``Node.prepare`` +
``submit_prepared``: a callback per request, no task). Reported per put: the CPU of the whole
process (trio thread + fsync/sqlite workers) and of the trio thread alone, median of
``--rounds``. The data dir lives on /dev/shm when it exists, so fsync costs little and the
figure is the Python path (propose → Ready → persist → apply → answer). CPU time, not wall
time: the machine is shared (the wall time per put, median, is printed too: with one client it
is the latency a sequential client sees, thread hand-offs included).

    python3 bench/node_bench.py [--puts 4000] [--clients 64] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from securekv.config import resolve  # noqa: E402
from securekv.proto import rpc_pb2  # noqa: E402
from securekv.server.node import Node  # noqa: E402
from securekv.server.persist import to_write_batches  # noqa: E402
from securekv.server.run import _State  # noqa: E402


class _Hub:
    def notify(self, revision: int, events: object) -> None:
        pass

    def compact(self, revision: int) -> None:
        pass


async def one_round(base: Path, puts: int, clients: int) -> tuple[float, float, float]:
    config = resolve({"data_dir": str(base)}, {})
    state = _State(config, 1, 2, trio.current_time)
    node = Node(wal=state.wal, backend=state.backend, applier=state.applier, hub=_Hub(), term=state.term,
                member_id=1, max_request_bytes=1 << 20, to_write_batch=to_write_batches)
    payloads = [rpc_pb2.PutRequest(key=b"key-%06d" % i, value=b"v" * 128).SerializeToString()
                for i in range(puts)]
    done = trio.Event()
    left = [puts]
    issued = [0]

    def submit() -> None:
        i = issued[0]
        if i >= puts:
            return
        issued[0] += 1
        node.submit_prepared(node.prepare("put", payloads[i], "bench"), answered)

    def answered(result: object, error: BaseException | None) -> None:
        if error is not None:
            raise error
        left[0] -= 1
        if left[0] == 0:
            done.set()
        else:
            submit()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            while node.leader == 0:
                await node.wait_leader_change()
            cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            for _ in range(clients):
                submit()
            await done.wait()
            cpu, thread = time.process_time() - cpu0, time.thread_time() - thread0
            wall = time.perf_counter() - wall0
            node.close()
    finally:
        state.close()
    return cpu / puts, thread / puts, wall / puts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=4000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    cpu, thread, wall = [], [], []
    for _ in range(args.rounds):
        base = Path(tempfile.mkdtemp(prefix="node-bench-", dir=root))
        try:
            c, t, w = trio.run(one_round, base / "d", args.puts, args.clients)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        cpu.append(c)
        thread.append(t)
        wall.append(w)
    out = {"puts": args.puts, "clients": args.clients, "rounds": args.rounds,
           "cpu_us_per_put": round(statistics.median(cpu) * 1e6, 1),
           "trio_thread_us_per_put": round(statistics.median(thread) * 1e6, 1),
           "cpu_us_per_put_min": round(min(cpu) * 1e6, 1),
           "wall_us_per_put": round(statistics.median(wall) * 1e6, 1)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['puts']} puts x {out['rounds']} rounds, {out['clients']} clients: "
              f"{out['cpu_us_per_put']} us CPU per put (min {out['cpu_us_per_put_min']}), "
              f"{out['trio_thread_us_per_put']} us of it in the trio thread; "
              f"{out['wall_us_per_put']} us wall per put")


if __name__ == "__main__":
    main()
