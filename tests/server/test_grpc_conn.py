"""The sans-IO gRPC connection (server/grpcconn.py) driven by an in-memory h2 client: no
sockets, no clocks (``now`` is passed in), so every protocol rule is checked exactly."""

from __future__ import annotations

import gzip

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame

from securekv.server.grpcconn import (
    CallCancelled,
    CallHalfClosed,
    CallStarted,
    ConnectionEnded,
    GrpcConnection,
    GrpcSettings,
    MessageReceived,
    encode_grpc_message,
    frame_message,
    parse_timeout,
)

PATH = "/etcdserverpb.KV/Range"


def headers(path: str = PATH, *extra: tuple[str, str], content_type: str = "application/grpc") -> list:
    return [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "x"),
            ("content-type", content_type), ("te", "trailers"), *extra]


def parse_frames(data: bytes) -> list:
    out = []
    while len(data) >= 9:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        f.parse_body(memoryview(data[9:9 + length]))
        out.append(f)
        data = data[9 + length:]
    return out


class Pair:
    """A server GrpcConnection and an h2 client, wired back to back."""

    def __init__(self, settings: GrpcSettings | None = None, validate: bool = True) -> None:
        self.server = GrpcConnection(settings)
        self.server.initiate()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.client.initiate_connection()
        self.now = 0.0
        self.client_events: list = []
        self.exchange()

    def exchange(self) -> list:
        """Move bytes both ways until quiet; the server's events."""
        out = []
        for _ in range(10):
            data = self.client.data_to_send()
            if data:
                out.extend(self.server.receive_data(data, self.now))
            back = self.server.data_to_send()
            if back:
                self.client_events.extend(self.client.receive_data(back))
            if not data and not back:
                break
        return out

    def call(self, *messages: bytes, path: str = PATH, extra: tuple = (), end: bool = True) -> tuple[int, list]:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers(path, *extra), end_stream=end and not messages)
        for i, m in enumerate(messages):
            self.client.send_data(sid, m, end_stream=end and i == len(messages) - 1)
        return sid, self.exchange()

    def of(self, sid: int, kind: type) -> list:
        return [e for e in self.client_events if isinstance(e, kind) and getattr(e, "stream_id", None) == sid]

    def trailers(self, sid: int) -> dict:
        for e in self.client_events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.TrailersReceived):
                return dict(e.headers)
            if isinstance(e, h2.events.ResponseReceived) and e.stream_ended is not None:
                return dict(e.headers)  # trailers-only
        return {}

    def raw_headers(self, sid: int, end: bool = False) -> list:
        """Open a stream behind the h2 client's back (it would refuse to), and return the
        frames the server answers with, parsed raw."""
        flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        f = HeadersFrame(sid, data=self.client.encoder.encode(headers()), flags=flags)
        self.server.receive_data(f.serialize(), self.now)
        return parse_frames(self.server.data_to_send())

    def reset_code(self, sid: int) -> int | None:
        resets = self.of(sid, h2.events.StreamReset)
        return int(resets[0].error_code) if resets else None


def test_unary_round_trip_one_message_then_ok_trailers() -> None:
    p = Pair()
    sid, events = p.call(frame_message(b"req"), extra=(("token", "t1"), ("grpc-timeout", "1500m"),
                                                      ("x-custom-bin", "AAE=")))
    started = [e for e in events if isinstance(e, CallStarted)]
    assert started == [CallStarted(sid, PATH, (("token", "t1"),), 1.5)]
    assert [e for e in events if isinstance(e, MessageReceived)] == [MessageReceived(sid, b"req", True)]
    p.server.send_unary(sid, b"resp")
    p.exchange()
    assert p.of(sid, h2.events.ResponseReceived)[0].headers == [(":status", "200"), ("content-type", "application/grpc")]
    assert p.of(sid, h2.events.DataReceived)[0].data == frame_message(b"resp")
    assert p.trailers(sid) == {"grpc-status": "0"}
    assert p.reset_code(sid) is None  # the client had finished sending: no RST_STREAM
    assert p.server.idle


def test_status_before_the_client_finished_is_followed_by_rst_no_error() -> None:
    p = Pair()
    sid, events = p.call(frame_message(b"a"), end=False)
    p.server.send_status(sid, 5, "nope")
    p.exchange()
    assert p.trailers(sid)["grpc-status"] == "5"
    assert p.reset_code(sid) == 0  # grpc-go: RST_STREAM NO_ERROR after an early status


def test_trailers_only_error_and_percent_encoded_message() -> None:
    p = Pair()
    sid, _ = p.call(frame_message(b""))
    p.server.send_status(sid, 12, "unknown service é 100%")
    p.exchange()
    t = p.trailers(sid)
    assert p.of(sid, h2.events.DataReceived) == []
    assert t[":status"] == "200" and t["grpc-status"] == "12"
    assert t["grpc-message"] == "unknown service %C3%A9 100%25"
    assert encode_grpc_message("plain text") == b"plain text"


