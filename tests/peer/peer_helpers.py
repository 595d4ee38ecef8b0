"""Helpers for tests/peer: certificates from securekv.pki and in-process transports on loopback."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import attrs
import trio

from securekv.peer import PeerTLS, PeerTransport
from securekv.raft.types import Message

CLUSTER = 0xC1
#: The membership every test transport binds certificates against: member ID -> name (the
#: name in the member's certificate). Members 5 and 6 were added but have not started (no name yet).
NAMES = {1: "m1", 2: "m2", 3: "m3", 4: "m4", 5: "", 6: ""}


@attrs.frozen
class PeerCerts:
    ca: Path
    crl: Path
    foreign_ca: Path

    def cert(self, name: str) -> tuple[Path, Path]:
        d = self.ca.parent
        return d / f"{name}.pem", d / f"{name}-key.pem"

    def foreign(self, name: str) -> tuple[Path, Path]:
        d = self.foreign_ca.parent
        return d / f"{name}.pem", d / f"{name}-key.pem"


def build_certs(base: Path) -> PeerCerts:
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import revoke, write_crl

    ca_dir, foreign_dir = base / "ca", base / "foreign"
    init_ca(ca_dir, cn="peer CA")
    for name in ("m1", "m2", "m3", "m4", "outsider", "gone", "ghost"):  # ghost: names no member at all
        issue_cert(ca_dir, "peer", name, hosts=["127.0.0.1", "localhost"])
    issue_cert(ca_dir, "peer", "elsewhere", hosts=["192.0.2.1", "elsewhere.example"])  # SAN not loopback
    issue_cert(ca_dir, "client", "clientonly")  # client auth only: not a peer certificate
    issue_cert(ca_dir, "server", "serveronly", hosts=["127.0.0.1"])  # server auth only
    issue_cert(ca_dir, "peer", "shared", cn="shared-peer", hosts=["127.0.0.1", "localhost"])  # names no member
    issue_cert(ca_dir, "peer", "farip", hosts=["192.0.2.7"])  # its only SAN is not the loopback address
    issue_cert(ca_dir, "peer", "localname", hosts=["localhost"])  # a DNS SAN only, resolving to 127.0.0.1
    revoke(ca_dir, "gone")
    write_crl(ca_dir)
    init_ca(foreign_dir, cn="foreign CA")
    issue_cert(foreign_dir, "peer", "m2", hosts=["127.0.0.1", "localhost"])
    return PeerCerts(ca=ca_dir / "ca.pem", crl=ca_dir / "crl.pem", foreign_ca=foreign_dir / "ca.pem")


def make_tls(certs: PeerCerts, name: str, *, foreign: bool = False, **kw) -> PeerTLS:
    cert, key = certs.foreign(name) if foreign else certs.cert(name)
    ca = certs.foreign_ca if foreign else certs.ca
    kw.setdefault("crl_file", None if foreign else str(certs.crl))
    return PeerTLS.from_files(str(cert), str(key), str(ca), **kw)


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a condition with a bounded deadline (used where no event exists, e.g. active_since)."""
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Member:
    """One transport with its callbacks recorded, its listener, and a scope to stop/restart it."""

    def __init__(self, member_id: int, tls: PeerTLS | None, *, cluster: int = CLUSTER, **kw) -> None:
        self.id = member_id
        self.names = dict(NAMES)
        self.tls = tls
        self.cluster = cluster
        self.kw = kw
        self.delivered: list[Message] = []
        self.unreachable: list[int] = []
        self.snapshots: list[tuple[int, bool]] = []
        self.changed = trio.Event()
        self.listeners: list[trio.SocketListener] = []
        self.port = 0
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.handshake_timeout = kw.pop("handshake_timeout", 5.0)
        self.transport = self._new_transport()

    def _new_transport(self) -> PeerTransport:
        return PeerTransport(self.id, self.cluster, self.tls, self._deliver, self._unreachable, self._snapshot,
                             self.handshake_timeout, rng=random.Random(self.id),
                             member_names=lambda: self.names, **self.kw)

    #: Optional extra receivers of the transport's callbacks (e.g. a RawNode), kept across restarts.
    on_deliver: Callable[[Message], None] | None = None
    on_unreachable: Callable[[int], None] | None = None
    on_snapshot: Callable[[int, bool], None] | None = None

    def _deliver(self, m: Message) -> None:
        self.delivered.append(m)
        self.changed.set()
        self.changed = trio.Event()
        if self.on_deliver is not None:
            self.on_deliver(m)

    def _unreachable(self, member_id: int) -> None:
        self.unreachable.append(member_id)
        if self.on_unreachable is not None:
            self.on_unreachable(member_id)

    def _snapshot(self, member_id: int, failed: bool) -> None:
        self.snapshots.append((member_id, failed))
        if self.on_snapshot is not None:
            self.on_snapshot(member_id, failed)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    async def listen(self) -> None:
        self.listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = self.listeners[0].socket.getsockname()[1]

    async def start(self, nursery: trio.Nursery) -> None:
        if not self.listeners:
            await self.listen()
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        started = trio.Event()

        async def runner() -> None:
            try:
                with self.scope:
                    async with trio.open_nursery() as n:
                        await n.start(self.transport.serve, self.listeners)
                        await n.start(self.transport.run)
                        started.set()
            finally:
                self.done.set()

        nursery.start_soon(runner)
        await started.wait()

    async def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        await self.done.wait()
        for lst in self.listeners:
            await lst.aclose()
        self.listeners = []

    async def restart(self, nursery: trio.Nursery) -> None:
        """A fresh transport (same id, port, peers), as after a process restart."""
        peers = self.transport.peers()
        await self.stop()
        self.transport = self._new_transport()
        for pid, urls in peers.items():
            self.transport.add_peer(pid, urls)
        await self.start(nursery)

    async def wait_delivered(self, n: int, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while len(self.delivered) < n:
                await self.changed.wait()


def connect_all(members: list[Member]) -> None:
    for a in members:
        for b in members:
            if a is not b:
                a.transport.add_peer(b.id, [b.url])


async def wait_connected(members: list[Member], timeout: float = 10.0) -> None:
    await wait_for(lambda: all(a.transport.active_since(b.id) is not None
                               for a in members for b in members if a is not b), timeout, "all connected")
