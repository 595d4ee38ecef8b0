"""Who may connect: peer-CA chains both ways, CRL, allowed CN/hostname, cluster and member IDs,
the handshake timeout. Every case is a real TLS handshake on loopback. (Raw-socket probes of a
listener are in test_peer_probes.py.)"""

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


def refusal_texts(caplog) -> list[str]:
    """What listeners sent back in REFUSE frames, as the dialers logged it."""
    marker = "refused the connection: "
    return [r.getMessage().split(marker, 1)[1] for r in caplog.records if marker in r.getMessage()]


async def test_wrong_cluster_id_refused_with_clear_log(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2"), cluster=CLUSTER + 1)
    await pair(nursery, a, b)
    await assert_refused(a, b, "refused")
    await wait_for(lambda: any("peer 1 refused the connection" in r.getMessage() for r in caplog.records),
                   what="the dialer's log line")
    lines = [r.getMessage() for r in caplog.records if "cluster ID mismatch" in r.getMessage()]
    # The listener's own log names the IDs (for its operator) ...
    want = f"claims member 2 of cluster {CLUSTER + 1:x}, to reach 1; this is member 1 of cluster {CLUSTER:x}"
    assert any("refusing peer connection from 127.0.0.1:" in x and want in x for x in lines), lines
    # ... the refusal sent to the dialer does not.
    sent = refusal_texts(caplog)
    assert sent and all(t == "cluster ID mismatch: the dialing member belongs to another cluster" for t in sent), sent


async def test_wrong_receiver_id_refused(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2"))
    # b thinks member 3 (not yet named in b's view, and b does not know member 1) lives at a's
    # URL. (Knowing the names, b's own dialer refuses a's certificate: the next test.)
    b.names = {2: "m2", 3: ""}
    await pair(nursery, a, b, b_dials_as=3)
    await assert_refused(a, b, "refused", to=3)
    await wait_for(lambda: bool(refusal_texts(caplog)), what="the dialer's log line")
    assert refusal_texts(caplog)[0] == "this is not the member the dialer wanted to reach (a stale or swapped peer URL?)"


async def test_dialer_refuses_a_listener_whose_certificate_names_another_member(peer_certs, nursery,
                                                                              caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(2, make_tls(peer_certs, "m2"))
    await pair(nursery, a, b, b_dials_as=3)  # b thinks member 3 lives at a's URL
    await wait_for(lambda: any("refusing the certificate of peer 3: the certificate is for member 'm1', not for "
                               "the member the connection claims to be" in r.getMessage() for r in caplog.records),
                   what="the dialer's refusal")
    assert b.transport.active_since(3) is None and a.delivered == []


async def test_unknown_sender_refused(peer_certs, nursery, caplog) -> None:
    a = Member(1, make_tls(peer_certs, "m1"))
    b = Member(4, make_tls(peer_certs, "m4"))
    await a.listen()
    await b.listen()
    b.transport.add_peer(1, [a.url])  # a never heard of member 4
    await a.start(nursery)
    await b.start(nursery)
    a.names.pop(4)  # a's membership does not know member 4
    await wait_for(lambda: a.transport.stats()["refused"] >= 1, what="refusal")
    assert b.transport.active_since(1) is None
    await wait_for(lambda: bool(refusal_texts(caplog)), what="the dialer's log line")
    assert refusal_texts(caplog)[0] == "the dialing member is not a member of this cluster (unknown or removed)"


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
    with pytest.raises(UsageError, match="the peer port needs --peer-trusted-ca-file"):
        PeerTLS.from_files(str(cert), str(key), None)
    with pytest.raises(UsageError, match="cannot load --peer-cert-file"):
        PeerTLS.from_files(str(tmp_path / "missing.pem"), str(key), str(peer_certs.ca))
    with pytest.raises(UsageError, match="contains a CERTIFICATE block: a CRL file must contain only CRLs"):
        PeerTLS.from_files(str(cert), str(key), str(peer_certs.ca), crl_file=str(peer_certs.ca))
    with pytest.raises(UsageError, match="mutually exclusive"):
        PeerTLS.from_files(str(cert), str(key), str(peer_certs.ca), allowed_cn="m1", allowed_hostname="localhost")
    client_only = peer_certs.cert("clientonly")
    with pytest.raises(UsageError, match="is not a peer certificate: it needs both the server auth and the client"):
        PeerTLS.from_files(str(client_only[0]), str(client_only[1]), str(peer_certs.ca))
    with pytest.raises(UsageError, match="needs member_names"):
        from securekv.peer import PeerTransport
        PeerTransport(1, 1, make_tls(peer_certs, "m1"), lambda m: None, lambda i: None, lambda i, f: None)
    with pytest.raises(UsageError, match="scheme http:// does not match"):
        from securekv.peer import PeerTransport
        t = PeerTransport(1, 1, make_tls(peer_certs, "m1"), lambda m: None, lambda i: None, lambda i, f: None,
                          member_names=dict)
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

    a, b = Member(1, tls("m1"), tls_reload_interval=0.1), Member(2, tls("m2"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="connected before revocation")
    assert len(a.tls.live) == 1  # b's link into a, registered under its certificate
    revoke(d, "m2")
    write_crl(d)
    # The live link of the newly revoked member is closed by a's reload (no new dial needed) ...
    await wait_for(lambda: len(a.tls.live) == 0 and not a.transport.stats()["peers"][2]["incoming_connections"],
                   what="the revoked member's live link closed")
    # ... and every redial is refused.
    await wait_for(lambda: a.transport.stats()["handshake_failures"] >= 1, what="revoked member refused")
    assert b.transport.active_since(1) is None


async def test_peer_auto_tls_encrypts_without_a_ca(tmp_path, nursery) -> None:
    """--peer-auto-tls + the explicit opt-out: each member self-signs; no CA to verify against,
    so encryption only (refused without the opt-out)."""
    from securekv.pki.autotls import ensure_self_signed

    def tls(name: str) -> PeerTLS:
        auto = ensure_self_signed(tmp_path / name, ["127.0.0.1"])
        return PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None, insecure_skip_client_cert_auth=True)

    auto = ensure_self_signed(tmp_path / "x", ["127.0.0.1"])
    with pytest.raises(UsageError, match="the peer port needs --peer-trusted-ca-file"):
        PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None)

    a, b = Member(1, tls("a")), Member(2, tls("b"))
    await pair(nursery, a, b)
    await wait_for(lambda: b.transport.active_since(1) is not None, what="auto-TLS connection")
    b.transport.send([HB])
    await a.wait_delivered(1)
    with pytest.raises(UsageError, match="need --peer-trusted-ca-file"):
        auto = ensure_self_signed(tmp_path / "a", ["127.0.0.1"])
        PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None, insecure_skip_client_cert_auth=True,
                           allowed_cn="x")


def test_peer_insecure_opt_out_is_logged_loudly_each_time(peer_certs, caplog) -> None:
    """The only way to admit a member without a certificate says so at every start (and
    `securekv install` refuses it: tests/deploy/test_install_hostile.py)."""
    cert, key = peer_certs.cert("m1")
    for _ in range(2):
        PeerTLS.from_files(str(cert), str(key), str(peer_certs.ca), insecure_skip_client_cert_auth=True)
    warned = [r for r in caplog.records if r.levelname == "WARNING"
              and "--peer-insecure-skip-client-cert-auth: the peer port accepts connections WITHOUT a member "
                  "certificate" in r.getMessage()]
    assert len(warned) == 2
    caplog.clear()
    PeerTLS.from_files(str(cert), str(key), str(peer_certs.ca))
    assert not [r for r in caplog.records if "WITHOUT" in r.getMessage()]
