"""PeerTransport over real mutual TLS on loopback: delivery, batching, chunking, reconnects, calls."""

from __future__ import annotations

import trio

from securekv.errors import PeerError
from securekv.peer import encode_message
from securekv.raft.types import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata

from peer_helpers import Member, connect_all, make_tls, wait_connected, wait_for


def app(frm: int, to: int, i: int) -> Message:
    return Message(MessageType.APP, to=to, frm=frm, term=3, index=i, log_term=2, commit=i,
                   entries=(Entry(3, i + 1, data=b"v%d" % i),))


def big_app(index: int) -> Message:
    """An APP too big for one frame: it always takes the queue (it goes out in chunks)."""
    return Message(MessageType.APP, to=2, frm=1, term=3, index=index, log_term=2, commit=index,
                   entries=(Entry(3, index + 1, data=b"x" * (3 << 19)),))


async def three(peer_certs, nursery, **kw) -> list[Member]:
    return await connected(peer_certs, nursery, 3, **kw)


async def connected(peer_certs, nursery, count: int, **kw) -> list[Member]:
    """Members 1..count, listening, dialled to each other, running and connected."""
    members = [Member(i, make_tls(peer_certs, f"m{i}"), **kw) for i in range(1, count + 1)]
    for m in members:
        await m.listen()
    connect_all(members)
    for m in members:
        await m.start(nursery)
    await wait_connected(members)
    return members


async def test_many_messages_between_three(peer_certs, nursery) -> None:
    members = await three(peer_certs, nursery)
    n = 500
    for a in members:
        a.transport.send(app(a.id, b.id, i) for b in members if b is not a for i in range(n))
    for m in members:
        await m.wait_delivered(2 * n)
    for m in members:
        assert len(m.delivered) == 2 * n
        for sender in members:
            if sender is m:
                continue
            got = [x for x in m.delivered if x.frm == sender.id]
            assert got == [app(sender.id, m.id, i) for i in range(n)]  # in order, intact
        assert m.unreachable == []
    s = members[0].transport.stats()
    assert s["peers"][2]["messages_sent"] == n and s["peers"][2]["messages_received"] == n
    assert s["peers"][2]["bytes_sent"] > 0 and s["dropped"] == 0


async def test_messages_sent_together_share_frames(peer_certs, nursery) -> None:
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    before = a.transport.stats()["peers"][2]["bytes_sent"]
    n = 200
    a.transport.send(Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, commit=i) for i in range(n))
    await b.wait_delivered(n)
    sent = a.transport.stats()["peers"][2]["bytes_sent"] - before
    # One frame header + TLS record overhead for the lot, not per message: far less than
    # n separate frames would cost (each TLS record alone adds ~22 bytes, each frame 5).
    per_message = sent / n
    encoded = len(encode_message(
        Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, commit=1)))
    assert per_message < encoded + 4 + 8, (per_message, encoded)


async def test_large_snapshot_is_chunked_and_reported(peer_certs, nursery) -> None:
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    data = bytes(range(256)) * (5 * 4096)  # 5 MiB
    snap = Message(MessageType.SNAP, to=2, frm=1, term=4,
                   snapshot=Snapshot(SnapshotMetadata(100, 4, ConfState((1, 2, 3), (4,))), data))
    a.transport.send([snap] + [Message(MessageType.HEARTBEAT, to=2, frm=1, term=4)] * 3)
    await b.wait_delivered(4)
    got = [m for m in b.delivered if m.type == MessageType.SNAP]
    assert got == [snap]
    await wait_for(lambda: a.snapshots == [(2, False)], what="snapshot report")
    assert a.transport.stats()["peers"][2]["bytes_sent"] > len(data)


async def test_reconnect_after_peer_restart(peer_certs, nursery) -> None:
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    first = a.transport.active_since(2)
    await b.restart(nursery)
    await wait_for(lambda: a.transport.active_since(2) not in (None, first), what="reconnect to b")
    await wait_connected([a, b])
    a.transport.send([app(1, 2, 7)])
    b.transport.send([app(2, 1, 8)])
    await b.wait_delivered(1)
    await a.wait_delivered(1)
    assert b.delivered == [app(1, 2, 7)] and a.delivered == [app(2, 1, 8)]
    assert 2 in a.unreachable  # the lost connection was reported


