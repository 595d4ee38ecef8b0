"""gRPC over HTTP/2 on a real member, with a raw h2 client: the answers grpc-go (etcd 3.4's
gRPC) gives to deadlines, cancellation, resets, flow-control stalls, ping floods, oversized
messages, malformed frames and headers, and half-closed streams."""

from __future__ import annotations

import gzip
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Iterator

import h2.errors
import h2.events
import pytest

from h2client import H2Client, frame, grpc_headers, parse_frames
from securekv.proto import health_pb2, rpc_pb2, v3election_pb2, v3lock_pb2
from server_harness import Certs, Member

pytestmark = pytest.mark.timeout(120)

RANGE, PUT = "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put"
MAX_REQUEST = 100_000
RECEIVE_LIMIT = MAX_REQUEST + 512 * 1024  # grpc-go's limit in etcd: --max-request-bytes + 512 KiB


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Member]:
    member = Member("securekv", tmp_path_factory.mktemp("proto") / "data", certs,
                    ["--max-request-bytes", str(MAX_REQUEST), "--grpc-keepalive-min-time", "300ms"]).start()
    yield member
    member.kill()


def client(m: Member, **kw: object) -> H2Client:
    c = m.certs
    return H2Client(m.port, c.ca, c.client_cert, c.client_key, **kw)


def put(key: bytes, value: bytes, **kw: object) -> bytes:
    return frame(rpc_pb2.PutRequest(key=key, value=value, **kw).SerializeToString())


def rng(key: bytes, **kw: object) -> bytes:
    return frame(rpc_pb2.RangeRequest(key=key, **kw).SerializeToString())


def test_unary_call_headers_message_trailers(m: Member) -> None:
    with client(m) as c:
        r = c.result(c.request(PUT, put(b"p/a", b"1")))
        assert r.headers[":status"] == "200" and r.headers["content-type"] == "application/grpc"
        assert r.status == 0 and not r.trailers_only and r.reset is None
        assert rpc_pb2.PutResponse.FromString(r.messages()[0]).header.revision >= 2
        r = c.result(c.request(RANGE, rng(b"p/a")))
        assert rpc_pb2.RangeResponse.FromString(r.messages()[0]).kvs[0].value == b"1"


def test_unknown_paths_answer_like_grpc_go(m: Member) -> None:
    with client(m) as c:
        cases = {
            "/etcdserverpb.KV/Nope": (12, "unknown method Nope for service etcdserverpb.KV"),
            "/nope.Service/X": (12, "unknown service nope.Service"),
            "/noslash": (8, 'malformed method name: "/noslash"'),
            "/caf\u00e9.Svc/M": (12, "unknown service caf\u00e9.Svc"),  # percent-encoded on the wire
        }
        for path, (code, message) in cases.items():
            r = c.result(c.request(path, frame(b"")))
            assert r.trailers_only and (r.status, r.message) == (code, message), path
        assert "%C3%A9" in r.trailers["grpc-message"]


def test_bad_request_bytes_and_missing_message(m: Member) -> None:
    with client(m) as c:
        r = c.result(c.request(RANGE, frame(b"\xff\xff\xff")))
        assert r.status == 13 and r.message.startswith("grpc: error unmarshalling request:")
        r = c.result(c.request(RANGE))  # END_STREAM on the headers: no message at all
        assert (r.status, r.message) == (2, "EOF")
        r = c.result(c.request(RANGE, b"\x00\x00\x00\x00\x09abc"))  # cut short
        assert (r.status, r.message) == (13, "unexpected EOF")


def test_oversized_message_resource_exhausted_and_etcd_size_rule(m: Member) -> None:
    with client(m) as c:
        big = RECEIVE_LIMIT + 1
        sid = c.request(PUT, b"\x00" + big.to_bytes(4, "big") + b"x" * 1000, end=False)
        r = c.result(sid)
        assert (r.status, r.message) == (8, f"grpc: received message larger than max ({big} vs. {RECEIVE_LIMIT})")
        assert r.reset == 0  # the rest of the request is not wanted: RST_STREAM NO_ERROR
        r = c.result(c.request(PUT, put(b"big", b"x" * (MAX_REQUEST + 10))))
        assert (r.status, r.message) == (3, "etcdserver: request is too large")
        r = c.result(c.request(RANGE, rng(b"big")))  # the connection is still fine
        assert r.status == 0 and not rpc_pb2.RangeResponse.FromString(r.messages()[0]).kvs


