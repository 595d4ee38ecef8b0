"""WAL and backend throughput on this machine: append + fsync per batch (group commit).

    python3 bench/wal_bench.py [--seconds 1] [--rounds 5] [--value-size 256] [--dir DIR]

For each batch size (1, 16, 64) it appends batches of entries and calls ``sync()`` once per
batch, for a fixed time, and reports records/s, fsyncs/s and CPU per record; likewise for the
sqlite backend (one transaction carrying the applied index per batch). Not a test: numbers go to
docs/benchmarks.md ("Storage").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.storage import WAL, Backend, HardState, Metadata, Revision, WalEntry, WriteBatch  # noqa: E402


def run_wal(wal: WAL, batch: int, seconds: float, value: bytes) -> tuple[int, int, float, float]:
    """Append+sync batches for ``seconds``: (records, fsyncs, wall seconds, cpu seconds)."""
    index0 = index = wal.last_index
    syncs = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        entries = [WalEntry(i, 1, value) for i in range(index + 1, index + batch + 1)]
        index += batch
        wal.append(entries, HardState(1, 1, index))
        wal.sync()
        syncs += 1
    return index - index0, syncs, time.perf_counter() - start, time.process_time() - cpu0


def run_backend(db: Backend, batch: int, seconds: float, value: bytes) -> tuple[int, int, float]:
    rev0 = rev = db.consistent_index()
    commits = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        puts = [Revision(r, 0, b"key%d" % r, value) for r in range(rev + 1, rev + batch + 1)]
        rev += batch
        db.commit(WriteBatch(puts=puts, consistent_index=rev))
        commits += 1
    return rev - rev0, commits, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per batch size and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="batch sizes are interleaved round-robin; medians are reported "
                             "(the disk here is shared, fsync latency varies a lot)")
    parser.add_argument("--value-size", type=int, default=256)
    parser.add_argument("--dir", help="where to write (default: a temp dir under the cwd)")
    args = parser.parse_args()
    value = os.urandom(args.value_size)
    sizes = (1, 16, 64)
    with tempfile.TemporaryDirectory(dir=args.dir or ".", prefix=".walbench-") as d:
        print(f"{args.value_size}-byte entries, {args.rounds} rounds x {args.seconds:g}s per "
              f"batch size, medians, in {os.path.abspath(d)}")
        wals = {b: WAL.create(os.path.join(d, f"wal-{b}"), Metadata(1, 1)) for b in sizes}
        dbs = {b: Backend.open(os.path.join(d, f"db-{b}.sqlite")) for b in sizes}
        wal_runs: dict[int, list] = {b: [] for b in sizes}
        db_runs: dict[int, list] = {b: [] for b in sizes}
        for _ in range(args.rounds):
            for b in sizes:
                wal_runs[b].append(run_wal(wals[b], b, args.seconds, value))
                db_runs[b].append(run_backend(dbs[b], b, args.seconds, value))
        print("| batch | WAL records/s | WAL fsyncs/s | WAL CPU us/record | backend rows/s | backend commits/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for b in sizes:
            rec = statistics.median(r / w for r, _s, w, _c in wal_runs[b])
            fs = statistics.median(s / w for _r, s, w, _c in wal_runs[b])
            cpu = statistics.median(c / r * 1e6 for r, _s, _w, c in wal_runs[b])
            rows = statistics.median(r / w for r, _c, w in db_runs[b])
            commits = statistics.median(c / w for _r, c, w in db_runs[b])
            print(f"| {b} | {rec:,.0f} | {fs:,.0f} | {cpu:.1f} | {rows:,.0f} | {commits:,.0f} |")
        for b in sizes:
            wals[b].close()
            dbs[b].close()
        t0 = time.perf_counter()
        wal, state = WAL.open(os.path.join(d, "wal-64"))
        wal.close()
        print(f"reopen (read + verify) of {len(state.entries):,} records: "
              f"{time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    main()