async def test_call_round_trip_error_and_timeout(peer_certs, nursery) -> None:
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    release = trio.Event()

    async def echo(frm: int, payload: bytes) -> bytes:
        return b"%d:" % frm + payload

    async def fail(frm: int, payload: bytes) -> bytes:
        raise ValueError("no such key")

    async def slow(frm: int, payload: bytes) -> bytes:
        await release.wait()
        return b"late"

    b.transport.register_call("echo", echo)
    b.transport.register_call("fail", fail)
    b.transport.register_call("slow", slow)
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    assert await a.transport.call(2, "echo", b"hi") == b"1:hi"
    big = b"x" * (3 << 20)  # bigger than one frame both ways
    assert await a.transport.call(2, "echo", big) == b"1:" + big
    try:
        await a.transport.call(2, "fail", b"")
    except PeerError as exc:
        assert "no such key" in str(exc)
    else:
        raise AssertionError("remote handler error not raised")
    try:
        await a.transport.call(2, "nope", b"")
    except PeerError as exc:
        assert "unknown peer call kind 'nope'" in str(exc)
    else:
        raise AssertionError("unknown kind not refused")
    try:
        await a.transport.call(2, "slow", b"", timeout=0.2)
    except PeerError as exc:
        assert "timed out" in str(exc)
    else:
        raise AssertionError("no timeout")
    release.set()
    # the connection survives a timed-out call
    assert await a.transport.call(2, "echo", b"again") == b"1:again"


async def test_queue_overflow_drops_and_reports(peer_certs, nursery) -> None:
    a, b = await connected(peer_certs, nursery, 2, queue_size=8)
    # A message too big for one frame always takes the queue: handed to the waiting writer,
    # it keeps the writer busy. What follows in the same synchronous
    # stretch cannot be written directly (it would overtake it) and the writer cannot drain in
    # between, so 8 fit in the queue and the rest is dropped and reported.
    big = big_app(0)
    a.transport.send([big])
    a.transport.send(app(1, 2, i) for i in range(1, 21))
    assert a.unreachable == [2]
    dropped = a.transport.stats()["peers"][2]["dropped"]
    assert dropped == 12
    await b.wait_delivered(9)
    assert b.delivered == [big] + [app(1, 2, i) for i in range(1, 9)]


async def test_idle_writer_sends_directly_in_order(peer_certs, nursery) -> None:
    """Messages for a peer whose writer is idle are written at once by ``send`` (no queue):
    a burst larger than the queue arrives whole and in order, interleaved with queued ones."""
    a, b = await connected(peer_certs, nursery, 2, queue_size=8)
    a.transport.send(app(1, 2, i) for i in range(20))
    assert a.unreachable == []
    assert a.transport.stats()["peers"][2]["dropped"] == 0
    await b.wait_delivered(20)
    big = big_app(20)
    a.transport.send([big])  # queued (too big for one frame); what follows queues behind it
    a.transport.send(app(1, 2, i) for i in range(21, 25))
    await b.wait_delivered(25)
    assert b.delivered == [app(1, 2, i) for i in range(20)] + [big] + [app(1, 2, i) for i in range(21, 25)]
    a.transport.send(app(1, 2, i) for i in range(25, 30))  # the writer is idle again: direct
    await b.wait_delivered(30)
    assert b.delivered[25:] == [app(1, 2, i) for i in range(25, 30)]
    assert a.transport.stats()["peers"][2]["dropped"] == 0