def test_gzip_request_accepted_other_encodings_unimplemented(m: Member) -> None:
    with client(m) as c:
        body = gzip.compress(rpc_pb2.PutRequest(key=b"gz", value=b"zipped").SerializeToString())
        msg = b"\x01" + len(body).to_bytes(4, "big") + body
        r = c.result(c.request(PUT, msg, headers=grpc_headers(PUT, ("grpc-encoding", "gzip"))))
        assert r.status == 0
        r = c.result(c.request(RANGE, rng(b"gz")))
        assert rpc_pb2.RangeResponse.FromString(r.messages()[0]).kvs[0].value == b"zipped"
        r = c.result(c.request(RANGE, rng(b"gz"), headers=grpc_headers(RANGE, ("grpc-encoding", "br"))))
        assert (r.status, r.message) == (12, 'grpc: Decompressor is not installed for grpc-encoding "br"')


def test_malformed_headers_reset_stream_connection_lives(m: Member) -> None:
    with client(m, validate=False) as c:
        bad = [
            grpc_headers(RANGE, content_type="application/json"),
            grpc_headers(RANGE, ("grpc-timeout", "10parsecs")),
            grpc_headers(RANGE, ("Upper-Case", "x")),
            grpc_headers(RANGE, ("connection", "keep-alive")),
        ]
        for headers in bad:
            r = c.result(c.request(RANGE, rng(b"a"), headers=headers))
            assert r.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR and r.status is None, headers
        assert c.result(c.request(RANGE, rng(b"a"))).status == 0


