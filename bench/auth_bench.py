"""What RBAC costs: securekv puts with auth enabled (the caller identified by its client
certificate, a user with a readwrite role over the whole key space, so every put passes the
gate's range check and the applier's) against the same server with auth disabled.

The client is etcd 3.4's benchmark tool (bench/build_etcd_benchmark.sh); rounds alternate the
order of the two configurations because this shared 2-core machine drifts between runs.

    python3 bench/auth_bench.py [--rounds 3] [--scale 1.0] [--audit]

``--audit`` adds a third configuration: auth on with ``--audit-log`` (one JSON line per request).
Prints a markdown table of medians and the ratio auth on / auth off (issue 13 asks for >= 0.9).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from server_bench import etcdctl, make_pki, proc_cpu_seconds, run_workload, start_server  # noqa: E402

WORKLOADS = ["put 64 clients/8 conns", "put sequential (1 client)"]


def enable_auth(url: str, tls: dict[str, str]) -> None:
    for line in ("user add root --no-password", "user grant-role root root", "role add bench",
                 "role grant-permission bench readwrite --prefix", "user add bench --no-password",
                 "user grant-role bench bench", "auth enable"):
        args = line.split()
        if line.startswith("role grant-permission"):
            args = ["role", "grant-permission", "bench", "readwrite", "", "--prefix"]
        out = etcdctl(url, tls, *args)
        if out.returncode != 0:
            raise SystemExit(f"etcdctl {line}: {out.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request totals")
    ap.add_argument("--audit", action="store_true", help="also measure auth on + --audit-log")
    opts = ap.parse_args()
    tool = subprocess.run([str(ROOT / "bench" / "build_etcd_benchmark.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    configs = ["auth off", "auth on"] + (["auth on + audit"] if opts.audit else [])
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    base = Path(tempfile.mkdtemp(prefix="securekv-auth-bench-"))
    try:
        tls = make_pki(base)
        from securekv.pki.issue import issue_cert

        issue_cert(base / "pki", "client", "bench")
        bench_tls = {**tls, "client_cert": str(base / "pki" / "bench.pem"),
                     "client_key": str(base / "pki" / "bench-key.pem")}
        for rnd in range(opts.rounds):
            for config in (configs if rnd % 2 == 0 else list(reversed(configs))):
                extra = ["--audit-log", str(base / f"audit-{rnd}.log")] if "audit" in config else []
                proc, url = start_server("securekv", base, tls, extra)
                try:
                    if config != "auth off":
                        enable_auth(url, tls)
                    for name in WORKLOADS:
                        cpu0 = proc_cpu_seconds(proc.pid)
                        rps, p99, total = run_workload(tool, url, bench_tls, name, opts.scale)
                        cpu_ms = (proc_cpu_seconds(proc.pid) - cpu0) * 1000 / total
                        results.setdefault((config, name), []).append((rps, p99, cpu_ms))
                        print(f"round {rnd} {config:16s} {name:28s} {rps:8.0f} req/s  p99 {p99:7.1f} ms  "
                              f"cpu {cpu_ms:.3f} ms/req", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        print("| workload | " + " | ".join(f"{c} req/s (p99 ms, CPU ms/req)" for c in configs)
              + " | auth on / off |")
        print("|---" * (len(configs) + 2) + "|")
        for name in WORKLOADS:
            med = {c: statistics.median(r[0] for r in results[(c, name)]) for c in configs}
            cells = [f"{med[c]:,.0f} ({statistics.median(r[1] for r in results[(c, name)]):.1f}, "
                     f"{statistics.median(r[2] for r in results[(c, name)]):.3f})" for c in configs]
            print(f"| {name} | " + " | ".join(cells) + f" | {med['auth on'] / med['auth off']:.2f} |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
