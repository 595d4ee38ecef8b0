"""MVCC microbenchmark: puts/s through the applier, single-key gets/s, range-of-100/s.

In-process, no I/O: this is the ceiling the server's apply loop and read path can reach.
Run: ``python3 bench/mvcc_bench.py [--keys N]``; results go in docs/benchmarks.md ("MVCC").
"""

from __future__ import annotations

import argparse
import platform
import time

from securekv.apply import Applier
from securekv.lease import Lessor
from securekv.mvcc import MVCCStore
from securekv.mvcc import kv as kvops
from securekv.proto import raft_internal_pb2, rpc_pb2


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>10,.0f}/s  ({seconds / n * 1e6:6.1f} µs each)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keys", type=int, default=100_000, help="distinct keys written")
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--gets", type=int, default=200_000)
    ap.add_argument("--ranges", type=int, default=20_000)
    args = ap.parse_args()

    store = MVCCStore()
    applier = Applier(store, Lessor(), quota_bytes=-1)
    value = b"x" * args.value_size
    keys = [b"/bench/key/%08d" % i for i in range(args.keys)]
    reqs = [raft_internal_pb2.InternalRaftRequest(put=rpc_pb2.PutRequest(key=k, value=value)) for k in keys]

    t0 = time.perf_counter()
    for i, req in enumerate(reqs, start=1):
        applier.apply(i, req)
    t_put = time.perf_counter() - t0

    # Overwrites of existing keys (history grows, key set does not).
    t0 = time.perf_counter()
    base = len(reqs)
    for i, req in enumerate(reqs, start=base + 1):
        applier.apply(i, req)
    t_over = time.perf_counter() - t0

    gets = [rpc_pb2.RangeRequest(key=keys[(i * 7919) % len(keys)]) for i in range(args.gets)]
    t0 = time.perf_counter()
    for g in gets:
        store.range(g)
    t_get = time.perf_counter() - t0

    step = max(1, len(keys) // 1000)
    ranges = []
    for i in range(args.ranges):
        start = keys[(i * step) % (len(keys) - 100)]
        ranges.append(rpc_pb2.RangeRequest(key=start, range_end=b"\xff", limit=100))
    t0 = time.perf_counter()
    for r in ranges:
        store.range(r)
    t_range = time.perf_counter() - t0

    hist = rpc_pb2.RangeRequest(key=keys[0], range_end=keys[100], revision=base // 2)
    t0 = time.perf_counter()
    n_hist = max(1, args.ranges // 10)
    for _ in range(n_hist):
        store.range(hist)
    t_hist = time.perf_counter() - t0

    t0 = time.perf_counter()
    kvops.compact(store, rpc_pb2.CompactionRequest(revision=store.current_revision - 1))
    t_compact = time.perf_counter() - t0

    print(f"python {platform.python_version()} on {platform.machine()}, {args.keys:,} keys, {args.value_size} B values")
    print(f"put (new key, via Applier)        {_rate(len(reqs), t_put)}")
    print(f"put (overwrite, via Applier)      {_rate(len(reqs), t_over)}")
    print(f"get (single key, current rev)     {_rate(len(gets), t_get)}")
    print(f"range (100 keys, limit 100)       {_rate(len(ranges), t_range)}")
    print(f"range (100 keys, historical rev)  {_rate(n_hist, t_hist)}")
    print(f"compact ({2 * args.keys:,} revisions)     {t_compact * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
