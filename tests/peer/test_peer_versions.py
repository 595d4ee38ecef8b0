"""The peer protocol carries its version in HELLO: a member speaking another version is refused
with a REFUSE frame that names both versions (a rolling upgrade that changes the protocol must
be planned, never discovered as garbled Raft messages)."""

from __future__ import annotations

import ssl

import trio

from securekv.peer import codec

from peer_helpers import CLUSTER, Member, make_tls, wait_for


async def _hello(peer_certs, port: int, version: int) -> bytes:
    cert, key = peer_certs.cert("m2")
    ctx = ssl.create_default_context(cafile=str(peer_certs.ca))
    ctx.load_cert_chain(str(cert), str(key))
    with trio.fail_after(10):
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), ctx, server_hostname="127.0.0.1")
        await stream.do_handshake()
        await stream.send_all(codec.frame(codec.FrameKind.HELLO, codec.encode_hello(CLUSTER, 2, 1, version=version)))
        data = b""
        try:
            while chunk := await stream.receive_some(4096):
                data += chunk
        except trio.BrokenResourceError:
            pass
    await trio.aclose_forcefully(stream)
    return data


async def test_other_protocol_version_is_refused_by_name(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    a.transport.add_peer(2, ["https://127.0.0.1:1"])  # member 2 is known: only the version is wrong
    await a.listen()
    await a.start(nursery)
    data = await _hello(peer_certs, a.port, codec.PROTOCOL_VERSION + 1)
    length, kind = codec.FRAME_HEAD.unpack_from(data)
    assert kind == codec.FrameKind.REFUSE
    reason = data[codec.FRAME_HEAD.size:codec.FRAME_HEAD.size + length].decode()
    assert f"peer protocol version {codec.PROTOCOL_VERSION + 1}" in reason
    assert str(codec.PROTOCOL_VERSION) in reason
    await wait_for(lambda: a.transport.stats()["refused"] >= 1, what="the refusal counted")
