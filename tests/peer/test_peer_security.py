"""Who may connect: peer-CA chains both ways, CRL, allowed CN/hostname, cluster and member IDs,
the handshake timeout. Every case is a real TLS handshake on loopback."""

from __future__ import annotations

import ssl

import pytest
import trio

from securekv.errors import UsageError
from securekv.peer import PeerTLS
from securekv.raft.types import Message, MessageType

from peer_helpers import CLUSTER, Member, make_tls, wait_for

HB = Message(MessageType.HEARTBEAT, to=1, frm=2, term=1)


async def pair(nursery, a: Member, b: Member, *, b_dials_as: int | None = None) -> None:
    """a knows b (so a accepts b); b dials a. Only b->a matters here: a never dials b."""
    for m in (a, b):
        await m.listen()
    a.transport.add_peer(b.id, ["https://127.0.0.1:1"] if a.tls else ["http://127.0.0.1:1"])
    b.transport.add_peer(b_dials_as or a.id, [a.url])
    for m in (a, b):
        await m.start(nursery)


async def assert_refused(a: Member, b: Member, counter: str, to: int | None = None) -> None:
    await wait_for(lambda: a.transport.stats()[counter] >= 1, what=f"{counter} on the listener")
    assert b.transport.active_since(to or a.id) is None
    b.transport.send([Message(MessageType.HEARTBEAT, to=to or a.id, frm=b.id, term=1)])
    assert a.delivered == []


async def test_accepted_baseline(peer_certs, nursery) -> None:
    a, b = Member(1, make_tls(peer_certs, "m1")), Member(2, make_tls(peer_certs, "m2"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="b connected to a")
    b.transport.send([HB])
    await a.wait_delivered(1)
    assert a.delivered == [HB]


async def test_client_cert_from_another_ca_refused(peer_certs, nursery, caplog, tmp_path) -> None:
    # b trusts both CAs (so it accepts a's server certificate) but presents a foreign-CA cert:
    # the refusal must come from a's side.
    both = tmp_path / "both.pem"
    both.write_bytes(peer_certs.ca.read_bytes() + peer_certs.foreign_ca.read_bytes())
    cert, key = peer_certs.foreign("m2")
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, PeerTLS.from_files(str(cert), str(key), str(both)))
    await pair(nursery, a, b)
    await assert_refused(a, b, "handshake_failures")
    lines = [r.getMessage() for r in caplog.records if r.name == "securekv.peer.transport"]
    assert any(x.startswith("refusing peer connection from 127.0.0.1:") and "certificate" in x for x in lines), lines


async def test_server_cert_from_another_ca_refused_by_dialer(peer_certs, nursery, caplog) -> None:
    # b trusts only the foreign CA: it must not accept a's (real-CA) server certificate.
    cert, key = peer_certs.cert("m2")
    tls = PeerTLS.from_files(str(cert), str(key), str(peer_certs.foreign_ca))
    a, b = Member(1, make_tls(peer_certs, "m1")), Member(2, tls)
    await pair(nursery, a, b)
    await wait_for(lambda: any("certificate verify failed" in r.getMessage() for r in caplog.records),
                   what="dialer's verify failure")
    assert b.transport.active_since(1) is None


async def test_server_hostname_checked_against_url(peer_certs, nursery, caplog) -> None:
    # a's certificate is valid (same CA) but names 192.0.2.1 / elsewhere.example, not 127.0.0.1.
    a, b = Member(1, make_tls(peer_certs, "elsewhere")), Member(2, make_tls(peer_certs, "m2"))
    await pair(nursery, a, b)
    await wait_for(lambda: any("certificate verify failed" in r.getMessage() and "127.0.0.1" in r.getMessage()
                               for r in caplog.records), what="hostname mismatch")
    assert b.transport.active_since(1) is None


async def test_revoked_cert_refused(peer_certs, nursery) -> None:
    a, b = Member(1, make_tls(peer_certs, "m1")), Member(2, make_tls(peer_certs, "gone"))
    await pair(nursery, a, b)
    await assert_refused(a, b, "handshake_failures")