def test_messages_split_and_joined_across_frames() -> None:
    p = Pair()
    whole = frame_message(b"one") + frame_message(b"two") + frame_message(b"x" * 40000)
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, headers())
    events = p.exchange()
    for i in range(0, len(whole), 7001):  # odd boundaries, messages cut mid-prefix
        p.client.send_data(sid, whole[i:i + 7001])
        events += p.exchange()
    p.client.end_stream(sid)
    events += p.exchange()
    got = [e.payload for e in events if isinstance(e, MessageReceived)]
    assert got == [b"one", b"two", b"x" * 40000]
    assert [e for e in events if isinstance(e, CallHalfClosed)] == [CallHalfClosed(sid)]


@pytest.mark.parametrize("bad", [
    (("content-type", "application/json"),),
    (("grpc-timeout", "1x"),),
    (("grpc-timeout", "123456789S"),),
    (("X-Upper", "v"),),
    (("connection", "close"),),
])
def test_malformed_grpc_headers_get_rst_protocol_error(bad: tuple) -> None:
    p = Pair(validate=False)
    sid = p.client.get_next_available_stream_id()
    base = [h for h in headers() if h[0] != bad[0][0]]
    p.client.send_headers(sid, base + list(bad), end_stream=True)
    events = p.exchange()
    assert not [e for e in events if isinstance(e, CallStarted)]
    assert p.reset_code(sid) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    sid2, events = p.call(frame_message(b"ok"))  # the connection is still fine
    assert [e for e in events if isinstance(e, CallStarted)]


def test_repeated_header_blocks_read_alike_and_changing_deadlines_each_their_own() -> None:
    """A request's headers are read once per distinct block (remembered per connection): the
    same block gives the same call, a bad block is refused every time, and a client whose
    grpc-timeout changes every call gets each call's own deadline."""
    p = Pair(validate=False)
    for _ in range(3):
        sid, events = p.call(frame_message(b"x"), extra=(("token", "t1"),))
        assert [e for e in events if isinstance(e, CallStarted)] == [CallStarted(sid, PATH, (("token", "t1"),), None)]
        bad = p.client.get_next_available_stream_id()
        p.client.send_headers(bad, headers(PATH, ("X-Upper", "v")), end_stream=True)
        p.exchange()
        assert p.reset_code(bad) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    for i in range(100):  # beyond what is worth remembering
        sid, events = p.call(frame_message(b"x"), extra=(("grpc-timeout", f"{5000 - i}m"),))
        assert [e.timeout for e in events if isinstance(e, CallStarted)] == [pytest.approx((5000 - i) / 1000)]
    sid, events = p.call(frame_message(b"x"), extra=(("token", "t2"),))
    assert [e for e in events if isinstance(e, CallStarted)] == [CallStarted(sid, PATH, (("token", "t2"),), None)]


def test_timeout_units() -> None:
    assert parse_timeout(b"2H") == 7200 and parse_timeout(b"3M") == 180 and parse_timeout(b"4S") == 4
    assert parse_timeout(b"5m") == pytest.approx(0.005) and parse_timeout(b"6u") == pytest.approx(6e-6)
    assert parse_timeout(b"99999999n") == pytest.approx(0.099999999)
    for bad in (b"S", b"1", b"-1S", b"1.5S", b"123456789m"):
        with pytest.raises(ValueError):
            parse_timeout(bad)


def test_oversized_message_resource_exhausted_before_it_arrives() -> None:
    p = Pair(GrpcSettings(max_receive_message=1000))
    sid = p.client.get_next_available_stream_id()
    p.client.send_headers(sid, headers())
    p.client.send_data(sid, b"\x00" + (5000).to_bytes(4, "big") + b"x" * 100)  # only the start of it
    events = p.exchange()
    assert [e for e in events if isinstance(e, CallCancelled)]
    t = p.trailers(sid)
    assert t["grpc-status"] == "8" and t["grpc-message"] == "grpc: received message larger than max (5000 vs. 1000)"
    assert p.reset_code(sid) == 0


