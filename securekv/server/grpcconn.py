"""The server side of gRPC over one HTTP/2 connection, sans-IO (bytes in -> call events out).

Why our own: grpcio's Python server tops out well below etcd on this kind of machine even as a
no-op, and needs threads and an internal port. This object owns one ``h2`` connection and
adds gRPC's framing and rules on top, the way grpc-go's ``http2Server`` does (the transport
etcd's Go clients are written against):

- ``receive_data(bytes, now)`` returns :class:`CallStarted`, :class:`MessageReceived`,
  :class:`CallHalfClosed`, :class:`CallCancelled` and :class:`ConnectionEnded` events;
- ``send_unary``/``send_headers``/``send_message``/``send_status``/``reset``/``drain``/
  ``goaway`` queue frames; ``data_to_send()`` hands them out for one socket write.

Protocol answers made here, as grpc-go 1.33 (etcd 3.4's) makes them: a request whose headers
are not gRPC (content type, malformed ``grpc-timeout``, bad header names) gets RST_STREAM
PROTOCOL_ERROR; streams above ``max_concurrent_streams`` get RST_STREAM REFUSED_STREAM; a
message longer than the receive limit gets RESOURCE_EXHAUSTED ``grpc: received message larger
than max (N vs. M)``; an unknown ``grpc-encoding`` gets UNIMPLEMENTED (gzip is accepted);
too frequent PINGs get GOAWAY ENHANCE_YOUR_CALM ``too_many_pings`` (keepalive enforcement:
at most ``max_ping_strikes`` pings closer than ``ping_min_interval``, and none without an open
call unless permitted; sending headers or data resets the strikes); after a status is sent to
a client that has not finished sending, RST_STREAM NO_ERROR follows. Frame-level protocol
errors are ``h2``'s: GOAWAY with its code, then the connection ends.

Flow control: a stream's window is a little above the receive limit, so one whole message can
always arrive; received bytes are acknowledged when the message they belong to is complete and
not held back: a streaming call whose consumer falls behind is ``pause``d (its bytes stay
unacknowledged, so its client stops sending) and ``resume``d later; the bytes of a stream its
client has finished only count against the connection window, and are handed back to h2 in
batches. The connection window bounds the unconsumed input buffered per connection. Outbound
data waits in per-stream queues while the client's windows are closed.

The ``h2`` connection is :class:`~securekv.server.h2conn.ServerH2Connection` (h2's, minus
per-frame work done for nothing, plus a one-step unary answer).

Nothing here reads a clock or touches a socket: ``now`` is passed in (keepalive policy) and
deadlines leave as seconds (:attr:`CallStarted.timeout`).
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Iterable

import attrs
import h2.config
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from securekv.server.h2conn import ServerH2Connection
from securekv.server.hpackcache import CachingDecoder, CachingEncoder

# gRPC status codes (numbers on the wire).
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 2, 3, 4
RESOURCE_EXHAUSTED, INTERNAL, UNIMPLEMENTED, UNAVAILABLE = 8, 13, 12, 14

MAX_STREAM_ID = 2**31 - 1
DRAIN_PING = b"securekv"  # opaque data of the PING that follows the first (heads-up) GOAWAY
KEEPALIVE_PING = b"keepaliv"  # opaque data of the server's own keepalive PINGs
TOO_MANY_PINGS = b"too_many_pings"
KEEPALIVE_IDLE = 2 * 3600.0  # grpc-go's defaultPingTimeout: the ping period without calls

_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_OK_TRAILERS = [(b"grpc-status", b"0")]
# Connection-specific headers HTTP/2 forbids (RFC 9113 8.2.2); Go's framer rejects them too.
_FORBIDDEN = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
# Headers that are the transport's, not metadata (grpc-go's isReservedHeader).
_RESERVED = frozenset({b"content-type", b"user-agent", b"grpc-message-type", b"grpc-encoding",
                       b"grpc-message", b"grpc-status", b"grpc-timeout", b"grpc-status-details-bin",
                       b"te", b"grpc-accept-encoding"})
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_SUPPORTED_ENCODINGS = (b"identity", b"gzip")
MAX_REMEMBERED_REQUESTS = 16  # distinct request header blocks read once per connection
MAX_REMEMBERED_SIZE = 4096  # bytes of fields: what HPACK's default table can index
# A request's reading: (path, metadata, timeout, grpc-encoding); path None = not gRPC.
_Request = tuple[str | None, tuple[tuple[str, str], ...], float | None, bytes]


@attrs.frozen
class GrpcSettings:
    """Per-connection limits (see docs/server.md for the chosen values and why)."""

    max_concurrent_streams: int = 1000
    max_receive_message: int = 1572864 + 512 * 1024  # --max-request-bytes + grpc-go's overhead
    connection_window: int = 8 << 20
    max_header_list: int = 64 << 10
    ping_min_interval: float = 5.0  # etcd's --grpc-keepalive-min-time
    permit_pings_without_calls: bool = False  # etcd: PermitWithoutStream false
    max_ping_strikes: int = 2  # grpc-go's maxPingStrikes
    pending_high: int = 256 << 10  # a streaming sender waits while more than this is queued

    @property
    def stream_window(self) -> int:
        """One whole largest message (plus its prefix) fits in a stream's window."""
        return self.max_receive_message + 5 + 16384