async def test_cn_outside_allowed_cn_refused(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1", allowed_cn="m2"))
    b = Member(3, make_tls(peer_certs, "m3"))
    await pair(nursery, a, b)
    await assert_refused(a, b, "handshake_failures")
    assert any("certificate CN 'm3' is not the allowed CN 'm2'" in r.getMessage() for r in caplog.records)


async def test_allowed_cn_accepts_matching_cn(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1", allowed_cn="m2"))
    b = Member(2, make_tls(peer_certs, "m2", allowed_cn="m1"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="connected")


async def test_allowed_cn_checked_by_the_dialer_too(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2", allowed_cn="m3"))
    await pair(nursery, a, b)
    await wait_for(lambda: any("is not the allowed CN 'm3'" in r.getMessage() for r in caplog.records),
                   what="dialer refusing a's CN")
    assert b.transport.active_since(1) is None


async def test_allowed_hostname(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1", allowed_hostname="localhost"))
    b = Member(2, make_tls(peer_certs, "elsewhere"))  # SAN elsewhere.example / 192.0.2.1
    c = Member(3, make_tls(peer_certs, "m3"))  # SAN localhost
    await pair(nursery, a, b)
    await assert_refused(a, b, "handshake_failures")
    assert any("no SAN matching the allowed hostname 'localhost'" in r.getMessage() for r in caplog.records)
    await c.listen()
    a.transport.add_peer(3, ["https://127.0.0.1:1"])
    c.transport.add_peer(1, [a.url])
    await c.start(nursery)
    await wait_for(lambda: c.transport.active_since(1) is not None, what="c accepted")


async def test_wrong_cluster_id_refused_with_clear_log(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2"), cluster=CLUSTER + 1)
    await pair(nursery, a, b)
    await assert_refused(a, b, "refused")
    await wait_for(lambda: any("peer 1 refused the connection" in r.getMessage() for r in caplog.records),
                   what="the dialer's log line")
    lines = [r.getMessage() for r in caplog.records if "cluster ID mismatch" in r.getMessage()]
    want = f"member 2 belongs to cluster {CLUSTER + 1:x}, member 1 to cluster {CLUSTER:x}"
    assert any("refusing peer connection from 127.0.0.1:" in x and want in x for x in lines), lines
    # the dialer logs the listener's reason too
    assert any("peer 1 refused the connection: cluster ID mismatch" in x for x in lines), lines


async def test_wrong_receiver_id_refused(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2"))
    await pair(nursery, a, b, b_dials_as=3)  # b thinks member 3 lives at a's URL
    await assert_refused(a, b, "refused", to=3)
    assert any("member 2 wanted to reach member 3, but this is member 1" in r.getMessage() for r in caplog.records)


async def test_unknown_sender_refused(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(4, make_tls(peer_certs, "m4"))
    await a.listen()
    await b.listen()
    b.transport.add_peer(1, [a.url])  # a never heard of member 4
    await a.start(nursery)
    await b.start(nursery)
    await wait_for(lambda: a.transport.stats()["refused"] >= 1, what="refusal")
    assert b.transport.active_since(1) is None
    assert any("member 4 is not a member of cluster" in r.getMessage() for r in caplog.records)


async def test_handshake_timeout_on_silent_client(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"), handshake_timeout=0.3)
    await a.listen()
    await a.start(nursery)
    for phase in ("tcp", "tls"):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", a.port))
        stream: trio.abc.Stream = trio.SocketStream(sock)
        if phase == "tls":  # complete TLS with a valid cert, then never send the HELLO
            cert, key = peer_certs.cert("m2")
            ctx = ssl.create_default_context(cafile=str(peer_certs.ca))
            ctx.load_cert_chain(str(cert), str(key))
            stream = trio.SSLStream(stream, ctx, server_hostname="127.0.0.1")
            await stream.do_handshake()
        with trio.fail_after(5):
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass  # closed under us: also fine
        await trio.aclose_forcefully(stream)
    await wait_for(lambda: a.transport.stats()["handshake_failures"] >= 2, what="two handshake timeouts")
    assert any("peer handshake from 127.0.0.1" in r.getMessage() and "timed out" in r.getMessage()
               for r in caplog.records)


async def test_plaintext_dialer_refused_by_tls_listener(peer_certs, nursery) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    await a.listen()
    await a.start(nursery)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", a.port)
        from securekv.peer import codec
        await stream.send_all(codec.frame(codec.FrameKind.HELLO, codec.encode_hello(CLUSTER, 2, 1)))
        data = b""
        try:
            while chunk := await stream.receive_some(1024):
                data += chunk
        except trio.BrokenResourceError:
            pass
    assert b"SKVP" not in data  # never got a HELLO_OK
    await stream.aclose()
    await wait_for(lambda: a.transport.stats()["handshake_failures"] >= 1, what="TLS failure counted")


def test_bad_tls_configuration_is_a_usage_error(peer_certs, tmp_path) -> None:
    cert, key = peer_certs.cert("m1")
    with pytest.raises(UsageError, match="--peer-client-cert-auth needs --peer-trusted-ca-file"):
        PeerTLS.from_files(str(cert), str(key), None)
    with pytest.raises(UsageError, match="cannot load --peer-cert-file"):
        PeerTLS.from_files(str(tmp_path / "missing.pem"), str(key), str(peer_certs.ca))
    with pytest.raises(UsageError, match="is not a PEM CRL"):
        PeerTLS.from_files(str(cert), str(key), str(peer_certs.ca), crl_file=str(peer_certs.ca))
    with pytest.raises(UsageError, match="scheme http:// does not match"):
        from securekv.peer import PeerTransport
        t = PeerTransport(1, 1, make_tls(peer_certs, "m1"), lambda m: None, lambda i: None, lambda i, f: None)
        t.add_peer(2, ["http://127.0.0.1:2380"])


async def test_crl_reload_refuses_newly_revoked_member(tmp_path, nursery) -> None:
    """A CRL rewritten while running applies to the next connection, without a restart."""
    from securekv.pki.ca import init_ca
    from securekv.pki.issue import issue_cert
    from securekv.pki.revoke import revoke, write_crl

    d = tmp_path / "ca"
    init_ca(d, cn="reload CA")
    for name in ("m1", "m2"):
        issue_cert(d, "peer", name, hosts=["127.0.0.1"])
    write_crl(d)

    def tls(name: str) -> PeerTLS:
        return PeerTLS.from_files(str(d / f"{name}.pem"), str(d / f"{name}-key.pem"), str(d / "ca.pem"),
                                  crl_file=str(d / "crl.pem"))

    a, b = Member(1, tls("m1")), Member(2, tls("m2"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="connected before revocation")
    revoke(d, "m2")
    write_crl(d)
    await b.restart(nursery)  # b dials again; a must now check the new CRL
    await wait_for(lambda: a.transport.stats()["handshake_failures"] >= 1, what="revoked member refused")
    assert b.transport.active_since(1) is None


async def test_peer_auto_tls_encrypts_without_a_ca(tmp_path, nursery) -> None:
    """--peer-auto-tls: each member self-signs; no CA to verify against, so encryption only."""
    from securekv.pki.autotls import ensure_self_signed

    def tls(name: str) -> PeerTLS:
        auto = ensure_self_signed(tmp_path / name, ["127.0.0.1"])
        return PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None, client_cert_auth=False)

    a, b = Member(1, tls("a")), Member(2, tls("b"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="auto-TLS connection")
    b.transport.send([HB])
    await a.wait_delivered(1)
    with pytest.raises(UsageError, match="need --peer-trusted-ca-file"):
        auto = ensure_self_signed(tmp_path / "a", ["127.0.0.1"])
        PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None, client_cert_auth=False, allowed_cn="x")
