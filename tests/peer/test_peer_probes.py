"""Raw probes of a peer listener with Python's ``ssl`` (the attacker's view): who gets a
HELLO_OK, who is refused and with which words. Real TLS on loopback against a running transport;
the real-process probes with ``openssl s_client`` are in tests/cluster/test_cluster_peer_auth.py."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import trio

from securekv.peer import codec
from securekv.raft.types import Message, MessageType

from peer_helpers import CLUSTER, Member, make_tls, wait_for

HB = Message(MessageType.HEARTBEAT, to=1, frm=2, term=1)


def context(ca: Path, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def read_frame(stream: trio.abc.Stream) -> tuple[int, bytes]:
    buf = b""
    while len(buf) < codec.FRAME_HEAD.size:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    size, kind = codec.FRAME_HEAD.unpack_from(buf)
    while len(buf) < codec.FRAME_HEAD.size + size:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError
        buf += chunk
    return kind, buf[codec.FRAME_HEAD.size:codec.FRAME_HEAD.size + size]


class Probe:
    """One TLS connection to the listener that sends a HELLO and reads the answer."""

    def __init__(self, stream: trio.SSLStream | None, outcome: str, detail: bytes) -> None:
        self.stream = stream
        self.outcome = outcome  # "ok" (HELLO_OK), "refused" (REFUSE), "closed" (TLS error / EOF)
        self.detail = detail

    @property
    def text(self) -> str:
        return self.detail.decode(errors="replace")

    async def close(self) -> None:
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)


async def probe(port: int, ctx: ssl.SSLContext, cluster: int = CLUSTER, sender: int = 2, receiver: int = 1,
                keep: bool = False) -> Probe:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
            await stream.send_all(codec.frame(codec.FrameKind.HELLO, codec.encode_hello(cluster, sender, receiver)))
            kind, payload = await read_frame(stream)
    except (trio.BrokenResourceError, ssl.SSLError, EOFError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        return Probe(None, "closed", str(exc.__cause__ or exc).encode())
    result = Probe(stream, "ok" if kind == codec.FrameKind.HELLO_OK else
                   "refused" if kind == codec.FrameKind.REFUSE else f"kind {kind}", payload)
    if not keep:
        await result.close()
    return result


def assert_no_ids(text: str) -> None:
    """A refusal never names a cluster or member ID (they are 1..5 and c1 here)."""
    assert not re.search(r"\b(c1|[1-5])\b", text), text


@pytest.fixture
async def listener(peer_certs, nursery) -> Member:
    a = Member(1, make_tls(peer_certs, "m1"))
    await a.listen()
    for mid in (2, 3):
        a.transport.add_peer(mid, ["https://127.0.0.1:1"])  # known members; a never reaches them
    a.transport.add_peer(5, ["https://localhost:1"])  # added, not started, on this machine
    a.transport.add_peer(6, ["https://10.9.9.9:1"])  # added, not started, on another machine
    await a.start(nursery)
    return a


async def test_member_certificate_claiming_itself_is_accepted(peer_certs, listener) -> None:
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("m2")))
    assert p.outcome == "ok", p.text
    assert codec.decode_hello_ok(p.detail)[1:] == (CLUSTER, 1)


async def test_no_certificate_refused(peer_certs, listener, caplog) -> None:
    p = await probe(listener.port, context(peer_certs.ca, None))
    assert p.outcome == "closed", p.text
    await wait_for(lambda: listener.transport.stats()["handshake_failures"] >= 1, what="the failure counted")
    assert any("peer did not return a certificate" in r.getMessage() for r in caplog.records)


async def test_client_only_certificate_refused(peer_certs, listener) -> None:
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("clientonly")))
    assert p.outcome == "refused", p.text
    assert "is not a peer certificate: it needs both the server auth and the client auth usages" in p.text
    assert_no_ids(p.text)


async def test_server_only_certificate_refused(peer_certs, listener) -> None:
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("serveronly")))
    assert p.outcome == "closed", p.text  # OpenSSL: unsupported certificate purpose


async def test_foreign_ca_certificate_refused(peer_certs, listener) -> None:
    ctx = context(peer_certs.ca, peer_certs.foreign("m2"))
    p = await probe(listener.port, ctx)
    assert p.outcome == "closed", p.text


async def test_revoked_member_certificate_refused(peer_certs, listener) -> None:
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("gone")), sender=3)
    assert p.outcome == "refused" and "is revoked" in p.text, p.text
    assert_no_ids(p.text)


@pytest.mark.parametrize("cert,sender", [
    ("m3", 2),   # another member's certificate claiming member 2
    ("m2", 1),   # member 2's certificate claiming the listener itself
    ("m1", 2),   # the listener's own name claiming member 2
    ("m2", 5),   # an existing member claiming a member that was added but has not started
    ("shared", 2),  # a certificate naming no member, without --peer-cert-allowed-cn
    ("ghost", 2),   # a member certificate of the CA naming a member that does not exist
    ("ghost", 4),   # ...claiming a member this listener does not know either
])
async def test_certificate_of_another_member_refused(peer_certs, listener, cert, sender) -> None:
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert(cert)), sender=sender)
    assert p.outcome == "refused", (cert, sender, p.text)
    assert_no_ids(p.text)
    if sender in (1, 4):
        assert p.text == "the dialing member is not a member of this cluster (unknown or removed)"
    else:
        name = {"shared": "shared-peer"}.get(cert, cert)
        assert p.text == f"the certificate is for member {name!r}, not for the member the connection claims to be"


async def test_unnamed_member_accepts_a_certificate_naming_no_other_member(peer_certs, listener) -> None:
    """Member 5 was added (`member add`) but has not published its name: its first start is
    accepted with its own certificate (the name is then published through the log)."""
    p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("outsider")), sender=5)
    assert p.outcome == "ok", p.text


async def test_unnamed_member_is_bound_to_its_peer_urls(peer_certs, listener) -> None:
    """Member 6 was added at 10.9.9.9 and has not started: a peer certificate of the CA that
    names no member (a spare, or a member that does not exist) but is not for 10.9.9.9 cannot
    take its place — the real member's certificate covers its peer URL, the others dial it there."""
    for cert in ("ghost", "outsider"):
        p = await probe(listener.port, context(peer_certs.ca, peer_certs.cert(cert)), sender=6)
        assert p.outcome == "refused", (cert, p.text)
        assert p.text == ("the certificate covers none of the peer URL hosts of the member the connection claims "
                          "to be (a member added but not started yet is bound to its peer URLs)")
        assert_no_ids(p.text)


