"""server/h2conn.py reaches into h2 internals to save work on the hot path: these tests fail
loudly when an h2 release changes what it relies on. Each runs our connection beside h2's own
``H2Connection`` on the same input and wants the same bytes, events, errors and state."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from securekv.server.h2conn import (FAST_ANSWER, H2_VETTED, VETTED_RECEIVE_FRAME, ServerH2Connection,
                                    receive_frame_digest)

needs_fast_answer = pytest.mark.skipif(
    not FAST_ANSWER, reason=f"h2 {h2.__version__} is not vetted: the server uses h2's public calls")
REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/etcdserverpb.KV/Put"),
           (b":authority", b"127.0.0.1:2379"), (b"content-type", b"application/grpc"),
           (b"user-agent", b"grpc-go/1.33.3"), (b"te", b"trailers")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK = [(b"grpc-status", b"0")]


def test_fast_paths_only_with_the_h2_they_were_written_against() -> None:
    """A vetted h2 gets both fast paths; any other h2 gets h2's own connection (slower, right)."""
    digest = receive_frame_digest(h2.connection.H2Connection._receive_frame)
    assert H2_VETTED == (digest in VETTED_RECEIVE_FRAME)
    if H2_VETTED:
        assert ServerH2Connection._receive_frame is ServerH2Connection._receive_frame_untraced
        assert FAST_ANSWER, f"h2 {h2.__version__} renamed a state machine input server/h2conn.py uses"
    else:
        assert ServerH2Connection._receive_frame is h2.connection.H2Connection._receive_frame
        assert not FAST_ANSWER
        pytest.skip(f"h2 {h2.__version__} is not vetted (_receive_frame sha256 {digest}): the server "
                    "runs h2's own code paths. Compare its _receive_frame with "
                    "ServerH2Connection._receive_frame_untraced, carry changes over, then add the "
                    "digest to VETTED_RECEIVE_FRAME in securekv/server/h2conn.py")


def test_an_unknown_receive_frame_is_not_vetted() -> None:
    def _receive_frame(self, frame):  # a different source: what a new h2 release would bring
        return self._frame_dispatch_table[frame.__class__](frame)

    assert receive_frame_digest(_receive_frame) not in VETTED_RECEIVE_FRAME
    assert receive_frame_digest(len) is None  # no Python source: not vetted either


def _config() -> h2.config.H2Configuration:
    # The configuration GrpcConnection uses.
    return h2.config.H2Configuration(
        client_side=False, header_encoding=None, validate_inbound_headers=False,
        normalize_inbound_headers=False, validate_outbound_headers=False,
        normalize_outbound_headers=False)


class Twins:
    """Our connection and h2's, fed the same client bytes."""

    def __init__(self, client_window: int | None = None) -> None:
        self.ours = ServerH2Connection(_config())
        self.ref = h2.connection.H2Connection(_config())
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_window is not None:
            self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: client_window})
        for conn in (self.ours, self.ref):
            conn.initiate_connection()
        self.client.receive_data(self.ours.data_to_send())
        self.ref.data_to_send()
        self.feed(self.client.data_to_send())
        self.client.receive_data(self.ours.data_to_send())
        self.ref.data_to_send()
        self.feed(self.client.data_to_send())

    def feed(self, data: bytes) -> list:
        """Both connections receive ``data``: same events (or the same error), same output."""
        results = []
        for conn in (self.ours, self.ref):
            try:
                events = conn.receive_data(data)
                results.append(("events", [repr(e) for e in events]))
            except h2.exceptions.ProtocolError as exc:
                results.append(("error", type(exc).__name__, str(exc)))
            results[-1] += (conn.data_to_send(),)
        assert results[0] == results[1]
        return results[0]

    def request(self, end: bool = True, headers: list = REQUEST) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers)
        self.client.send_data(sid, b"\x00\x00\x00\x00\x03abc", end_stream=end)
        assert self.feed(self.client.data_to_send())[0] == "events"
        return sid

    def answer(self, sid: int, data: bytes, headers: list = RESPONSE, trailers: list = OK) -> bytes:
        """Ours by ``answer_unary``, h2's by its public calls: the same bytes."""
        fast = self.ours.answer_unary(sid, headers, data, trailers)
        assert fast is not None
        self.ref.send_headers(sid, headers)
        self.ref.send_data(sid, data)
        self.ref.send_headers(sid, trailers, end_stream=True)
        assert fast == self.ref.data_to_send()
        self.assert_same_state(sid)
        self.client.receive_data(fast)
        return fast

    def assert_same_state(self, sid: int) -> None:
        ours, ref = self.ours, self.ref
        assert ours.state_machine.state == ref.state_machine.state
        assert ours.outbound_flow_control_window == ref.outbound_flow_control_window
        assert ours.open_inbound_streams == ref.open_inbound_streams
        assert ours.open_outbound_streams == ref.open_outbound_streams
        assert (sid in ours.streams) == (sid in ref.streams)
        if sid in ref.streams:
            a, b = ours.streams[sid], ref.streams[sid]
            assert vars(a.state_machine) == vars(b.state_machine)
            assert a.outbound_flow_control_window == b.outbound_flow_control_window
        assert list(ours.encoder.header_table.dynamic_entries) == list(ref.encoder.header_table.dynamic_entries)
        assert ours._closed_streams == ref._closed_streams