def test_gzip_accepted_unknown_encoding_unimplemented() -> None:
    p = Pair()
    sid, events = p.call(frame_message(gzip.compress(b"zipped"))[:0] + b"\x01" +
                         len(gzip.compress(b"zipped")).to_bytes(4, "big") + gzip.compress(b"zipped"),
                         extra=(("grpc-encoding", "gzip"),))
    assert [e.payload for e in events if isinstance(e, MessageReceived)] == [b"zipped"]
    sid, events = p.call(frame_message(b"x"), extra=(("grpc-encoding", "snappy"),))
    assert not [e for e in events if isinstance(e, CallStarted)]
    t = p.trailers(sid)
    assert t["grpc-status"] == "12" and t["grpc-message"] == 'grpc: Decompressor is not installed for grpc-encoding "snappy"'
    sid, events = p.call(b"\x01" + (3).to_bytes(4, "big") + b"abc")  # compressed flag, no encoding
    assert p.trailers(sid)["grpc-status"] == "13"
    bomb = gzip.compress(b"\0" * 5000)
    p2 = Pair(GrpcSettings(max_receive_message=1000))
    sid, events = p2.call(b"\x01" + len(bomb).to_bytes(4, "big") + bomb, extra=(("grpc-encoding", "gzip"),))
    assert p2.trailers(sid)["grpc-status"] == "8"  # never inflated past the limit


def test_truncated_message_at_end_of_stream_is_unexpected_eof() -> None:
    p = Pair()
    sid, events = p.call(b"\x00\x00\x00\x00\x10abc")
    assert [e for e in events if isinstance(e, CallCancelled)]
    assert p.trailers(sid) == {":status": "200", "content-type": "application/grpc", "grpc-status": "13",
                               "grpc-message": "unexpected EOF"}


def test_client_reset_cancels_the_call() -> None:
    p = Pair()
    sid, _ = p.call(frame_message(b"a"), end=False)
    p.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    events = p.exchange()
    assert [e for e in events if isinstance(e, CallCancelled)] == [CallCancelled(sid, "client reset the stream")]
    p.server.send_unary(sid, b"late")  # a late answer is dropped silently
    p.exchange()
    assert p.of(sid, h2.events.DataReceived) == []


def test_data_after_end_stream_is_stream_closed_and_connection_lives() -> None:
    p = Pair()
    sid, _ = p.call(frame_message(b"a"))
    f = DataFrame(sid, data=frame_message(b"again"))
    events = p.server.receive_data(f.serialize(), 0.0)
    p.client_events.extend(p.client.receive_data(p.server.data_to_send()))
    assert p.reset_code(sid) == h2.errors.ErrorCodes.STREAM_CLOSED
    assert not [e for e in events if isinstance(e, ConnectionEnded)]
    sid2, events = p.call(frame_message(b"b"))
    assert [e for e in events if isinstance(e, MessageReceived)]


def test_refused_above_max_concurrent_streams() -> None:
    p = Pair(GrpcSettings(max_concurrent_streams=2))
    first = [p.call(frame_message(b"x"), end=False)[0] for _ in range(2)]
    frames = p.raw_headers(first[-1] + 2)  # a client ignoring the advertised limit
    assert [(type(f), f.error_code) for f in frames] == [(RstStreamFrame, h2.errors.ErrorCodes.REFUSED_STREAM)]
    assert not p.server.closed  # grpc-go refuses the stream, not the connection


def test_advertised_settings() -> None:
    p = Pair(GrpcSettings(max_concurrent_streams=7, max_receive_message=100_000))
    remote = p.client.remote_settings
    assert remote.max_concurrent_streams == 7
    assert remote.initial_window_size >= 100_005
    assert p.client.outbound_flow_control_window > 65535  # the connection window was opened


def test_finished_calls_return_the_connection_window_many_calls_at_once() -> None:
    """Unary calls' bytes are acknowledged to h2 in batches (connection window only: their
    streams are finished); a client sending far more than the connection window in one call
    after another is never left without window."""
    p = Pair(GrpcSettings(connection_window=65535))
    message = frame_message(b"v" * 995)
    for _ in range(400):  # 400,000 bytes through a 65,535-byte connection window
        assert p.client.outbound_flow_control_window >= len(message)
        sid, events = p.call(message)
        assert MessageReceived(sid, b"v" * 995, True) in events
        p.server.ignore_input(sid)
        p.server.send_unary(sid, b"ok")
        p.exchange()
    assert p.server.idle
    # What is still owed is a small part of the window, never enough to stall the client.
    assert p.client.outbound_flow_control_window > 65535 // 2