async def test_shared_certificate_with_allowed_cn_may_speak_for_any_member(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1", allowed_cn="shared-peer"))
    await a.listen()
    a.transport.add_peer(2, ["https://127.0.0.1:1"])
    await a.start(nursery)
    assert (await probe(a.port, context(peer_certs.ca, peer_certs.cert("shared")), sender=2)).outcome == "ok"
    # a member certificate outside the allowed CN is refused by etcd's rule
    p = await probe(a.port, context(peer_certs.ca, peer_certs.cert("m2")), sender=2)
    assert p.outcome == "refused" and "is not the allowed CN 'shared-peer'" in p.text, p.text


async def test_wrong_cluster_and_receiver_refused_without_ids(peer_certs, listener) -> None:
    ctx = context(peer_certs.ca, peer_certs.cert("m2"))
    p = await probe(listener.port, ctx, cluster=CLUSTER + 1)
    assert p.outcome == "refused" and "cluster ID mismatch" in p.text
    assert_no_ids(p.text)
    p = await probe(listener.port, ctx, receiver=3)
    assert p.outcome == "refused" and "not the member the dialer wanted to reach" in p.text
    assert_no_ids(p.text)
    p = await probe(listener.port, ctx, cluster=0, receiver=0, sender=4)  # discovery by a non-member
    assert p.outcome == "refused", p.text
    assert_no_ids(p.text)


async def test_cluster_id_discovery_answers_the_named_member_only(peer_certs, listener) -> None:
    ok = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("m2")), cluster=0, receiver=0, sender=2)
    assert ok.outcome == "ok" and codec.decode_hello_ok(ok.detail)[1] == CLUSTER
    bad = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("m3")), cluster=0, receiver=0, sender=2)
    assert bad.outcome == "refused" and "certificate is for member 'm3'" in bad.text
    assert_no_ids(bad.text)


