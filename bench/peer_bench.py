"""Peer transport micro-benchmark: two in-process transports over real mutual TLS on loopback.

    python3 bench/peer_bench.py [--messages 100000] [--snapshot-mb 64] [--calls 2000]

Measures (one process, one trio thread for both ends, so figures are a lower bound for two
processes on two cores): streamed Raft APP messages per second (one 256-byte entry each),
snapshot transfer throughput, sequential call() round-trip latency, and the ping-pong of lone
messages (one APP out, its APP_RESP back, the next only then: what a sequential replicated
write costs the transport), as CPU µs per round trip. Not a test: results go to docs/peer.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from securekv.peer import PeerTLS, PeerTransport  # noqa: E402
from securekv.pki.ca import init_ca  # noqa: E402
from securekv.pki.issue import issue_cert  # noqa: E402
from securekv.raft.types import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata  # noqa: E402


class End:
    def __init__(self, mid: int, tls: PeerTLS) -> None:
        self.count = 0
        self.snaps: list[bool] = []
        self.wake = trio.Event()
        self.target = 0
        self.echo: Callable[[Message], None] | None = None
        self.t = PeerTransport(mid, 7, tls, self.deliver, lambda i: None,
                               lambda i, failed: self.snaps.append(failed), queue_size=8192,
                               member_names=lambda: {1: "m1", 2: "m2"})

    def deliver(self, m: Message) -> None:
        if self.echo is not None:
            self.echo(m)
        self.count += 1
        if self.count >= self.target:
            self.wake.set()

    async def wait_count(self, n: int) -> None:
        self.target = n
        while self.count < n:
            self.wake = trio.Event()
            await self.wake.wait()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        init_ca(d)
        for name in ("m1", "m2"):
            issue_cert(d, "peer", name, hosts=["127.0.0.1"])
        tls = {n: PeerTLS.from_files(str(d / f"{n}.pem"), str(d / f"{n}-key.pem"), str(d / "ca.pem"))
               for n in ("m1", "m2")}
        a, b = End(1, tls["m1"]), End(2, tls["m2"])
        la = await trio.open_tcp_listeners(0, host="127.0.0.1")
        lb = await trio.open_tcp_listeners(0, host="127.0.0.1")
        a.t.add_peer(2, [f"https://127.0.0.1:{lb[0].socket.getsockname()[1]}"])
        b.t.add_peer(1, [f"https://127.0.0.1:{la[0].socket.getsockname()[1]}"])

        async def echo(frm: int, payload: bytes) -> bytes:
            return payload

        b.t.register_call("echo", echo)
        async with trio.open_nursery() as n:
            for end, lst in ((a, la), (b, lb)):
                await n.start(end.t.serve, lst)
                await n.start(end.t.run)
            with trio.fail_after(10):
                while a.t.active_since(2) is None:
                    await trio.sleep(0.01)

            data = b"x" * 256
            total, burst = args.messages, 2000
            start = time.perf_counter()
            sent = 0
            while sent < total:
                k = min(burst, total - sent)
                a.t.send(Message(MessageType.APP, to=2, frm=1, term=2, index=sent + i,
                                 entries=(Entry(2, sent + i + 1, data=data),)) for i in range(k))
                sent += k
                await b.wait_count(sent - burst if sent > burst else 1)
            await b.wait_count(total)
            el = time.perf_counter() - start
            dropped = a.t.stats()["dropped"]
            print(f"| APP messages (1 × 256 B entry) | {total / el:,.0f} msg/s "
                  f"({total * 256 / el / 1e6:.1f} MB/s payload), dropped {dropped} |")

            snap = Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=Snapshot(
                SnapshotMetadata(10, 2, ConfState((1, 2))), b"s" * (args.snapshot_mb << 20)))
            before = b.count
            start = time.perf_counter()
            a.t.send([snap])
            await b.wait_count(before + 1)
            el = time.perf_counter() - start
            print(f"| snapshot {args.snapshot_mb} MiB | {el * 1000:,.0f} ms ({args.snapshot_mb / el:.0f} MiB/s) |")

            # Ping-pong: B answers every APP at once from its deliver callback (as a follower's
            # node loop would, minus the fsync); A sends the next APP only when the answer came.
            b.echo = lambda m: b.t.send([Message(MessageType.APP_RESP, to=1, frm=2, term=2, index=m.index)])
            rounds = args.pingpong
            before_a = a.count
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for i in range(rounds):
                a.t.send([Message(MessageType.APP, to=2, frm=1, term=2, index=i,
                                  entries=(Entry(2, i + 1, data=data),))])
                await a.wait_count(before_a + i + 1)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            b.echo = None
            print(f"| lone APP ping-pong | {cpu / rounds * 1e6:.0f} µs CPU, {wall / rounds * 1e6:.0f} µs wall "
                  f"per round trip (both ends, one thread) |")

            lat = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                await a.t.call(2, "echo", b"ping")
                lat.append((time.perf_counter() - t0) * 1000)
            lat.sort()
            print(f"| call() round trip, sequential | p50 {statistics.median(lat):.3f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99) - 1]:.3f} ms |")
            n.cancel_scope.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--snapshot-mb", type=int, default=64)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--pingpong", type=int, default=5000)
    trio.run(main, p.parse_args())