@needs_fast_answer
def test_answer_unary_is_what_h2s_public_calls_send() -> None:
    t = Twins()
    for size in (5, 37, 300, 16384):
        sid = t.request()
        t.answer(sid, b"\x00" + (size - 5).to_bytes(4, "big") + b"x" * (size - 5))
    # Headers that change the HPACK table (new literals, then evictions) and an error status.
    for i in range(60):
        sid = t.request()
        t.answer(sid, b"\x00\x00\x00\x00\x01z", headers=[*RESPONSE, (b"x-n", b"v" * (40 + i))],
                 trailers=[(b"grpc-status", b"5"), (b"grpc-message", b"key %d not found" % i)])
    # After the answers, frames on the closed streams get the same treatment from both.
    t.feed(DataFrame(sid, data=b"late", flags=["END_STREAM"]).serialize())
    t.feed(WindowUpdateFrame(sid, window_increment=10).serialize())
    t.feed(RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize())
    sid = t.request()
    t.answer(sid, b"\x00\x00\x00\x00\x00")


def test_answer_unary_declines_and_changes_nothing_where_it_does_not_apply() -> None:
    t = Twins(client_window=100)
    before = t.ours.outbound_flow_control_window
    open_sid = t.request(end=False)  # the client is still sending: RST_STREAM follows a status
    assert t.ours.answer_unary(open_sid, RESPONSE, b"\x00\x00\x00\x00\x00", OK) is None
    sid = t.request()
    assert t.ours.answer_unary(sid, RESPONSE, b"x" * 101, OK) is None  # beyond the stream window
    assert t.ours.answer_unary(sid, RESPONSE, b"", OK) is None
    assert t.ours.answer_unary(99, RESPONSE, b"x", OK) is None  # no such stream
    assert t.ours.answer_unary(sid, [(b"x-big", b"v" * 5000), *RESPONSE], b"x", OK) is None  # CONTINUATION
    assert t.ours.data_to_send() == b"" and t.ours.outbound_flow_control_window == before
    t.ours.send_headers(sid, RESPONSE)
    t.ref.send_headers(sid, RESPONSE)
    assert t.ours.data_to_send() == t.ref.data_to_send()
    assert t.ours.answer_unary(sid, RESPONSE, b"x", OK) is None  # headers went already
    t.assert_same_state(sid)
    t.assert_same_state(open_sid)


@needs_fast_answer
def test_answer_unary_after_goaway_raises_as_h2_does() -> None:
    t = Twins()
    sid = t.request()
    t.ours.close_connection()
    t.ref.close_connection()
    with pytest.raises(h2.exceptions.ProtocolError):
        t.ours.answer_unary(sid, RESPONSE, b"x", OK)
    with pytest.raises(h2.exceptions.ProtocolError):
        t.ref.send_headers(sid, RESPONSE)
    t.assert_same_state(sid)


@needs_fast_answer
def test_receive_errors_are_h2s() -> None:
    """The override's error branches: frames on a stream closed by reset (a stream error), on a
    stream closed by END_STREAM (a connection error), on a stream id below the highest seen."""
    t = Twins()
    sid = t.request(end=False)
    t.ours.reset_stream(sid)
    t.ref.reset_stream(sid)
    assert t.ours.data_to_send() == t.ref.data_to_send()
    rst = RstStreamFrame(sid, error_code=ErrorCodes.STREAM_CLOSED).serialize()
    assert t.feed(DataFrame(sid, data=b"more").serialize()) == ("events", [], rst)
    for _ in range(3):
        t.request()
    assert t.feed(DataFrame(sid, data=b"more").serialize()) == ("events", [], rst)  # forgotten by now
    headers = HeadersFrame(sid, data=t.client.encoder.encode(REQUEST), flags=["END_HEADERS"]).serialize()
    assert t.feed(headers) == ("events", [], rst)  # a stream id too low, closed by reset
    done = t.request()
    t.answer(done, b"\x00\x00\x00\x00\x00")
    t.request()
    headers = HeadersFrame(done, data=t.client.encoder.encode(REQUEST), flags=["END_HEADERS"]).serialize()
    outcome = t.feed(headers)  # too low, closed by END_STREAM: a connection error
    assert outcome[:2] == ("error", "StreamClosedError") and outcome[-1][3] == 0x7  # GOAWAY
