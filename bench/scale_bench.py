"""Keyspace-scale benchmark: securekv vs the real etcd, etcd's own benchmark tool as the loader.

For each scenario and server (fresh data dir, one member, mutual TLS on loopback):

1. load with ``benchmark put --sequential-keys`` (64 clients over 8 connections, 256-byte
   values, 16-byte keys): throughput and the server's CPU time per put;
2. RSS after the load (VmRSS: heap plus the file pages a server maps, as the OS reports it);
3. range of 100,000 keys with ``etcdctl get --from-key --keys-only --limit 100000`` (median of
   3, wall time of the etcdctl process, output discarded);
4. data dir size (du);
5. graceful restart (SIGTERM, wait for exit, start): time from start to the first successful
   ``etcdctl endpoint health``, and RSS right after.

Scenarios: ``keys:N`` loads N distinct keys once; ``overwrite:T:K`` puts T times over K keys
(T/K revisions per key, no compaction).

    python3 bench/scale_bench.py [--servers etcd,securekv] [--scenarios keys:100000,overwrite:200000:10000]
                                 [--baseline /path/to/other/securekv/checkout] [--work DIR]

The full issue run (hours on a 2-core machine):
    python3 bench/scale_bench.py --scenarios keys:1000000,keys:4000000,overwrite:5000000:10000

``--baseline DIR`` adds a server "securekv-base": the same `securekv serve` from another checkout
(e.g. the main branch before this change), to compare load throughput. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from server_bench import etcdctl, free_port, make_pki, proc_cpu_seconds  # noqa: E402

QUOTA = str(16 * 1024**3)  # neither server may hit NOSPACE during the run (etcd warns above 8 GiB)
CLIENTS, CONNS = 64, 8


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total / 2**20


class Server:
    def __init__(self, kind: str, base: Path, tls: dict[str, str], source: Path) -> None:
        self.kind, self.tls, self.source = kind, tls, source
        self.port, self.peer_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.data = base / f"{kind}-data-{self.port}"
        self.log = base / f"{kind}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        tls = self.tls
        common = [
            "--name", "bench", "--data-dir", str(self.data),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"bench=https://127.0.0.1:{self.peer_port}",
            "--client-cert-auth", "--trusted-ca-file", tls["ca"],
            "--cert-file", tls["cert"], "--key-file", tls["key"],
            "--peer-client-cert-auth", "--peer-trusted-ca-file", tls["ca"],
            "--peer-cert-file", tls["cert"], "--peer-key-file", tls["key"],
            "--quota-backend-bytes", QUOTA,
        ]
        if self.kind == "etcd":
            return ["etcd", *common, "--log-level", "error"]
        return [sys.executable, "-m", "securekv", "serve", *common, "--log-level", "info"]

    def start(self) -> float:
        """Start and wait until healthy; seconds from spawn to the first healthy answer."""
        env = {**os.environ, "PYTHONPATH": str(self.source)}
        with open(self.log, "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.source, env=env)
        deadline = t0 + 1800
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited with {self.proc.returncode}; see {self.log}")
            if etcdctl(self.url, self.tls, "endpoint", "health", "--dial-timeout=1s",
                       "--command-timeout=2s").returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise SystemExit(f"{self.kind} not healthy after 30 minutes")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def load(tool: str, server: Server, total: int, key_space: int) -> tuple[float, float]:
    tls = server.tls
    cmd = [tool, f"--endpoints={server.url.removeprefix('https://')}", f"--cacert={tls['ca']}",
           f"--cert={tls['client_cert']}", f"--key={tls['client_key']}", f"--clients={CLIENTS}", f"--conns={CONNS}",
           "put", "--sequential-keys", "--key-size=16", "--val-size=256", f"--key-space-size={key_space}",
           f"--total={total}"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"benchmark failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    return rps, wall


def range_seconds(server: Server, n: int = 100_000) -> float:
    tls = server.tls
    argv = ["etcdctl", "--endpoints", server.url, "--cacert", tls["ca"], "--cert", tls["client_cert"],
            "--key", tls["client_key"], "--command-timeout=120s", "get", "", "--from-key", "--keys-only",
            "--limit", str(n)]
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=300,
                       env={**os.environ, "ETCDCTL_API": "3"})
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def run(tool: str, kind: str, scenario: str, base: Path, tls: dict[str, str], source: Path) -> dict[str, float]:
    parts = scenario.split(":")
    if parts[0] == "keys":
        total = key_space = int(parts[1])
    else:
        total, key_space = int(parts[1]), int(parts[2])
    s = Server(kind, base, tls, source)
    out: dict[str, float] = {}
    try:
        s.start()
        cpu0 = proc_cpu_seconds(s.proc.pid)  # type: ignore[union-attr]
        out["load req/s"], out["load s"] = load(tool, s, total, key_space)
        out["load server CPU ms/req"] = (proc_cpu_seconds(s.proc.pid) - cpu0) * 1000 / total  # type: ignore[union-attr]
        time.sleep(2)  # let the last backend commits land
        out["RSS after load MiB"] = rss_mib(s.proc.pid)  # type: ignore[union-attr]
        out["range 100k keys s"] = range_seconds(s, min(100_000, key_space))
        s.stop()
        out["data dir MiB"] = dir_mib(s.data)
        out["restart to healthy s"] = s.start()
        time.sleep(1)
        out["RSS after restart MiB"] = rss_mib(s.proc.pid)  # type: ignore[union-attr]
        out["range 100k keys after restart s"] = range_seconds(s, min(100_000, key_space))
    finally:
        s.stop()
        shutil.rmtree(s.data, ignore_errors=True)
    print(f"{scenario} {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in out.items()), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="etcd,securekv")
    ap.add_argument("--scenarios", default="keys:100000,overwrite:200000:10000")
    ap.add_argument("--baseline", type=Path, help="another securekv checkout, run as server 'securekv-base'")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every scenario, alternating the order; medians")
    ap.add_argument("--work", type=Path, help="directory for data dirs; the server logs are kept there "
                                              "(default: a temp dir, removed)")
    opts = ap.parse_args()
    tool = subprocess.run([str(ROOT / "bench" / "build_etcd_benchmark.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    servers = opts.servers.split(",")
    if opts.baseline:
        servers.append("securekv-base")
    base = Path(tempfile.mkdtemp(prefix="securekv-scale-", dir=opts.work))
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        tls = make_pki(base)
        # The member's certificate names it (peer certificates are bound to members): one
        # certificate for the member "bench", used on its client and peer ports by both servers.
        from securekv.pki.issue import issue_cert

        issue_cert(base / "pki", "peer", "bench", hosts=["127.0.0.1", "localhost"])
        tls = {**tls, "cert": str(base / "pki" / "bench.pem"), "key": str(base / "pki" / "bench-key.pem")}
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        turn = 0
        for _ in range(opts.rounds):
            for scenario in opts.scenarios.split(","):
                order = servers if turn % 2 == 0 else list(reversed(servers))
                turn += 1
                for kind in order:
                    source = opts.baseline if kind == "securekv-base" else ROOT
                    runs.setdefault((scenario, kind), []).append(
                        run(tool, "securekv" if kind.startswith("securekv") else kind, scenario, base, tls, source))
        for key, rows in runs.items():
            results[key] = {m: statistics.median(r[m] for r in rows) for m in rows[0]}
        metrics = list(next(iter(results.values())).keys())
        for scenario in opts.scenarios.split(","):
            print(f"\n### {scenario}\n")
            print("| | " + " | ".join(servers) + (" | securekv/etcd |" if "etcd" in servers else " |"))
            print("|---" * (len(servers) + 1 + ("etcd" in servers)) + "|")
            for m in metrics:
                row = [results[(scenario, k)][m] for k in servers]
                ratio = ""
                if "etcd" in servers and "securekv" in servers:
                    e, s = results[(scenario, "etcd")][m], results[(scenario, "securekv")][m]
                    ratio = f" {s / e:.2f}× |" if e else " – |"
                print(f"| {m} | " + " | ".join(f"{v:,.2f}" for v in row) + " |" + ratio)
    finally:
        if opts.work is None:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"\nlogs kept in {base}", file=sys.stderr)


if __name__ == "__main__":
    main()
