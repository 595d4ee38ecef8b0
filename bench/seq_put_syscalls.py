"""Sequential puts against one securekv member: req/s, CPU per put, and (``--strace``) the
system calls per put, counted by ``strace -f -c`` over the whole process.

Why: sampling the trio thread shows where its Python time goes, but not what the other threads
do to it (GIL hand-offs are futex calls) or how many writes and locks one put costs. Counting
calls found the committer's sqlite transaction per Raft Ready and the PING answered in its own
write (docs/benchmarks.md, "The sequential-put tail and a record per read").

    python3 bench/seq_put_syscalls.py [--puts 2000] [--strace] [--data-parent /dev/shm] [--tool PATH]

``--data-parent`` puts the member's data directory elsewhere (tmpfs: the same code without a
real fdatasync, to see the disk's share of a put).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import server_bench as sb

WORKLOAD = "put sequential (1 client)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--puts", type=int, default=2000)
    ap.add_argument("--strace", action="store_true", help="count system calls (slows the member)")
    ap.add_argument("--data-parent", default=None, help="directory for the member's data (default: /tmp)")
    ap.add_argument("--tool", default=None, help="etcd's benchmark binary (default: build it)")
    opts = ap.parse_args()
    tool = opts.tool or subprocess.run([str(sb.ROOT / "bench" / "build_etcd_benchmark.sh")], capture_output=True,
                                       text=True, check=True).stdout.strip().splitlines()[-1]
    base = Path(tempfile.mkdtemp(prefix="seqput-", dir=opts.data_parent))
    tls = sb.make_pki(base)
    proc, url = sb.start_server("securekv", base, tls)
    scale = opts.puts / sb.WORKLOADS[WORKLOAD][3]
    tracer = None
    try:
        sb.run_workload(tool, url, tls, WORKLOAD, 0.25)  # warm up
        counts = base / "strace.txt"
        if opts.strace:
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(counts), "-p", str(proc.pid)],
                                      stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # strace attaches to every thread before the first put
        cpu0 = sb.proc_cpu_seconds(proc.pid)
        rps, p99, total = sb.run_workload(tool, url, tls, WORKLOAD, scale)
        cpu = (sb.proc_cpu_seconds(proc.pid) - cpu0) / total * 1e3
        print(f"{total} sequential puts: {rps:,.0f} req/s, p99 {p99:.1f} ms, CPU {cpu:.3f} ms per put")
        if tracer is not None:
            tracer.send_signal(2)
            tracer.wait(30)
            tracer = None
            print(f"system calls per put (strace -f -c, {total} puts):")
            for line in counts.read_text().splitlines():
                cols = line.split()
                if len(cols) >= 5 and cols[3].isdigit():
                    print(f"  {cols[-1]:14s} {int(cols[3]) / total:6.2f}")
    finally:
        if tracer is not None:
            tracer.kill()
            tracer.wait()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