# -- events ---------------------------------------------------------------------------------


@attrs.frozen
class CallStarted:
    stream_id: int
    path: str
    metadata: tuple[tuple[str, str], ...]  # lower-case keys, without transport headers
    timeout: float | None  # seconds from grpc-timeout, None = no deadline


@attrs.frozen
class MessageReceived:
    stream_id: int
    payload: bytes  # one whole message, decompressed
    end_stream: bool  # the client half-closed right after it


@attrs.frozen
class CallHalfClosed:
    """The client finished sending (END_STREAM) with no message in the same frame."""

    stream_id: int


@attrs.frozen
class CallCancelled:
    """The call is over from the transport's side: RST_STREAM from the client, or a protocol
    error this object already answered. Stop its handler; send nothing more on it."""

    stream_id: int
    reason: str


@attrs.frozen
class ConnectionEnded:
    """No more calls on this connection (GOAWAY either way, or a connection error)."""

    reason: str
    error_code: int = 0


Event = CallStarted | MessageReceived | CallHalfClosed | CallCancelled | ConnectionEnded


class _Stream:
    """Per-call transport state."""

    __slots__ = ("inbuf", "held", "paused", "remote_done", "headers_sent", "done", "gzip",
                 "out", "out_bytes", "trailers", "discard")

    def __init__(self, gzip: bool) -> None:
        self.inbuf = bytearray()  # received bytes of messages not yet complete
        self.held = 0  # flow-controlled bytes received and not yet acknowledged
        self.paused = False
        self.remote_done = False  # END_STREAM received
        self.headers_sent = False
        self.done = False  # status sent (or the call was cancelled)
        self.gzip = gzip
        self.out: deque[bytes] = deque()  # DATA payload waiting for window
        self.out_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after ``out`` drains
        self.discard = False  # unary call whose one message was taken: ignore further data