def test_malformed_frames_goaway_and_the_member_serves_on(m: Member) -> None:
    with client(m) as c:
        c.result(c.request(RANGE, rng(b"a")))
        # DATA on stream 0 is a connection error (RFC 9113 6.1): GOAWAY PROTOCOL_ERROR, then close.
        c.send_raw(b"\x00\x00\x03\x00\x00\x00\x00\x00\x00abc")
        events = c.pump(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)][0]
        assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        c.pump(lambda evs: False, timeout=5) if not c.closed else None
        assert c.closed
    with client(m) as c:
        # A frame longer than SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR.
        c.send_raw((20000).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01" + b"\0" * 20000)
        events = c.pump(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        assert [e for e in events if isinstance(e, h2.events.ConnectionTerminated)][0].error_code in (
            h2.errors.ErrorCodes.FRAME_SIZE_ERROR, h2.errors.ErrorCodes.PROTOCOL_ERROR)
    assert m.ctl("get", "a").returncode == 0


def test_garbage_instead_of_preface_is_closed(m: Member) -> None:
    ctx = ssl.create_default_context(cafile=str(m.certs.ca))
    ctx.load_cert_chain(str(m.certs.client_cert), str(m.certs.client_key))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", m.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    # grpc-go (and Go's http2 server) close the connection on a bogus greeting, no GOAWAY;
    # all the client saw is the server's own preface (SETTINGS, WINDOW_UPDATE).
    assert {type(f).__name__ for f in parse_frames(data)} <= {"SettingsFrame", "WindowUpdateFrame"}


def test_deadline_on_a_waiting_lock_and_the_key_is_withdrawn(m: Member) -> None:
    with client(m) as c:
        lease = _lease(c)
        held = c.result(c.request("/v3lockpb.Lock/Lock", frame(v3lock_pb2.LockRequest(
            name=b"dl", lease=lease).SerializeToString())))
        assert held.status == 0
        lease2 = _lease(c)
        start = time.monotonic()
        sid = c.request("/v3lockpb.Lock/Lock", frame(v3lock_pb2.LockRequest(name=b"dl", lease=lease2).SerializeToString()),
                        headers=grpc_headers("/v3lockpb.Lock/Lock", ("grpc-timeout", "700m")))
        r = c.result(sid, timeout=10)
        assert (r.status, r.message) == (4, "context deadline exceeded")
        assert 0.6 < time.monotonic() - start < 5
        assert _keys(c, b"dl/") == [b"dl/%x" % lease]  # the waiter's key was deleted (etcd's Mutex)


def test_rst_stream_cancels_a_waiting_lock(m: Member) -> None:
    with client(m) as c:
        lease = _lease(c)
        assert c.result(c.request("/v3lockpb.Lock/Lock", frame(v3lock_pb2.LockRequest(
            name=b"rst", lease=lease).SerializeToString()))).status == 0
        lease2 = _lease(c)
        sid = c.request("/v3lockpb.Lock/Lock", frame(v3lock_pb2.LockRequest(name=b"rst", lease=lease2).SerializeToString()))
        _wait_keys(c, b"rst/", 2)
        c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        _wait_keys(c, b"rst/", 1)


def test_connection_loss_cancels_a_campaign(m: Member) -> None:
    with client(m) as c:
        lease = _lease(c)
        assert c.result(c.request("/v3electionpb.Election/Campaign", frame(v3election_pb2.CampaignRequest(
            name=b"el", lease=lease, value=b"a").SerializeToString()))).status == 0
        lease2 = _lease(c)
        with client(m) as loser:
            loser.request("/v3electionpb.Election/Campaign", frame(v3election_pb2.CampaignRequest(
                name=b"el", lease=lease2, value=b"b").SerializeToString()))
            _wait_keys(c, b"el/", 2)
        _wait_keys(c, b"el/", 1)  # the socket closed: the campaign was cancelled, its key removed


def test_flow_control_stall_blocks_only_that_stream(m: Member) -> None:
    value = b"v" * 90_000
    with client(m) as c:
        assert c.result(c.request(PUT, put(b"fc/big", value))).status == 0
    with client(m, window=1000) as c:
        c.auto_window = False  # read frames but never return the window
        big = c.request(RANGE, rng(b"fc/big"))
        c.pump(lambda evs: sum(len(e.data) for e in evs if isinstance(e, h2.events.DataReceived)) >= 1000)
        time.sleep(0.3)
        c.pump(lambda evs: True, timeout=1)
        got = sum(len(e.data) for e in c.events if isinstance(e, h2.events.DataReceived) and e.stream_id == big)
        assert got == 1000  # exactly the window the client gave, no more
        small = c.request(RANGE, rng(b"fc/none"))  # another stream of the same connection
        assert c.result(small).status == 0
        assert m.ctl("get", "fc/none").returncode == 0  # and other clients are not held up
        c.auto_window = True
        c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        c.conn.increment_flow_control_window(1 << 20)
        c.conn.increment_flow_control_window(1 << 20, big)
        c.flush()
        r = c.result(big, timeout=20)
        assert r.status == 0 and rpc_pb2.RangeResponse.FromString(r.messages()[0]).kvs[0].value == value


def test_ping_flood_goaway_too_many_pings_but_paced_pings_are_fine(m: Member) -> None:
    with client(m) as c:
        watch = c.request("/etcdserverpb.Watch/Watch", frame(rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"ping")).SerializeToString()), end=False)
        c.pump(lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == watch for e in evs))
        for i in range(4):  # a stream is open and pings come slower than --grpc-keepalive-min-time
            time.sleep(0.4)
            c.conn.ping(b"paced%03d" % i)
            c.flush()
            c.pump(lambda evs, i=i: len([e for e in evs if isinstance(e, h2.events.PingAckReceived)]) > i)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in c.events)
    with client(m) as c:
        for i in range(10):
            c.conn.ping(b"flood%03d" % i)
        c.flush()
        events = c.pump(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)][0]
        assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert goaway.additional_data == b"too_many_pings"
        c.pump(lambda evs: False, timeout=5) if not c.closed else None
        assert c.closed


def test_half_closed_streams(m: Member) -> None:
    with client(m) as c:
        # The client half-closes a watch right after creating it: etcd keeps sending events.
        sid = c.request("/etcdserverpb.Watch/Watch", frame(rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"hc")).SerializeToString()), end=True)
        c.pump(lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == sid for e in evs))
        m.ctl("put", "hc", "1")
        c.pump(lambda evs: sum(1 for e in evs if isinstance(e, h2.events.DataReceived) and e.stream_id == sid) >= 2)
        assert Result_messages(c, sid)[-1].events[0].kv.value == b"1"
        # The server answers a unary call before the client finished sending: status, then
        # RST_STREAM NO_ERROR.
        early = c.request(RANGE, rng(b"hc"), end=False)
        r = c.result(early)
        assert r.status == 0 and r.reset == 0


