"""Side-by-side 3-member cluster benchmark: securekv vs the real etcd, same client, same mutual TLS.

The client is etcd 3.4's own benchmark tool (built offline by bench/build_etcd_benchmark.sh); the
helpers (PKI, workloads, result parsing) are bench/server_bench.py's. Each round starts a fresh
3-member cluster on loopback with mutual TLS on the client AND peer ports, sends every workload to
the leader's client URL, then measures failover: kill -9 of the leader and the time until the
first write succeeds on a survivor. Rounds alternate between the servers because this shared
2-core machine drifts by ±25 %.

    python3 bench/cluster_bench.py [--servers etcd,securekv] [--rounds 2] [--scale 1.0]

Prints a markdown table (requests/s, p99 latency, CPU ms per request summed over the three
members), the ratio securekv/etcd, and the failover times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import server_bench as sb  # noqa: E402  (also puts the repo root on sys.path)

NAMES = ("b1", "b2", "b3")


class NotACluster(Exception):
    pass


def start_cluster(kind: str, base: Path, tls: dict[str, str], token: str) -> tuple[list[subprocess.Popen], list[str]]:
    ports = {n: (sb.free_port(), sb.free_port()) for n in NAMES}
    initial = ",".join(f"{n}=https://127.0.0.1:{ports[n][1]}" for n in NAMES)
    procs, urls = [], []
    for n in NAMES:
        client, peer = ports[n]
        url = f"https://127.0.0.1:{client}"
        flags = [
            "--name", n, "--data-dir", str(base / f"{token}-{n}"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"https://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer}",
            "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", token,
            "--client-cert-auth", "--trusted-ca-file", tls["ca"], "--cert-file", tls["cert"], "--key-file", tls["key"],
            "--peer-client-cert-auth", "--peer-trusted-ca-file", tls["ca"],
            "--peer-cert-file", tls["cert"], "--peer-key-file", tls["key"],
            "--peer-cert-allowed-cn", "server",  # one shared peer certificate (see server_bench)
            "--log-level", "error",
        ]
        cmd = ["etcd", *flags] if kind == "etcd" else [sys.executable, "-m", "securekv", "serve", *flags]
        log = open(base / f"{token}-{n}.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(sb.ROOT)}
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base, env=env))
        log.close()
        urls.append(url)
    try:
        for proc, url in zip(procs, urls):
            sb.wait_healthy(url, tls, proc, timeout=60)
        members = json.loads(sb.etcdctl(urls[0], tls, "member", "list", "-w", "json").stdout)["members"]
        started = sorted(m.get("name", "") for m in members)
        if started != list(NAMES):
            raise NotACluster(f"{kind}: member list shows {started}, not a 3-member cluster")
    except BaseException:
        stop(procs)
        raise
    return procs, urls


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)


def leader_index(urls: list[str], tls: dict[str, str]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = sb.etcdctl(",".join(urls), tls, "endpoint", "status", "-w", "json")
        if out.returncode == 0:
            rows = json.loads(out.stdout)
            by_id = {r["Status"]["header"]["member_id"]: r["Endpoint"] for r in rows}
            leaders = {r["Status"].get("leader", 0) for r in rows}
            if len(leaders) == 1 and (lid := leaders.pop()) in by_id:
                return urls.index(by_id[lid])
        time.sleep(0.2)
    raise SystemExit("no agreed leader within 30 s")


def failover_seconds(procs: list[subprocess.Popen], urls: list[str], tls: dict[str, str]) -> float:
    """kill -9 the leader; seconds until the first Put acknowledged by a survivor."""
    import grpc

    from securekv.proto import rpc_pb2, rpc_pb2_grpc

    creds = grpc.ssl_channel_credentials(Path(tls["ca"]).read_bytes(), Path(tls["client_key"]).read_bytes(),
                                         Path(tls["client_cert"]).read_bytes())
    li = leader_index(urls, tls)
    survivors = [u for i, u in enumerate(urls) if i != li]
    channels = [grpc.secure_channel(u.removeprefix("https://"), creds) for u in survivors]
    stubs = [rpc_pb2_grpc.KVStub(ch) for ch in channels]
    try:
        for stub in stubs:  # connections up before the clock starts
            stub.Put(rpc_pb2.PutRequest(key=b"failover/warm", value=b"x"), timeout=10)
        # Probes leave every 20 ms (alternating survivors, 2 s deadline each), so the first
        # acknowledgement is seen within ~20 ms of when the cluster can first commit again.
        done: list[float] = []
        lock = threading.Lock()

        def finished(fut) -> None:
            if not fut.cancelled() and fut.exception() is None:
                with lock:
                    done.append(time.monotonic())

        t0 = time.monotonic()
        procs[li].send_signal(signal.SIGKILL)
        attempt = 0
        while time.monotonic() - t0 < 60:
            with lock:
                if done:
                    return min(done) - t0
            fut = stubs[attempt % len(stubs)].Put.future(
                rpc_pb2.PutRequest(key=b"failover/probe", value=b"x"), timeout=2)
            fut.add_done_callback(finished)
            attempt += 1
            time.sleep(0.02)
        raise SystemExit("no write succeeded within 60 s of killing the leader")
    finally:
        for ch in channels:
            ch.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", default="etcd,securekv")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply request totals")
    ap.add_argument("--workloads", default=",".join(sb.WORKLOADS))
    opts = ap.parse_args()
    tool = subprocess.run([str(HERE / "build_etcd_benchmark.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    servers = opts.servers.split(",")
    workloads = opts.workloads.split(",")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    failovers: dict[str, list[float]] = {}
    problems: dict[str, str] = {}
    base = Path(tempfile.mkdtemp(prefix="securekv-cluster-bench-"))
    try:
        tls = sb.make_pki(base)
        for rnd in range(opts.rounds):
            for kind in (servers if rnd % 2 == 0 else list(reversed(servers))):
                if kind in problems:
                    continue
                try:
                    procs, urls = start_cluster(kind, base, tls, f"{kind}-{rnd}")
                except (NotACluster, SystemExit) as exc:
                    problems[kind] = str(exc)
                    print(f"round {rnd} {kind}: {exc}", file=sys.stderr)
                    continue
                try:
                    leader = urls[leader_index(urls, tls)]
                    sb.etcdctl(leader, tls, "put", "foo", "bar")
                    for name in workloads:
                        cpu0 = sum(sb.proc_cpu_seconds(p.pid) for p in procs)
                        rps, p99, total = sb.run_workload(tool, leader, tls, name, opts.scale)
                        cpu_ms = (sum(sb.proc_cpu_seconds(p.pid) for p in procs) - cpu0) * 1000 / total
                        results.setdefault((kind, name), []).append((rps, p99, cpu_ms))
                        print(f"round {rnd} {kind:9s} {name:32s} {rps:9.0f} req/s  p99 {p99:7.1f} ms  "
                              f"cpu {cpu_ms:.3f} ms/req (3 members)", file=sys.stderr)
                    fo = failover_seconds(procs, urls, tls)
                    failovers.setdefault(kind, []).append(fo)
                    print(f"round {rnd} {kind:9s} failover (kill -9 leader -> first write) {fo * 1000:.0f} ms",
                          file=sys.stderr)
                finally:
                    stop(procs)
        measured = [s for s in servers if s not in problems]
        sb.print_table("workload (3 members, to the leader)", measured, workloads, results)
        for kind in measured:
            fo = failovers[kind]
            print(f"\nfailover {kind}: median {statistics.median(fo) * 1000:.0f} ms "
                  f"(runs: {', '.join(f'{x * 1000:.0f}' for x in fo)} ms)")
        for kind, why in problems.items():
            print(f"\n{kind}: not measured: {why}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