async def test_second_connection_does_not_displace_the_live_one(peer_certs, nursery) -> None:
    a, b = Member(1, make_tls(peer_certs, "m1")), Member(2, make_tls(peer_certs, "m2"))
    for m in (a, b):
        await m.listen()
    a.transport.add_peer(2, ["https://127.0.0.1:1"])
    b.transport.add_peer(1, [a.url])
    for m in (a, b):
        await m.start(nursery)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="b connected to a")
    # Someone holding m2's certificate (a stolen key, or a stale process) claims member 2 twice.
    ctx = context(peer_certs.ca, peer_certs.cert("m2"))
    second = await probe(a.port, ctx, keep=True)
    assert second.outcome == "ok", second.text
    third = await probe(a.port, ctx)
    assert third.outcome == "refused" and "already has as many live connections here as allowed" in third.text, third.text
    assert_no_ids(third.text)
    # b's link was not displaced: its messages still arrive.
    b.transport.send([HB])
    await a.wait_delivered(1)
    assert b.transport.stats()["peers"][1]["connects"] == 1
    await second.close()


async def test_concurrent_connections_claiming_a_member_never_exceed_its_live_links(peer_certs, listener) -> None:
    """Many HELLOs for one member at the same moment: the slot is taken when the HELLO is
    accepted, not later, so the cap (2 live links per member) holds under a race."""
    ctx = context(peer_certs.ca, peer_certs.cert("m2"))
    probes: list[Probe] = []

    async def one() -> None:
        probes.append(await probe(listener.port, ctx, keep=True))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    try:
        outcomes = sorted(p.outcome for p in probes)
        assert outcomes.count("ok") == listener.transport.max_incoming_per_peer == 2, [p.text for p in probes]
        assert all("already has as many live connections" in p.text for p in probes if p.outcome != "ok")
    finally:
        for p in probes:
            await p.close()


async def test_connections_still_in_their_handshake_are_capped(peer_certs, nursery) -> None:
    """A stranger opening connections and never finishing the handshake holds at most
    max_pending_per_host of them (more are closed at once, before TLS); when they go, a member
    is served again. The same for the total over all addresses."""
    a = Member(1, make_tls(peer_certs, "m1"), max_pending_per_host=4, max_pending=6)
    await a.listen()
    a.transport.add_peer(2, ["https://127.0.0.1:1"])
    await a.start(nursery)
    ctx = context(peer_certs.ca, peer_certs.cert("m2"))
    silent = [await trio.open_tcp_stream("127.0.0.1", a.port) for _ in range(4)]
    await wait_for(lambda: a.transport._pending_total == 4, what="four silent connections pending")
    p = await probe(a.port, ctx)
    assert p.outcome == "closed", p.text
    assert a.transport.stats()["pending_refused"] == 1
    for s in silent:
        await s.aclose()
    await wait_for(lambda: a.transport._pending_total == 0, what="the silent connections gone")
    assert (await probe(a.port, ctx)).outcome == "ok"
    # The total: six from two loopback addresses fill it; a seventh from a third is closed.
    silent = []
    for host in ("127.0.0.2", "127.0.0.3"):
        for _ in range(3):
            sock = trio.socket.socket()
            await sock.bind((host, 0))
            await sock.connect(("127.0.0.1", a.port))
            silent.append(trio.SocketStream(sock))
    await wait_for(lambda: a.transport._pending_total == 6, what="six silent connections pending")
    assert (await probe(a.port, ctx)).outcome == "closed"
    assert a.transport.stats()["pending_refused"] == 2
    for s in silent:
        await s.aclose()


async def test_client_certificate_sans_must_cover_the_remote_address(peer_certs, listener) -> None:
    """etcd's peer-listener SAN check: an IP SAN equal to the address the member connects from,
    or a DNS SAN resolving to it; skipped by --experimental-peer-skip-client-san-verification."""
    far = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("farip")), sender=5)
    assert far.outcome == "refused", far.text
    assert far.text == ("tls: the certificate is valid for 192.0.2.7, not for 127.0.0.1, the address the "
                        "connection comes from")
    elsewhere = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("elsewhere")), sender=5)
    assert elsewhere.outcome == "refused" and 'does not match any of DNSNames' in elsewhere.text, elsewhere.text
    local = await probe(listener.port, context(peer_certs.ca, peer_certs.cert("localname")), sender=5)
    assert local.outcome == "ok", local.text  # localhost -> 127.0.0.1 by forward lookup


async def test_client_san_check_can_be_skipped_as_in_etcd(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1", skip_client_san_verification=True))
    await a.listen()
    a.transport.add_peer(5, ["https://192.0.2.7:1"])  # its certificate's address; it dials from loopback
    await a.start(nursery)
    p = await probe(a.port, context(peer_certs.ca, peer_certs.cert("farip")), sender=5)
    assert p.outcome == "ok", p.text