def test_keepalive_stream_and_health(m: Member) -> None:
    with client(m) as c:
        lease = _lease(c)
        sid = c.request("/etcdserverpb.Lease/LeaseKeepAlive",
                        frame(rpc_pb2.LeaseKeepAliveRequest(ID=lease).SerializeToString()),
                        frame(rpc_pb2.LeaseKeepAliveRequest(ID=lease).SerializeToString()))
        r = c.result(sid)
        assert r.status == 0 and [rpc_pb2.LeaseKeepAliveResponse.FromString(x).ID for x in r.messages()] == [lease] * 2
        ok = c.result(c.request("/grpc.health.v1.Health/Check", frame(b"")))
        assert health_pb2.HealthCheckResponse.FromString(ok.messages()[0]).status == health_pb2.HealthCheckResponse.SERVING
        unknown = c.result(c.request("/grpc.health.v1.Health/Check", frame(health_pb2.HealthCheckRequest(
            service="nope").SerializeToString())))
        assert (unknown.status, unknown.message) == (5, "unknown service")
        w = c.request("/grpc.health.v1.Health/Watch", frame(b""))
        c.pump(lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == w for e in evs))
        hasleader = c.result(c.request(RANGE, rng(b"x"), headers=grpc_headers(RANGE, ("hasleader", "true"))))
        assert hasleader.status == 0


def test_sigterm_sends_goaway_and_exits_promptly(make_member) -> None:
    member = make_member()
    with client(member) as c:
        sid = c.request("/etcdserverpb.Watch/Watch", frame(rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"t")).SerializeToString()), end=False)
        c.pump(lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == sid for e in evs))
        start = time.monotonic()
        member.proc.send_signal(signal.SIGTERM)
        events = c.pump(lambda evs: any(isinstance(e, h2.events.ConnectionTerminated) for e in evs))
        goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)][0]
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        member.proc.wait(timeout=15)
        assert time.monotonic() - start < 10


# -- helpers ---------------------------------------------------------------------------------


class _Msgs:
    def __init__(self, events: list) -> None:
        self.events = events


def Result_messages(c: H2Client, sid: int) -> list:
    from h2client import Result

    return [rpc_pb2.WatchResponse.FromString(x) for x in Result.of(sid, c.events).messages()]


def _lease(c: H2Client) -> int:
    r = c.result(c.request("/etcdserverpb.Lease/LeaseGrant", frame(rpc_pb2.LeaseGrantRequest(TTL=60).SerializeToString())))
    return rpc_pb2.LeaseGrantResponse.FromString(r.messages()[0]).ID


def _keys(c: H2Client, prefix: bytes) -> list[bytes]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    r = c.result(c.request(RANGE, rng(prefix, range_end=end, keys_only=True)))
    return [kv.key for kv in rpc_pb2.RangeResponse.FromString(r.messages()[0]).kvs]


def _wait_keys(c: H2Client, prefix: bytes, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(_keys(c, prefix)) != n:
        assert time.monotonic() < deadline, f"{prefix!r}: expected {n} keys, have {_keys(c, prefix)}"
        time.sleep(0.05)


def test_server_keepalive_pings_idle_clients_and_drops_dead_ones(make_member) -> None:
    member = make_member(extra=["--grpc-keepalive-interval", "300ms", "--grpc-keepalive-timeout", "700ms"])
    with client(member) as c:  # answers PINGs (h2 acknowledges them): stays connected
        c.result(c.request(RANGE, rng(b"a")))
        c.pump(lambda evs: sum(isinstance(e, h2.events.PingReceived) for e in evs) >= 3, timeout=10)
        assert not c.closed and c.result(c.request(RANGE, rng(b"a"))).status == 0
    with client(member) as dead:  # reads nothing once set up: no PING ACK ever goes back
        start = time.monotonic()
        dead.sock.settimeout(10)
        data = b""
        while True:  # the kernel still receives for us; the server gives up after interval + timeout
            chunk = dead.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        assert 0.8 < time.monotonic() - start < 5
        assert b"keepaliv" in data  # the server's PING
