"""Snapshot save and restore of a large keyspace: encrypted vs ``--plaintext``, time and memory.

    python3 bench/snapshot_bench.py [--mib 256] [--value-size 1900] [--rounds 3] [--small-mib 64] [--dir DIR]

Builds a member holding ``--mib`` MiB of values (random, incompressible; keys ``bench/%08d``)
by restoring a generated snapshot into a data dir, starts ``securekv serve`` on it (mutual TLS,
waits for READY=1), then runs, in rounds that alternate the order (E P, P E, ...):

- ``securekv ctl snapshot save FILE --encryption-key-file K`` vs ``... --plaintext``;
- ``securekv ctl snapshot restore FILE --encryption-key-file K`` vs the plain file;

each as a real process, measuring wall time, CPU time (the process's, plus the server's during a
save: on a shared machine CPU time moves far less than wall time), and the process's peak
memory: ``ru_maxrss`` (from wait4; includes file pages it mapped) and the peak of ``RssAnon``
sampled from /proc every 20 ms (heap only: what "memory bounded" is about). The same is done once for a ``--small-mib``
keyspace, so memory can be compared across sizes. Ratios encrypted/plaintext are per round
(same load), medians reported. Not a test: numbers go to docs/benchmarks.md ("Snapshots").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from securekv.proto import kv_pb2  # noqa: E402
from securekv.server.etcdsnap import export_snapshot  # noqa: E402
from securekv.storage import Backend, Revision, WriteBatch  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_snapshot(work: Path, mib: int, value_size: int) -> Path:
    """A plain etcd snapshot (bbolt + padding + SHA-256) holding ``mib`` MiB of values."""
    keys = mib * (1 << 20) // value_size
    db_path = work / "gen.sqlite"
    with Backend.open(db_path) as db:
        batch: list[Revision] = []
        for i in range(keys):
            key = b"bench/%08d" % i
            kv = kv_pb2.KeyValue(key=key, create_revision=2 + i, mod_revision=2 + i, version=1,
                                 value=os.urandom(value_size))
            batch.append(Revision(2 + i, 0, key, kv.SerializeToString()))
            if len(batch) == 2048:
                db.commit(WriteBatch(puts=batch, consistent_index=2 + i))
                batch = []
        db.commit(WriteBatch(puts=batch, consistent_index=2 + keys))
        db.backup_to(work / "gen-copy.sqlite")
    export_snapshot(work / "gen-copy.sqlite", work / "gen.db")
    for p in (db_path, work / "gen-copy.sqlite"):
        p.unlink()
    out = work / "gen.snap"
    digest = hashlib.sha256()
    with open(work / "gen.db", "rb") as src, open(out, "wb") as dst:
        size = 0
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
            size += len(block)
        pad = bytes(-size % 512)
        digest.update(pad)
        dst.write(pad + digest.digest())
    (work / "gen.db").unlink()
    return out


class Measured:
    def __init__(self, seconds: float, cpu: float, maxrss: int, anon: int, server_cpu: float = 0.0) -> None:
        self.seconds, self.cpu, self.maxrss, self.anon, self.server_cpu = seconds, cpu, maxrss, anon, server_cpu

    @property
    def total_cpu(self) -> float:
        return self.cpu + self.server_cpu


def cpu_of(pid: int) -> float:
    """utime + stime of a running process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(argv: list[str], cwd: Path, server_pid: int | None = None) -> Measured:
    """Run to completion; wall time, its CPU time (and the server's during it), ru_maxrss and the
    sampled peak RssAnon (bytes)."""
    server0 = cpu_of(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        path = f"/proc/{proc.pid}/status"
        while not done.is_set():
            try:
                with open(path) as fh:
                    for line in fh:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                pass
            done.wait(0.02)

    t = threading.Thread(target=sample)
    t.start()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode(errors='replace')}")
    server = cpu_of(server_pid) - server0 if server_pid else 0.0
    return Measured(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, peak[0], server)