def encode_grpc_message(message: str) -> bytes:
    """grpc-go's encodeGrpcMessage: printable ASCII except ``%`` as is, the rest percent-encoded
    UTF-8."""
    raw = message.encode("utf-8", "surrogateescape")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` (at most 8 digits, then H M S m u n) in seconds; ValueError if bad."""
    if len(value) < 2:
        raise ValueError(f"timeout string is too short: {value!r}")
    if len(value) > 9:
        raise ValueError(f"timeout string is too long: {value!r}")
    unit = _TIMEOUT_UNITS.get(value[-1:])
    if unit is None:
        raise ValueError(f"timeout unit is not recognized: {value!r}")
    digits = value[:-1]
    if not digits.isdigit():
        raise ValueError(f"invalid timeout value: {value!r}")
    return int(digits) * unit


def _read_request_headers(headers: Iterable[tuple[bytes, bytes]]) -> _Request:
    """(path, metadata, timeout, grpc-encoding) of a request's headers; path None when they
    are not a well-formed gRPC request (grpc-go answers RST_STREAM PROTOCOL_ERROR)."""
    path = b""
    content_type = b""
    timeout: float | None = None
    encoding = b""
    metadata: list[tuple[str, str]] = []
    bad = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            continue
        if name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            try:
                timeout = parse_timeout(value)
            except ValueError:
                bad = True
        elif name == b"grpc-encoding":
            encoding = value
        elif name in _RESERVED:
            continue
        elif name != name.lower() or name in _FORBIDDEN or (name == b"te" and value != b"trailers"):
            bad = True
        else:
            if name.endswith(b"-bin"):
                continue  # binary metadata: nothing here uses it
            metadata.append((name.decode("latin-1"), value.decode("latin-1")))
    if bad or not path or not (content_type == b"application/grpc"
                               or content_type.startswith((b"application/grpc+", b"application/grpc;"))):
        return None, (), None, b""
    return path.decode("utf-8", "surrogateescape"), tuple(metadata), timeout, encoding


def frame_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class GrpcConnection:
    """One HTTP/2 connection speaking gRPC, server side. Not thread-safe (one trio thread)."""

    def __init__(self, settings: GrpcSettings | None = None) -> None:
        self.settings = s = settings or GrpcSettings()
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None,
            # Header checks cost a third of h2's time; the ones gRPC needs are done below.
            validate_inbound_headers=False, normalize_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        )
        self._h2 = ServerH2Connection(config)
        # Repeated header blocks (every call of a method, every OK answer) are coded once.
        decoder = CachingDecoder()
        decoder.max_header_list_size = self._h2.decoder.max_header_list_size
        self._h2.decoder, self._h2.encoder = decoder, CachingEncoder()
        self._streams: dict[int, _Stream] = {}
        self._requests: dict[tuple[tuple[bytes, bytes], ...], _Request] | None = {}
        self._request_misses = 0
        # Consumed bytes of finished streams not yet acknowledged to h2 (connection window
        # only); kept well below the half window at which h2 sends a WINDOW_UPDATE.
        self._owed = 0
        self._owe_limit = min(64 << 10, s.connection_window // 16, s.stream_window // 4)
        self._out = bytearray()
        self.pending_total = 0  # DATA bytes of all calls waiting for the client's windows
        self._ping_strikes = 0
        self._last_ping: float | None = None
        self._reset_strikes = False
        self._draining = False
        self._last_accepted = MAX_STREAM_ID  # streams above this are refused (after GOAWAY)
        self._drain_started = False
        self.client_ready = False  # the client's preface and SETTINGS arrived
        self.closed = False  # no more reading: GOAWAY sent with an error, or received

    # -- setup ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """The server preface: our SETTINGS and a larger connection window."""
        s = self.settings
        values = {
            SettingCodes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: min(s.stream_window, 2**31 - 1),
            SettingCodes.MAX_HEADER_LIST_SIZE: s.max_header_list,
        }
        conn = self._h2
        conn.local_settings = Settings(client=False, initial_values=values)
        conn.initiate_connection()
        # Advertise the stream cap, but keep h2 from enforcing it itself: h2 would end the whole
        # connection, grpc-go refuses just the extra stream (REFUSED_STREAM), as done below.
        values[SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        conn.local_settings = Settings(client=False, initial_values=values)
        if s.connection_window > 65535:
            conn.increment_flow_control_window(s.connection_window - 65535)
        self._flush_h2()

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self.closed:
            return []
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued a GOAWAY with the error's code: send it, then end the connection.
            self.closed = True
            self._flush_h2()
            code = int(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR) or ErrorCodes.PROTOCOL_ERROR)
            return self._end_all(f"HTTP/2 protocol error: {exc}", code)
        out: list[Event] = []
        for ev in h2_events:
            t = type(ev)
            if t is h2.events.DataReceived:
                self._on_data(ev, out)
            elif t is h2.events.RequestReceived:
                self._on_request(ev, out)
            elif t is h2.events.StreamEnded:
                self._on_end(ev.stream_id, out)
            elif t is h2.events.StreamReset:
                self._on_reset(ev, out)
            elif t is h2.events.WindowUpdated:
                self._pump_out(ev.stream_id)
            elif t is h2.events.RemoteSettingsChanged:
                self.client_ready = True
                self._pump_out(0)
            elif t is h2.events.PingReceived:
                self._on_ping(now, out)
            elif t is h2.events.PingAckReceived:
                if ev.ping_data == DRAIN_PING and self._draining:
                    self._second_goaway()
            elif t is h2.events.TrailersReceived:
                if ev.stream_ended is None:  # trailers must end the stream; h2 checks the rest
                    self._fail_stream(ev.stream_id, ErrorCodes.PROTOCOL_ERROR, out)
            elif t is h2.events.ConnectionTerminated:
                self.closed = True
                out.extend(self._end_all(f"client sent GOAWAY ({ev.error_code!r})", 0))
        self._flush_h2()
        return out

    def _on_request(self, ev: h2.events.RequestReceived, out: list[Event]) -> None:
        sid = ev.stream_id
        if sid > self._last_accepted or len(self._streams) >= self.settings.max_concurrent_streams:
            self._h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        # A client sends the same header block for every call of a method: its reading is
        # remembered (a few small blocks per connection), keyed by the decoded fields. A client
        # whose blocks keep changing (grpc-timeout: the time left, new every call) soon turns
        # this off for its connection.
        memo = self._requests
        if memo is None:
            request = _read_request_headers(ev.headers)
        else:
            key = tuple(ev.headers)
            request = memo.get(key)
            if request is None:
                request = _read_request_headers(key)
                self._request_misses += 1
                if self._request_misses > 2 * MAX_REMEMBERED_REQUESTS:
                    self._requests = None
                elif sum(len(name) + len(value) for name, value in key) <= MAX_REMEMBERED_SIZE:
                    if len(memo) >= MAX_REMEMBERED_REQUESTS:
                        memo.clear()
                    memo[key] = request
        path, metadata, timeout, encoding = request
        if path is None:
            # grpc-go: not a gRPC request (or malformed gRPC headers) -> RST_STREAM PROTOCOL_ERROR.
            self._h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = _Stream(gzip=encoding == b"gzip")
        self._streams[sid] = stream
        if encoding and encoding not in _SUPPORTED_ENCODINGS:
            self._status(sid, stream, UNIMPLEMENTED,
                         f'grpc: Decompressor is not installed for grpc-encoding "{encoding.decode("latin-1")}"',
                         extra=[(b"grpc-accept-encoding", b"identity,gzip")])
            if ev.stream_ended is not None:
                stream.remote_done = True
            self._maybe_forget(sid, stream)
            return
        out.append(CallStarted(sid, path, metadata, timeout))
        if ev.stream_ended is not None:
            stream.remote_done = True
            out.append(CallHalfClosed(sid))

    def _on_data(self, ev: h2.events.DataReceived, out: list[Event]) -> None:
        sid = ev.stream_id
        stream = self._streams.get(sid)
        size = ev.flow_controlled_length
        if stream is None or stream.done or stream.discard:
            # A call we already answered or refused: just give the window back.
            if size:
                self._ack(sid, size)
            if stream is not None and ev.stream_ended is not None:
                stream.remote_done = True
                self._maybe_forget(sid, stream)
            return
        stream.held += size
        buf = stream.inbuf
        data = ev.data
        ended = ev.stream_ended is not None
        if ended:
            stream.remote_done = True
        limit = self.settings.max_receive_message
        last_ended = False
        if not buf and len(data) >= 5 and not data[0] and int.from_bytes(data[1:5], "big") == len(data) - 5 <= limit:
            # The common case: the frame is one whole uncompressed message (no buffering).
            last_ended = ended
            out.append(MessageReceived(sid, data[5:], ended))
        else:
            buf += data
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if length > limit:
                self._status(sid, stream, RESOURCE_EXHAUSTED,
                             f"grpc: received message larger than max ({length} vs. {limit})")
                out.append(CallCancelled(sid, "message too large"))
                self._give_back(sid, stream)
                return
            if len(buf) < 5 + length:
                break
            flag = buf[0]
            payload = bytes(buf[5:5 + length])
            del buf[:5 + length]
            if flag:
                error = _decompress_error(flag, stream.gzip)
                if error is None:
                    try:
                        payload = _gunzip(payload, limit)
                    except ValueError as exc:
                        error = exc.args
                if error is not None:
                    self._status(sid, stream, *error)
                    out.append(CallCancelled(sid, "bad message encoding"))
                    self._give_back(sid, stream)
                    return
            last_ended = ended and not buf
            out.append(MessageReceived(sid, payload, last_ended))
        if not stream.paused:
            # Bytes of complete messages are consumed. Those of a message still arriving stay
            # unacknowledged: a stream's window holds one whole message, and the connection's
            # window then bounds what a client can park here in unfinished messages.
            consumed = stream.held - len(buf)
            if consumed > 0:
                stream.held -= consumed
                if ended and not buf:
                    # The client has finished sending on this stream: only the connection's
                    # window still matters, and h2 returns that in large steps anyway; owe it
                    # and settle many calls' bytes in one acknowledgement.
                    self._owed += consumed
                    if self._owed >= self._owe_limit:
                        self._ack(sid, self._owed)
                        self._owed = 0
                else:
                    self._ack(sid, consumed)
        if not ended:
            return
        if buf:
            # grpc-go: a message cut short by END_STREAM is an unexpected EOF.
            self._status(sid, stream, INTERNAL, "unexpected EOF")
            out.append(CallCancelled(sid, "truncated message"))
            self._give_back(sid, stream)
            return
        if not last_ended:
            out.append(CallHalfClosed(sid))
        self._maybe_forget(sid, stream)

    def ignore_input(self, stream_id: int) -> None:
        """A unary call took its one message: further data is acknowledged and dropped."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.discard = True
            self._give_back(stream_id, stream)

    def _give_back(self, sid: int, stream: _Stream) -> None:
        """Return the window of everything held for a call whose input is no longer wanted."""
        stream.inbuf.clear()
        if stream.held:
            self._ack(sid, stream.held)
            stream.held = 0

    def _on_end(self, sid: int, out: list[Event]) -> None:
        # END_STREAM on a DATA frame was handled with the data (``stream_ended``); this is
        # only reached for HEADERS/trailers that end the stream, which the handlers above cover.
        stream = self._streams.get(sid)
        if stream is not None and not stream.remote_done:
            stream.remote_done = True
            if stream.inbuf:
                self._status(sid, stream, INTERNAL, "unexpected EOF")
                out.append(CallCancelled(sid, "truncated message"))
                return
            if not stream.done:
                out.append(CallHalfClosed(sid))
            self._maybe_forget(sid, stream)

    def _on_reset(self, ev: h2.events.StreamReset, out: list[Event]) -> None:
        stream = self._streams.pop(ev.stream_id, None)
        if stream is None:
            return
        self._drop_output(stream)
        if not stream.done:
            stream.done = True
            reason = "client reset the stream" if ev.remote_reset else f"stream error {ev.error_code!r}"
            out.append(CallCancelled(ev.stream_id, reason))

    def _on_ping(self, now: float, out: list[Event]) -> None:
        """grpc-go's keepalive enforcement (h2 has already queued the PING ACK)."""
        s = self.settings
        last, self._last_ping = self._last_ping, now
        if self._reset_strikes:
            self._reset_strikes = False
            self._ping_strikes = 0
            return
        if last is not None:
            idle = not self._streams and not s.permit_pings_without_calls
            if now - last < (KEEPALIVE_IDLE if idle else s.ping_min_interval):
                self._ping_strikes += 1
        if self._ping_strikes > s.max_ping_strikes:
            self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, TOO_MANY_PINGS)
            out.extend(self._end_all("too many pings", int(ErrorCodes.ENHANCE_YOUR_CALM)))

    def _fail_stream(self, sid: int, code: ErrorCodes, out: list[Event]) -> None:
        stream = self._streams.pop(sid, None)
        if stream is not None:
            self._drop_output(stream)
        self._safe_reset(sid, code)
        if stream is not None and not stream.done:
            stream.done = True
            out.append(CallCancelled(sid, f"stream error {code!r}"))

    # -- flow control for consumers ----------------------------------------------------------

    def pause(self, stream_id: int) -> None:
        """Stop acknowledging this stream's data (its consumer is behind)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.paused = True

    def resume(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.paused:
            stream.paused = False
            if stream.held:
                self._ack(stream_id, stream.held)
                stream.held = 0
                self._flush_h2()

    def _ack(self, sid: int, size: int) -> None:
        try:
            self._h2.acknowledge_received_data(size, sid)
        except (h2.exceptions.ProtocolError, KeyError):
            pass

    # -- output ------------------------------------------------------------------------------

    def send_unary(self, stream_id: int, payload: bytes) -> None:
        """Headers, one message and OK trailers (the whole answer of a unary call)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return
        conn = self._h2
        data = b"\x00" + len(payload).to_bytes(4, "big") + payload
        if stream.remote_done and not stream.headers_sent and not stream.out:
            # The common case (the client sent its request and END_STREAM): the three frames
            # in one step (server/h2conn.py), state for state what the calls below do.
            try:
                answer = conn.answer_unary(stream_id, _RESPONSE_HEADERS, data, _OK_TRAILERS)
            except h2.exceptions.ProtocolError:
                self._release(stream_id, stream)
                return
            if answer is not None:
                self._flush_h2()
                self._out += answer
                stream.headers_sent = stream.done = True
                self._reset_strikes = True
                self._maybe_forget(stream_id, stream)
                return
        try:
            if not stream.headers_sent:
                conn.send_headers(stream_id, _RESPONSE_HEADERS)
                stream.headers_sent = True
            if not stream.out and len(data) <= conn.max_outbound_frame_size and \
                    len(data) <= conn.local_flow_control_window(stream_id):
                conn.send_data(stream_id, data)
                conn.send_headers(stream_id, _OK_TRAILERS, end_stream=True)
                stream.done = True
                self._reset_strikes = True
                self._after_status(stream_id, stream)
                return
        except h2.exceptions.ProtocolError:
            self._release(stream_id, stream)
            return
        self._queue(stream_id, stream, data)
        self._close_with(stream_id, stream, list(_OK_TRAILERS))

    def send_headers(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.done or stream.headers_sent:
            return
        try:
            self._h2.send_headers(stream_id, _RESPONSE_HEADERS)
        except h2.exceptions.ProtocolError:
            self._release(stream_id, stream)
            return
        stream.headers_sent = True
        self._reset_strikes = True

    def send_message(self, stream_id: int, payload: bytes) -> int:
        """Queue one message on a streaming call; returns the bytes still waiting for window
        (the caller waits while that is above ``settings.pending_high``)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return 0
        if not stream.headers_sent:
            self.send_headers(stream_id)
        self._queue(stream_id, stream, frame_message(payload))
        return stream.out_bytes

    def send_status(self, stream_id: int, code: int, message: str = "") -> None:
        """End a call: trailers after any queued data, or a trailers-only answer."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.done:
            return
        if not stream.headers_sent and not stream.out:
            self._status(stream_id, stream, code, message)
            return
        trailers = [(b"grpc-status", b"%d" % code)]
        if message:
            trailers.append((b"grpc-message", encode_grpc_message(message)))
        self._close_with(stream_id, stream, trailers)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream.done = True
            self._drop_output(stream)
        self._safe_reset(stream_id, error_code)

    def pending_bytes(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.out_bytes if stream is not None else 0

    def drain(self) -> None:
        """Graceful shutdown, as grpc-go's GracefulStop: GOAWAY(2^31-1) + PING; when the PING
        comes back, GOAWAY(last stream id). Calls already started finish."""
        if self._drain_started or self.closed:
            return
        self._drain_started = self._draining = True
        self._raw_goaway(MAX_STREAM_ID, 0, b"")
        try:
            self._h2.ping(DRAIN_PING)
        except h2.exceptions.ProtocolError:
            self._second_goaway()
        self._flush_h2()

    def _second_goaway(self) -> None:
        self._last_accepted = self._h2.highest_inbound_stream_id
        self._raw_goaway(self._last_accepted, 0, b"")
        self._draining = False

    def ping(self) -> None:
        """A keepalive PING from the server (``--grpc-keepalive-interval``)."""
        if not self.closed:
            try:
                self._h2.ping(KEEPALIVE_PING)
            except h2.exceptions.ProtocolError:
                pass

    def goaway(self, error_code: int, debug: bytes = b"") -> None:
        """End the connection now with GOAWAY (e.g. too many pings)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._h2.close_connection(error_code, additional_data=debug)
        except h2.exceptions.ProtocolError:
            pass
        self._flush_h2()

    def data_to_send(self) -> bytes:
        self._flush_h2()
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def unsent(self) -> int:
        """Bytes queued for the socket and not handed out by ``data_to_send`` yet."""
        self._flush_h2()
        return len(self._out)

    @property
    def open_calls(self) -> int:
        return len(self._streams)

    @property
    def idle(self) -> bool:
        """No calls left (graceful drain can close the connection)."""
        return not self._streams

    # -- internals ---------------------------------------------------------------------------

    def _flush_h2(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._out += data

    def _raw_goaway(self, last_stream_id: int, error_code: int, debug: bytes) -> None:
        """A GOAWAY that does not close h2's state machine (h2 would refuse to send on the
        streams still running after it); ordered after everything h2 queued so far."""
        self._flush_h2()
        self._out += GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code,
                                 additional_data=debug).serialize()

    def _status(self, sid: int, stream: _Stream, code: int, message: str,
                extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Trailers-only answer (no headers, no data were sent)."""
        headers = [*_RESPONSE_HEADERS, (b"grpc-status", b"%d" % code)]
        if message:
            headers.append((b"grpc-message", encode_grpc_message(message)))
        headers.extend(extra)
        if stream.headers_sent or stream.out:
            self._close_with(sid, stream, headers[2:])
            return
        stream.headers_sent = True
        try:
            self._h2.send_headers(sid, headers, end_stream=True)
        except h2.exceptions.ProtocolError:
            self._release(sid, stream)
            return
        stream.done = True
        self._reset_strikes = True
        self._after_status(sid, stream)

    def _after_status(self, sid: int, stream: _Stream) -> None:
        """grpc-go: a status sent before the client finished sending is followed by
        RST_STREAM NO_ERROR (the rest of its request is not wanted)."""
        if not stream.remote_done:
            self._safe_reset(sid, ErrorCodes.NO_ERROR)
            self._streams.pop(sid, None)
        else:
            self._maybe_forget(sid, stream)

    def _close_with(self, sid: int, stream: _Stream, trailers: list[tuple[bytes, bytes]]) -> None:
        stream.trailers = trailers
        self._drain_stream(sid, stream)

    def _queue(self, sid: int, stream: _Stream, data: bytes) -> None:
        stream.out.append(data)
        stream.out_bytes += len(data)
        self.pending_total += len(data)
        self._drain_stream(sid, stream)

    def _drain_stream(self, sid: int, stream: _Stream) -> None:
        conn = self._h2
        try:
            while stream.out:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    return
                chunk = stream.out[0]
                n = min(len(chunk), window, conn.max_outbound_frame_size)
                if n < len(chunk):
                    conn.send_data(sid, chunk[:n])
                    stream.out[0] = chunk[n:]
                else:
                    conn.send_data(sid, chunk)
                    stream.out.popleft()
                stream.out_bytes -= n
                self.pending_total -= n
                self._reset_strikes = True
            if stream.trailers is not None and not stream.done:
                conn.send_headers(sid, stream.trailers, end_stream=True)
                stream.done = True
                stream.trailers = None
                self._after_status(sid, stream)
        except h2.exceptions.ProtocolError:
            self._release(sid, stream)

    def _pump_out(self, sid: int) -> None:
        if sid:
            stream = self._streams.get(sid)
            if stream is not None and stream.out:
                self._drain_stream(sid, stream)
            return
        for other, stream in list(self._streams.items()):
            if stream.out or stream.trailers is not None:
                self._drain_stream(other, stream)

    def _maybe_forget(self, sid: int, stream: _Stream) -> None:
        if stream.done and stream.remote_done:
            self._streams.pop(sid, None)

    def _release(self, sid: int, stream: _Stream) -> None:
        """Forget a call whose stream h2 no longer accepts frames on."""
        stream.done = True
        self._drop_output(stream)
        self._streams.pop(sid, None)

    def _drop_output(self, stream: _Stream) -> None:
        self.pending_total -= stream.out_bytes
        stream.out.clear()
        stream.out_bytes = 0
        stream.trailers = None

    def _safe_reset(self, sid: int, code: int) -> None:
        try:
            self._h2.reset_stream(sid, code)
        except (h2.exceptions.ProtocolError, KeyError):
            pass

    def _end_all(self, reason: str, code: int) -> list[Event]:
        out: list[Event] = []
        for sid, stream in self._streams.items():
            self._drop_output(stream)
            if not stream.done:
                stream.done = True
                out.append(CallCancelled(sid, reason))
        self._streams.clear()
        out.append(ConnectionEnded(reason, code))
        return out


def _decompress_error(flag: int, gzip: bool) -> tuple[int, str] | None:
    if flag != 1:
        return INTERNAL, f"grpc: received unexpected payload format {flag}"
    if not gzip:
        return INTERNAL, "grpc: compressed flag set with identity or empty encoding"
    return None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Inflate a gzip message, refusing output above ``limit`` (no decompression bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(INTERNAL, f"grpc: failed to decompress the received message {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValueError(RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({len(out)}+ vs. {limit})")
    if not inflater.eof:
        raise ValueError(INTERNAL, "grpc: failed to decompress the received message unexpected EOF")
    return out


__all__ = [
    "GrpcConnection", "GrpcSettings", "CallStarted", "MessageReceived", "CallHalfClosed", "CallCancelled",
    "ConnectionEnded", "encode_grpc_message", "parse_timeout", "frame_message",
]
