"""Side-by-side client-API benchmark: securekv vs the real etcd, same client, same mutual TLS.

The client is etcd 3.4's own benchmark tool (built offline by bench/build_etcd_benchmark.sh).
Each server runs as a single member on loopback with certificates from securekv's PKI; rounds
alternate between the servers because this shared 2-core machine drifts by ±25 %.

    python3 bench/server_bench.py [--servers etcd,securekv] [--rounds 2] [--scale 1.0]

``--servers`` may also name ``noop-sync``, ``noop-aio``, ``noop-trio``: grpcio alone answering
at once (bench/grpc_noop.py), the ceiling any grpcio server in CPython reaches here.

Prints a markdown table (requests/s, p99 latency, server CPU ms per request) for the
workloads the issues name, and the ratio securekv/etcd.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from securekv.pki.ca import init_ca  # noqa: E402
from securekv.pki.issue import issue_cert  # noqa: E402

# name -> (benchmark sub-command args, clients, conns, total at scale 1)
WORKLOADS = {
    "put 64 clients/8 conns": (["put", "--key-size=8", "--val-size=256", "--key-space-size=100000"], 64, 8, 20000),
    "put sequential (1 client)": (["put", "--key-size=8", "--val-size=256", "--key-space-size=100000"], 1, 1, 2000),
    "range linearizable 64 clients": (["range", "foo", "--consistency=l"], 64, 8, 20000),
    "range serializable 64 clients": (["range", "foo", "--consistency=s"], 64, 8, 20000),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def make_pki(base: Path) -> dict[str, str]:
    pki = base / "pki"
    init_ca(pki)
    issue_cert(pki, "peer", "server", hosts=["127.0.0.1", "localhost"])
    issue_cert(pki, "client", "root")
    return {
        "ca": str(pki / "ca.pem"),
        "cert": str(pki / "server.pem"),
        "key": str(pki / "server-key.pem"),
        "client_cert": str(pki / "root.pem"),
        "client_key": str(pki / "root-key.pem"),
    }


def start_server(kind: str, base: Path, tls: dict[str, str], extra: list[str] | tuple[str, ...] = ()
                 ) -> tuple[subprocess.Popen, str]:
    port, peer_port = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    data = base / f"{kind}-data-{port}"
    common = [
        "--name", "bench", "--data-dir", str(data),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"https://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer_port}",
        "--initial-cluster", f"bench=https://127.0.0.1:{peer_port}",
        "--client-cert-auth", "--trusted-ca-file", tls["ca"],
        "--cert-file", tls["cert"], "--key-file", tls["key"],
        "--peer-client-cert-auth", "--peer-trusted-ca-file", tls["ca"],
        "--peer-cert-file", tls["cert"], "--peer-key-file", tls["key"],
        # One certificate (CN "server") for every member: say so (securekv refuses a peer
        # certificate naming another member unless told; etcd takes the same flag).
        "--peer-cert-allowed-cn", "server",
    ]
    if kind == "etcd":
        cmd = ["etcd", *common, "--log-level", "error"]
    elif kind.startswith("noop-"):  # grpcio alone, no server behind it (bench/grpc_noop.py)
        cmd = [sys.executable, str(ROOT / "bench" / "grpc_noop.py"), "--port", str(port),
               "--mode", kind.removeprefix("noop-"), "--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"]]
    else:
        cmd = [sys.executable, "-m", "securekv", "serve", *common, "--log-level", "error", *extra]
    log = open(base / f"{kind}-{port}.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base, env=env)
    wait_healthy(url, tls, proc)
    return proc, url


def etcdctl(url: str, tls: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["etcdctl", "--endpoints", url, "--cacert", tls["ca"], "--cert", tls["client_cert"],
         "--key", tls["client_key"], *args],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30,
    )


def wait_healthy(url: str, tls: dict[str, str], proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before becoming healthy")
        if etcdctl(url, tls, "endpoint", "health").returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} not healthy within {timeout}s")


def run_workload(tool: str, url: str, tls: dict[str, str], name: str, scale: float) -> tuple[float, float, int]:
    args, clients, conns, total = WORKLOADS[name]
    total = max(100, int(total * scale))
    cmd = [tool, f"--endpoints={url.removeprefix('https://')}", f"--cacert={tls['ca']}",
           f"--cert={tls['client_cert']}", f"--key={tls['client_key']}",
           f"--clients={clients}", f"--conns={conns}", *args, f"--total={total}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    p99 = float(re.search(r"99% in ([\d.]+) secs", out.stdout).group(1)) * 1000
    return rps, p99, total


def print_table(title: str, servers: list[str], workloads: list[str],
                results: dict[tuple[str, str], list[tuple[float, float, float]]]) -> None:
    """Markdown table of medians (req/s, p99 ms, CPU ms/req), with securekv/etcd when both ran."""
    both = {"etcd", "securekv"} <= set(servers)
    print(f"| {title} | " + " | ".join(f"{s} req/s (p99 ms, CPU ms/req)" for s in servers)
          + (" | securekv/etcd |" if both else " |"))
    print("|---" * (len(servers) + 1 + both) + "|")
    for name in workloads:
        cells, med = [], {}
        for kind in servers:
            rows = results[(kind, name)]
            med[kind] = statistics.median(r[0] for r in rows)
            cells.append(f"{med[kind]:,.0f} ({statistics.median(r[1] for r in rows):.1f}, "
                         f"{statistics.median(r[2] for r in rows):.3f})")
        ratio = f" {med['securekv'] / med['etcd']:.2f} |" if both else ""
        print(f"| {name} | " + " | ".join(cells) + " |" + ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="etcd,securekv")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request totals")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    opts = ap.parse_args()
    tool = subprocess.run([str(ROOT / "bench" / "build_etcd_benchmark.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    servers = opts.servers.split(",")
    workloads = opts.workloads.split(",")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    base = Path(tempfile.mkdtemp(prefix="securekv-bench-"))
    try:
        tls = make_pki(base)
        for rnd in range(opts.rounds):
            for kind in (servers if rnd % 2 == 0 else list(reversed(servers))):
                proc, url = start_server(kind, base, tls)
                try:
                    etcdctl(url, tls, "put", "foo", "bar")
                    for name in workloads:
                        cpu0 = proc_cpu_seconds(proc.pid)
                        rps, p99, total = run_workload(tool, url, tls, name, opts.scale)
                        cpu_ms = (proc_cpu_seconds(proc.pid) - cpu0) * 1000 / total
                        results.setdefault((kind, name), []).append((rps, p99, cpu_ms))
                        print(f"round {rnd} {kind:9s} {name:32s} {rps:9.0f} req/s  p99 {p99:7.1f} ms  "
                              f"cpu {cpu_ms:.3f} ms/req", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        print_table("workload", servers, workloads, results)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