async def test_send_to_down_peer_drops_and_reports(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    await a.listen()
    a.transport.add_peer(2, ["https://127.0.0.1:1"])  # nothing listens there
    await a.start(nursery)
    snap = Message(MessageType.SNAP, to=2, frm=1, snapshot=Snapshot(SnapshotMetadata(5, 1), b"s"))
    a.transport.send([app(1, 2, 1), snap, app(1, 9, 1)])
    assert sorted(a.unreachable) == [2, 9]
    assert a.snapshots == [(2, True)]
    assert a.transport.active_since(2) is None
    try:
        await a.transport.call(2, "echo", b"", timeout=0.2)
    except PeerError as exc:
        assert "timed out" in str(exc)
    else:
        raise AssertionError("call to a down peer succeeded")


async def test_remove_peer_closes_and_refuses(peer_certs, nursery) -> None:
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    a.transport.remove_peer(2)
    assert a.transport.active_since(2) is None
    await wait_for(lambda: b.transport.active_since(1) is None, what="b's connection to a closed")
    await wait_for(lambda: a.transport.stats()["refused"] >= 1, what="b refused by a")
    assert b.transport.active_since(1) is None


async def test_plaintext_when_tls_is_none(nursery) -> None:
    a, b = [Member(i, None) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    a.transport.send([])
    await wait_connected([a, b])
    a.transport.send([app(1, 2, 1)])
    await b.wait_delivered(1)
    assert b.delivered == [app(1, 2, 1)]


async def test_update_peer_moves_to_new_url(peer_certs, nursery) -> None:
    """Node migration: the member comes back on another port; update_peer redirects the dialer."""
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    await b.stop()
    await wait_for(lambda: a.transport.active_since(2) is None, what="a notices b is gone")
    b.port = 0
    await b.listen()  # a new port
    await b.start(nursery)
    a.transport.update_peer(2, [b.url])
    await wait_for(lambda: a.transport.active_since(2) is not None, what="a reaches b's new URL")
    a.transport.send([app(1, 2, 1)])
    await b.wait_delivered(1)
    assert a.transport.peers() == {2: [b.url]}


async def test_misaddressed_messages_dropped(peer_certs, nursery, caplog) -> None:
    """A member may only speak for itself: messages whose frm/to disagree with the handshake are dropped."""
    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    forged = Message(MessageType.VOTE, to=2, frm=3, term=9)  # a pretending to be member 3
    a.transport.send([forged, app(1, 2, 1)])
    await b.wait_delivered(1)
    assert b.delivered == [app(1, 2, 1)]
    assert any("dropping a VOTE message from peer 1 addressed 3 -> 2" in r.getMessage() for r in caplog.records)


def test_backoff_is_bounded_and_jittered() -> None:
    import random

    from securekv.peer import PeerTransport

    t = PeerTransport(1, 1, None, lambda m: None, lambda i: None, lambda i, f: None,
                      backoff_min=0.05, backoff_max=2.0, rng=random.Random(7))
    delays = [t._backoff(n) for n in range(1, 30)]
    assert all(0.025 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.05 and max(delays) > 1.0
    t2 = PeerTransport(1, 1, None, lambda m: None, lambda i: None, lambda i, f: None,
                       backoff_min=0.05, backoff_max=2.0, rng=random.Random(7))
    assert [t2._backoff(n) for n in range(1, 30)] == delays  # deterministic for a given RNG


class BlackholeProxy:
    """A TCP relay the test controls: while ``blackhole`` is on, bytes are read and discarded
    (a partition that drops packets: no RST, no FIN, the link just goes silent)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blackhole = False
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
        self.port = listeners[0].socket.getsockname()[1]

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            return
        async with upstream, client:
            async with trio.open_nursery() as n:
                n.start_soon(self._pump, client, upstream, n.cancel_scope)
                n.start_soon(self._pump, upstream, client, n.cancel_scope)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                if not self.blackhole:
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


async def test_silent_link_detected_by_idle_timeout_and_healed(peer_certs, nursery) -> None:
    kw = dict(keepalive_interval=0.05, idle_timeout=0.5, handshake_timeout=0.5)
    a, b = Member(1, make_tls(peer_certs, "m1"), **kw), Member(2, make_tls(peer_certs, "m2"), **kw)
    for m in (a, b):
        await m.listen()
    proxy = BlackholeProxy(b.port)
    await proxy.start(nursery)
    a.transport.add_peer(2, [f"https://127.0.0.1:{proxy.port}"])
    b.transport.add_peer(1, [a.url])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    proxy.blackhole = True
    await wait_for(lambda: a.transport.active_since(2) is None, timeout=5, what="a notices the silent link")
    a.transport.send([app(1, 2, 1)])  # dropped: the link is down
    assert a.unreachable[-1] == 2
    proxy.blackhole = False
    await wait_for(lambda: a.transport.active_since(2) is not None, timeout=10, what="a reconnects")
    a.transport.send([app(1, 2, 2)])
    await b.wait_delivered(1)
    assert b.delivered == [app(1, 2, 2)]


async def test_prometheus_collector(peer_certs, nursery) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from securekv.peer.metrics import PeerCollector

    a, b = [Member(i, make_tls(peer_certs, f"m{i}")) for i in (1, 2)]
    for m in (a, b):
        await m.listen()
    connect_all([a, b])
    for m in (a, b):
        await m.start(nursery)
    await wait_connected([a, b])
    a.transport.send([app(1, 2, 1)])
    await b.wait_delivered(1)
    reg = CollectorRegistry()
    reg.register(PeerCollector(a.transport))
    text = generate_latest(reg).decode()
    assert 'etcd_network_active_peers{Local="1",Remote="2"} 1.0' in text
    assert 'securekv_peer_messages_sent_total{To="2"} 1.0' in text
    assert 'etcd_network_peer_sent_failures_total{To="2"} 0.0' in text
    assert "securekv_peer_refused_total 0.0" in text