class Member:
    def __init__(self, work: Path, snap: Path) -> None:
        from securekv.pki.ca import init_ca
        from securekv.pki.issue import issue_cert

        self.work = work
        pki = work / "pki"
        init_ca(pki, cn="bench CA")
        issue_cert(pki, "server", "server", hosts=["127.0.0.1"])
        issue_cert(pki, "client", "root")
        self.ca, self.cert, self.key = pki / "ca.pem", pki / "root.pem", pki / "root-key.pem"
        self.port, self.peer = free_port(), f"https://127.0.0.1:{free_port()}"
        self.data = work / "member"
        subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "restore", str(snap), "--data-dir",
                        str(self.data), "--name", "m1", "--initial-cluster", f"m1={self.peer}",
                        "--initial-advertise-peer-urls", self.peer], env=ENV, check=True, capture_output=True)
        sock_path = work / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.settimeout(300)
        self.log = open(work / "member.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "securekv", "serve", "--name", "m1", "--data-dir", str(self.data),
             "--listen-client-urls", f"https://127.0.0.1:{self.port}", "--initial-cluster", f"m1={self.peer}",
             "--initial-advertise-peer-urls", self.peer, "--cert-file", str(pki / "server.pem"),
             "--key-file", str(pki / "server-key.pem"), "--trusted-ca-file", str(self.ca), "--client-cert-auth",
             "--quota-backend-bytes", str(8 << 30)],
            env={**ENV, "NOTIFY_SOCKET": str(sock_path)}, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
        finally:
            notify.close()

    def ctl(self) -> list[str]:
        return [sys.executable, "-m", "securekv", "ctl", "--endpoints", f"https://127.0.0.1:{self.port}",
                "--cacert", str(self.ca), "--cert", str(self.cert), "--key", str(self.key), "--command-timeout",
                "600s"]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def bench_size(work: Path, size_mib: int, value_size: int, rounds: int) -> dict:
    work.mkdir(parents=True)
    t = time.perf_counter()
    snap = build_snapshot(work, size_mib, value_size)
    print(f"[{size_mib} MiB] generated {snap.stat().st_size / (1 << 20):.0f} MiB snapshot in "
          f"{time.perf_counter() - t:.0f}s", flush=True)
    member = Member(work, snap)
    key = work / "bench.key"
    subprocess.run([sys.executable, "-m", "securekv", "ctl", "snapshot", "keygen", str(key)], env=ENV, check=True,
                   capture_output=True)
    results: dict[str, list[Measured]] = {k: [] for k in ("save-E", "save-P", "restore-E", "restore-P")}
    sizes = {}
    try:
        for r in range(rounds):
            order = ("E", "P") if r % 2 == 0 else ("P", "E")
            for mode in order:
                out = work / f"save-{mode}-{r}.snap"
                flags = ["--encryption-key-file", str(key)] if mode == "E" else ["--plaintext"]
                results[f"save-{mode}"].append(run([*member.ctl(), "snapshot", "save", str(out), *flags], work,
                                                   member.proc.pid))
                sizes[mode] = out.stat().st_size
            for mode in order:
                src = work / f"save-{mode}-{r}.snap"
                dest = work / f"restored-{mode}-{r}"
                flags = ["--encryption-key-file", str(key)] if mode == "E" else []
                results[f"restore-{mode}"].append(run([sys.executable, "-m", "securekv", "ctl", "snapshot",
                                                       "restore", str(src), "--data-dir", str(dest), *flags], work))
                shutil.rmtree(dest)
            for mode in order:
                (work / f"save-{mode}-{r}.snap").unlink()
            line = ", ".join(f"{k} {v[-1].seconds:.1f}s (cpu {v[-1].total_cpu:.1f}s)" for k, v in results.items())
            print(f"[{size_mib} MiB] round {r + 1}: {line}", flush=True)
    finally:
        member.close()
    return {"results": results, "sizes": sizes}


def report(size_mib: int, out: dict) -> None:
    res = out["results"]
    med = statistics.median
    print(f"\n### {size_mib} MiB keyspace (file: plain {mib(out['sizes']['P'])}, encrypted {mib(out['sizes']['E'])})")
    print("| step | wall s P / E (median) | wall ratio per round | median | CPU s P / E (client + server) | "
          "CPU ratio per round | median | peak RssAnon P / E | ru_maxrss P / E |")
    print("|---|---:|---|---:|---:|---|---:|---:|---:|")
    for step in ("save", "restore"):
        p, e = res[f"{step}-P"], res[f"{step}-E"]
        wall = [a.seconds / b.seconds for a, b in zip(e, p)]
        cpu = [a.total_cpu / b.total_cpu for a, b in zip(e, p)]
        print(f"| {step} | {med(x.seconds for x in p):.1f} / {med(x.seconds for x in e):.1f}"
              f" | {', '.join(f'{x:.2f}' for x in wall)} | {med(wall):.2f}"
              f" | {med(x.total_cpu for x in p):.1f} / {med(x.total_cpu for x in e):.1f}"
              f" | {', '.join(f'{x:.2f}' for x in cpu)} | {med(cpu):.2f}"
              f" | {mib(max(x.anon for x in p))} / {mib(max(x.anon for x in e))}"
              f" | {mib(max(x.maxrss for x in p))} / {mib(max(x.maxrss for x in e))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--small-mib", type=int, default=64, help="a second, smaller keyspace (0: skip)")
    parser.add_argument("--value-size", type=int, default=1900,
                        help="two values fill a 4 KiB bbolt page (4 KiB values would take two pages each)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a temp dir under the cwd)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="snapshot-bench-", dir=args.dir or os.getcwd()))
    print(f"load average at start: {os.getloadavg()[0]:.1f}; cpus: {os.cpu_count()}", flush=True)
    try:
        outs = {}
        if args.small_mib:
            outs[args.small_mib] = bench_size(base / "small", args.small_mib, args.value_size, 1)
        outs[args.mib] = bench_size(base / "large", args.mib, args.value_size, args.rounds)
        for size, out in outs.items():
            report(size, out)
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
