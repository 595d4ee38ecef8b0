"""The client port's TLS stream (securekv/server/tlsstream.py): real OpenSSL handshakes over a
real socket pair, with trio's own SSLStream as the client. Handshake and ALPN, what tlspolicy
reads (the verified chain), transfers larger than the socket buffers both ways, close_notify,
a peer that dies in the middle of a record, a cancelled send, the synchronous send_nowait, and
that a client whose bytes are always ready does not keep the thread to itself."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from securekv.pki.ca import init_ca
from securekv.pki.issue import issue_cert
from securekv.server.tlsstream import YIELD_EVERY, TLSStream
from securekv.tlspolicy import TLSFiles
from securekv.tlspolicy.contexts import server_context
from securekv.tlspolicy.identity import verified_peer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca(ca, cn="test CA")
    issue_cert(ca, "server", "server", hosts=["127.0.0.1", "localhost"])
    issue_cert(ca, "client", "root")
    return ca


def contexts(ca: Path, alpn: list[str] | None = None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = server_context(TLSFiles(str(ca / "server.pem"), str(ca / "server-key.pem"), str(ca / "ca.pem")))
    client = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    client.load_cert_chain(str(ca / "root.pem"), str(ca / "root-key.pem"))
    client.set_alpn_protocols(alpn if alpn is not None else ["h2"])
    return server, client


async def connected(ca: Path, alpn: list[str] | None = None) -> tuple[TLSStream, trio.SSLStream]:
    a, b = trio.socket.socketpair()
    server_ctx, client_ctx = contexts(ca, alpn)
    server = TLSStream(trio.SocketStream(a), server_ctx)
    client = trio.SSLStream(trio.SocketStream(b), client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def test_handshake_alpn_and_the_verified_client_certificate(pki: Path) -> None:
    server, client = await connected(pki, ["http/1.1"])
    async with server, client:
        assert server.selected_alpn_protocol() == "http/1.1"
    server, client = await connected(pki, ["h2"])
    async with server, client:
        assert server.selected_alpn_protocol() == "h2"
        peer = verified_peer(server, "127.0.0.1:1")
        assert peer.common_name == "root"
        assert len(peer.chain) == 2  # leaf and CA, as OpenSSL verified them
        await client.send_all(b"ping")
        assert await server.receive_some() == b"ping"
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"


async def test_a_client_without_a_certificate_fails_the_handshake(pki: Path) -> None:
    a, b = trio.socket.socketpair()
    server_ctx, _ = contexts(pki)
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    server = TLSStream(trio.SocketStream(a), server_ctx)
    client = trio.SSLStream(trio.SocketStream(b), anonymous, server_hostname="localhost")
    failed: list[BaseException] = []

    async def serve() -> None:
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            failed.append(exc)
        await server.transport_stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        try:
            await client.do_handshake()
            await client.receive_some()  # TLS 1.3: the verdict arrives after the client finished
        except trio.BrokenResourceError:
            pass
    await client.transport_stream.aclose()
    assert failed and isinstance(failed[0].__cause__, ssl.SSLError)


async def test_big_transfers_both_ways_at_once(pki: Path) -> None:
    server, client = await connected(pki)
    blob = bytes(range(256)) * (12 * 4096)  # 12 MiB: far more than the socket buffers hold

    async def pump(send: trio.abc.Stream, receive: trio.abc.Stream, got: bytearray) -> None:
        async with trio.open_nursery() as nursery:
            async def sender() -> None:
                for start in range(0, len(blob), 1 << 20):
                    await send.send_all(blob[start:start + (1 << 20)])
            nursery.start_soon(sender)
            while len(got) < len(blob):
                got += await receive.receive_some(70000)

    async with server, client:
        to_client, to_server = bytearray(), bytearray()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, server, client, to_client)
                nursery.start_soon(pump, client, server, to_server)
        assert to_client == blob and to_server == blob


async def test_close_notify_both_ways(pki: Path) -> None:
    server, client = await connected(pki)
    await client.send_all(b"last words")
    await client.aclose()  # close_notify, then the socket closes
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""  # a clean end of stream, not an error
    await server.aclose()
    await server.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some()

    server, client = await connected(pki)
    await server.send_all(b"bye")
    await server.aclose()
    assert await client.receive_some() == b"bye"
    assert await client.receive_some() == b""  # our close_notify arrived
    await client.aclose()


async def test_a_peer_dying_in_the_middle_of_a_record_breaks_the_stream(pki: Path) -> None:
    server, client = await connected(pki)
    # Take the client's socket over: half of a TLS record, then the connection is gone.
    raw = client.transport_stream
    record = bytearray()
    inner = client._ssl_object  # trio keeps it private; this test only needs a record's bytes
    inner.write(b"x" * 1000)
    record += client._outgoing.read()
    await raw.send_all(bytes(record[: len(record) // 2]))
    await raw.aclose()
    with pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some()
    # EOF in violation of the protocol, or a reset (the client left bytes unread)
    assert isinstance(info.value.__cause__, (ssl.SSLError, ConnectionResetError))
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"too late")
    await server.aclose()


def _records(client: trio.SSLStream, *parts: bytes) -> bytes:
    """The ciphertext of one TLS record per part, as the client would send them."""
    inner = client._ssl_object  # trio keeps it private; these tests need records' bytes
    out = bytearray()
    for part in parts:
        inner.write(part)
        out += client._outgoing.read()
    return bytes(out)


async def test_records_that_arrived_together_come_out_in_one_receive(pki: Path) -> None:
    """grpc-go sends its BDP PING and the next request as two records in one write: the gRPC
    reader must see both in one pass (else it answers the PING alone, in its own write)."""
    server, client = await connected(pki)
    async with server, client:
        await client.transport_stream.send_all(_records(client, b"ping+window", b"request", b"more"))
        await trio.testing.wait_all_tasks_blocked()
        assert await server.receive_some() == b"ping+windowrequestmore"
        # max_bytes still bounds it; the rest of a record comes next
        await client.transport_stream.send_all(_records(client, b"abc", b"defgh"))
        await trio.testing.wait_all_tasks_blocked()
        assert await server.receive_some(5) == b"abcde"
        assert await server.receive_some(5) == b"fgh"
        # a record and half of the next: the first now, the second once it is whole
        both = _records(client, b"whole", b"half")
        cut = len(both) - 10
        await client.transport_stream.send_all(both[:cut])
        await trio.testing.wait_all_tasks_blocked()
        assert await server.receive_some() == b"whole"
        await client.transport_stream.send_all(both[cut:])
        assert await server.receive_some() == b"half"


async def test_a_bad_record_after_good_ones_fails_the_next_receive(pki: Path) -> None:
    server, client = await connected(pki)
    good = _records(client, b"good", b"also good")
    bad = bytearray(_records(client, b"tampered"))
    bad[-1] ^= 1  # the AEAD tag no longer matches
    await client.transport_stream.send_all(good + bytes(bad))
    await trio.testing.wait_all_tasks_blocked()
    assert await server.receive_some() == b"goodalso good"
    with pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await server.aclose()
    await client.transport_stream.aclose()

    server, client = await connected(pki)
    await client.send_all(b"last words")
    await client.aclose()  # close_notify right behind the data, often in one socket read
    await trio.testing.wait_all_tasks_blocked()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    await server.aclose()


async def test_a_cancelled_send_breaks_the_stream(pki: Path) -> None:
    server, client = await connected(pki)
    async with server, client:
        # Nobody reads on the client: the socket fills and the send waits for it.
        with trio.move_on_after(0.5) as scope:
            await server.send_all(b"y" * (8 << 20))
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):  # no record may follow a half-sent one
            await server.send_all(b"more")


async def test_send_nowait_queues_what_the_socket_does_not_take(pki: Path) -> None:
    server, client = await connected(pki)
    async with server, client:
        assert server.send_nowait(b"small") is True
        assert await client.receive_some() == b"small"
        big = b"z" * (8 << 20)
        assert server.send_nowait(big) is False  # the rest is queued in order
        got = bytearray()

        async def read_all() -> None:
            while len(got) < len(big) + 5:
                got.extend(await client.receive_some(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await server.send_all(b"after")  # pushes the queue first, then this
        assert got == big + b"after"


async def test_concurrent_use_of_one_direction_is_refused(pki: Path) -> None:
    server, client = await connected(pki)
    async with server, client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            await client.send_all(b"!")


async def test_a_flooding_client_does_not_keep_the_thread(pki: Path) -> None:
    """Bytes always ready: receive_some never has to wait, yet it yields every few calls."""
    server, client = await connected(pki)
    async with server, client:
        for _ in range(4 * YIELD_EVERY):
            await client.send_all(b"a" * 100)
        ticks = 0
        stop = False

        async def other_task() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.sleep(0)
            before = ticks
            got = 0
            while got < 4 * YIELD_EVERY * 100:
                got += len(await server.receive_some(100))
            stop = True
        assert ticks - before >= 3  # the other task ran while the flood was being read
