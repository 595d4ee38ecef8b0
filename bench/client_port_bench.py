"""The client-port benchmark of issue 15: securekv vs the real etcd 3.4, one and three members,
etcd's own Go benchmark tool as the client, same certificates, rounds alternating between the
servers (this shared 2-core machine drifts by 2x between days: compare within a run).

    python3 bench/client_port_bench.py [--rounds 3] [--scale 0.5] [--members 1,3]
                                       [--ceilings probe,noop-h2] [--probe PATH] [--no-memory]

Workloads (``server_bench.WORKLOADS``): put with 64 clients over 8 connections, sequential put
(1 client), linearizable range with 64 clients. Per cell: requests/s, p99 ms, and server CPU
per request (all threads of all members, from /proc). One member also runs the ceilings:

- ``probe``: the one-thread trio + h2 no-op of ``shared/probes/h2_ceiling_probe.py`` (the
  ceiling of this shape in CPython on this machine), found next to the checkout or by --probe;
- ``noop-h2``: securekv's own transport answering at once (``bench/h2_noop.py``).

Then, unless --no-memory: 10,000 idle watches over 100 TLS connections against one securekv
member, and its RSS (the issue's bound: under 200 MiB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster_bench as cb  # noqa: E402
import server_bench as sb  # noqa: E402

WORKLOADS = ["put 64 clients/8 conns", "put sequential (1 client)", "range linearizable 64 clients"]


def find_probe(given: str | None) -> Path | None:
    if given:
        return Path(given)
    for base in (sb.ROOT.parent, sb.ROOT.parent.parent):
        candidate = base / "shared" / "probes" / "h2_ceiling_probe.py"
        if candidate.exists():
            return candidate
    return None


def start_one(kind: str, base: Path, tls: dict[str, str], probe: Path | None) -> tuple[list[subprocess.Popen], str]:
    """One member of ``kind`` (etcd, securekv, noop-h2, probe): ([process], url)."""
    if kind not in ("probe", "noop-h2"):
        proc, url = sb.start_server(kind, base, tls)
        return [proc], url
    port = sb.free_port()
    if kind == "probe":
        cmd = [sys.executable, str(probe), tls["ca"], tls["cert"], tls["key"], str(port)]
    else:
        cmd = [sys.executable, str(HERE / "h2_noop.py"), "--port", str(port), "--ca", tls["ca"],
               "--cert", tls["cert"], "--key", tls["key"]]
    log = open(base / f"{kind}-{port}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                            env={**os.environ, "PYTHONPATH": str(sb.ROOT)})
    log.close()
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # no /health on a no-op: wait for the port
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} did not start (see {base})")
            time.sleep(0.1)
    return [proc], url


def measure(tool: str, procs: list[subprocess.Popen], url: str, tls: dict[str, str], name: str,
            scale: float) -> tuple[float, float, float]:
    cpu0 = sum(sb.proc_cpu_seconds(p.pid) for p in procs)
    rps, p99, total = sb.run_workload(tool, url, tls, name, scale)
    cpu_ms = (sum(sb.proc_cpu_seconds(p.pid) for p in procs) - cpu0) * 1000 / total
    return rps, p99, cpu_ms


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_watches(url: str, tls: dict[str, str], conns: int, per_conn: int) -> list[ssl.SSLSocket]:
    """``conns`` TLS connections, each with one Watch stream of ``per_conn`` watchers."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    from securekv.proto import rpc_pb2

    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["client_cert"], tls["client_key"])
    ctx.set_alpn_protocols(["h2"])
    port = int(url.rsplit(":", 1)[1])
    socks = []
    headers = [(":method", "POST"), (":scheme", "https"), (":path", "/etcdserverpb.Watch/Watch"),
               (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers")]
    for c in range(conns):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        conn.increment_flow_control_window(1 << 24)
        conn.send_headers(1, headers)
        body = b"".join(
            b"\x00" + len(m).to_bytes(4, "big") + m
            for m in (rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
                key=b"mem/%d/%d" % (c, i))).SerializeToString() for i in range(per_conn)))
        s.sendall(conn.data_to_send())
        created, buf = 0, b""
        while created < per_conn:  # read the created responses (and send what h2 must)
            while body and conn.local_flow_control_window(1) > 0:
                n = min(len(body), conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                conn.send_data(1, body[:n])
                body = body[n:]
            out = conn.data_to_send()
            if out:
                s.sendall(out)
            for ev in conn.receive_data(s.recv(1 << 20)):
                if isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    buf += ev.data
                    while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                        n = int.from_bytes(buf[1:5], "big")
                        created += rpc_pb2.WatchResponse.FromString(buf[5:5 + n]).created
                        buf = buf[5 + n:]
        s.sendall(conn.data_to_send())
        socks.append(s)
    return socks


def table(title: str, servers: list[str], results: dict, workloads: list[str]) -> None:
    print(f"\n| {title} | " + " | ".join(f"{s} req/s (p99 ms, CPU ms/req)" for s in servers) + " | securekv/etcd |")
    print("|---" * (len(servers) + 2) + "|")
    for name in workloads:
        cells, med = [], {}
        for kind in servers:
            rows = results.get((kind, name), [])
            if not rows:
                cells.append("–")
                continue
            med[kind] = statistics.median(r[0] for r in rows)
            cells.append(f"{med[kind]:,.0f} ({statistics.median(r[1] for r in rows):.1f}, "
                         f"{statistics.median(r[2] for r in rows):.3f})")
        ratio = f"{med['securekv'] / med['etcd']:.2f}" if "etcd" in med and "securekv" in med else "–"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.5, help="multiply request totals")
    ap.add_argument("--members", default="1,3")
    ap.add_argument("--ceilings", default="probe,noop-h2", help="no-op servers measured with one member")
    ap.add_argument("--probe", default=None, help="path of h2_ceiling_probe.py")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="a subset of: " + ", ".join(WORKLOADS))
    ap.add_argument("--tool", default=None, help="etcd's benchmark binary (default: build it)")
    opts = ap.parse_args()
    tool = opts.tool or subprocess.run([str(HERE / "build_etcd_benchmark.sh")], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1]
    workloads = [w for w in WORKLOADS if w in opts.workloads.split(",")]
    probe = find_probe(opts.probe)
    ceilings = [c for c in opts.ceilings.split(",") if c and (c != "probe" or probe is not None)]
    if "probe" in opts.ceilings.split(",") and probe is None:
        print("probe: h2_ceiling_probe.py not found (give --probe PATH); not measured", file=sys.stderr)
    base = Path(tempfile.mkdtemp(prefix="securekv-client-port-bench-"))
    try:
        tls = sb.make_pki(base)
        for members in [int(m) for m in opts.members.split(",")]:
            servers = ["etcd", "securekv"] + (ceilings if members == 1 else [])
            results: dict = {}
            for rnd in range(opts.rounds):
                for kind in (servers if rnd % 2 == 0 else list(reversed(servers))):
                    if members == 1:
                        procs, url = start_one(kind, base, tls, probe)
                    else:
                        procs, urls = cb.start_cluster(kind, base, tls, f"{kind}-{rnd}")
                        url = urls[cb.leader_index(urls, tls)]
                    try:
                        if kind in ("etcd", "securekv"):
                            sb.etcdctl(url, tls, "put", "foo", "bar")
                        for name in workloads:
                            if kind in ceilings and "range" in name and "linearizable" not in name:
                                continue
                            row = measure(tool, procs, url, tls, name, opts.scale)
                            results.setdefault((kind, name), []).append(row)
                            print(f"{members} member(s) round {rnd} {kind:9s} {name:32s} {row[0]:9.0f} req/s  "
                                  f"p99 {row[1]:7.1f} ms  cpu {row[2]:.3f} ms/req", file=sys.stderr)
                    finally:
                        cb.stop(procs)
            table(f"{members} member{'s' if members > 1 else ''}", servers, results, workloads)
        if not opts.no_memory:
            procs, url = start_one("securekv", base, tls, probe)
            try:
                before = rss_mib(procs[0].pid)
                socks = idle_watches(url, tls, 100, 100)
                time.sleep(1.0)
                after = rss_mib(procs[0].pid)
                print(f"\nmemory: 10,000 idle watches over 100 connections: RSS {after:.0f} MiB "
                      f"(before {before:.0f} MiB; bound 200 MiB)")
                for s in socks:
                    s.close()
            finally:
                cb.stop(procs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