def test_ping_policy_strikes_and_goaway_too_many_pings() -> None:
    p = Pair(GrpcSettings(ping_min_interval=5.0))
    sid, _ = p.call(frame_message(b"w"), end=False)  # an open call: min interval applies
    for i in range(10):  # every 6 s: within policy
        p.now += 6
        p.client.ping(b"%08d" % i)
        assert not [e for e in p.exchange() if isinstance(e, ConnectionEnded)]
    assert len([e for e in p.client_events if isinstance(e, h2.events.PingAckReceived)]) == 10
    events = []
    for i in range(3):  # 1 s apart: strikes 1, 2, 3 -> GOAWAY on the third
        p.now += 1
        p.client.ping(b"flood%03d" % i)
        events += p.exchange()
    ended = [e for e in events if isinstance(e, ConnectionEnded)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    goaway = [e for e in p.client_events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert goaway[0].additional_data == b"too_many_pings"
    assert [e for e in events if isinstance(e, CallCancelled)] == [CallCancelled(sid, "too many pings")]


def test_pings_without_calls_and_data_resets_strikes() -> None:
    p = Pair(GrpcSettings(ping_min_interval=5.0))
    for i in range(3):  # no calls open: any ping within 2 h of the last is a strike (grpc-go)
        p.now += 60
        p.client.ping(b"idle%04d" % i)
        p.exchange()
    assert not p.server.closed  # two strikes so far
    sid, _ = p.call(frame_message(b"w"), end=False)
    p.server.send_headers(sid)  # sending headers resets the strikes (grpc-go)
    p.exchange()
    for i in range(2):
        p.now += 1
        p.client.ping(b"busy%04d" % i)
        p.exchange()
    assert not p.server.closed


def test_graceful_drain_two_goaways_running_calls_finish() -> None:
    p = Pair()
    running, _ = p.call(frame_message(b"a"), end=False)
    p.server.drain()
    first = parse_frames(p.server.data_to_send())
    assert isinstance(first[0], GoAwayFrame) and first[0].last_stream_id == 2**31 - 1 and first[0].error_code == 0
    ping = first[1]
    assert isinstance(ping, PingFrame)
    ack = PingFrame(0, opaque_data=ping.opaque_data, flags=["ACK"])
    p.server.receive_data(ack.serialize(), 0.0)
    second = parse_frames(p.server.data_to_send())
    assert isinstance(second[0], GoAwayFrame) and second[0].last_stream_id == running
    # Streams opened after the second GOAWAY are refused; the running call is still answered.
    frames = p.raw_headers(running + 2, end=True)
    assert [(type(f), f.error_code) for f in frames] == [(RstStreamFrame, h2.errors.ErrorCodes.REFUSED_STREAM)]
    p.server.send_unary(running, b"done")
    answer = parse_frames(p.server.data_to_send())
    assert [type(f) for f in answer] == [HeadersFrame, DataFrame, HeadersFrame, RstStreamFrame]
    assert not p.server.closed


def test_pump_yields_to_other_tasks_while_it_handles_one_read_of_a_flood() -> None:
    """Issue 12: one 64 KiB read can hold ~2,300 tiny HEADERS+RST_STREAM pairs ("rapid reset");
    handled in one go (~0.1 s of h2 parsing, ~300 us of call setup each) it stalled Raft and
    every other client. The pump hands h2 the read in slices and yields every few dozen
    events: a task that counts its turns runs many times while the one read is handled."""
    import hpack
    import trio
    import trio.testing

    from securekv.api.identity import Identity
    from securekv.server import grpcpump
    from securekv.server.grpcpump import GrpcPump

    enc = hpack.Encoder()
    headers = [(":method", "POST"), (":scheme", "https"), (":path", "/etcdserverpb.KV/Range"),
               (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]
    flood = bytearray()
    for i in range(2000):
        block = enc.encode(headers)
        sid = 2 * i + 1
        flood += len(block).to_bytes(3, "big") + b"\x01\x04" + sid.to_bytes(4, "big") + block  # END_HEADERS
        flood += b"\x00\x00\x04\x03\x00" + sid.to_bytes(4, "big") + b"\x00\x00\x00\x08"  # RST_STREAM CANCEL
    assert len(flood) <= grpcpump.RECEIVE_SIZE  # one read
    turns = 0
    seen: list[int] = []

    class Recorder:
        """Only notes, at each call start, how often the other task has run so far."""

        def started(self, call) -> None:  # type: ignore[no-untyped-def]
            seen.append(turns)

        def message(self, call, payload: bytes) -> None:  # type: ignore[no-untyped-def]
            pass

        def half_closed(self, call) -> None:  # type: ignore[no-untyped-def]
            pass

    async def main() -> None:
        nonlocal turns
        client, server = trio.testing.memory_stream_pair()
        pump = GrpcPump(server, Identity(common_name="root", remote="127.0.0.1:1"), Recorder(), preface_timeout=10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run)
            await client.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            while not pump.conn.client_ready:
                await trio.sleep(0)
            await client.send_all(bytes(flood))

            async def ticker() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await trio.sleep(0)

            nursery.start_soon(ticker)
            with trio.fail_after(30):
                while len(seen) < 2000:
                    await trio.sleep(0)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(seen) == 2000
    # Without the slicing every call would start in one uninterrupted turn (one value).
    assert len(set(seen)) >= 2000 // grpcpump.EVENTS_PER_TURN // 2, sorted(set(seen))[:10]
