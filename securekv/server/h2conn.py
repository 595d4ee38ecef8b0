"""h2's ``H2Connection`` for the gRPC server, minus work it does for nothing on the hot path.

Why: under sequential puts, parsing a call's frames in h2 and encoding its answer were the
largest phases of the trio thread after TLS (docs/benchmarks.md, "Where a lone put's server
CPU goes"). Two pieces of that work are pure overhead for us:

- ``_receive_frame`` formats ``repr(frame)`` for a trace log line even when logging is off
  (the argument is built before the logger decides to drop it): about a tenth of h2's time per
  received frame. The override below does the same dispatch and the same error handling
  without it.
- A unary answer (HEADERS, one DATA frame, trailers with END_STREAM) through h2's public calls
  builds six frame objects (flag sets, validation flags, a header list copy per block) and
  serialises them one by one. :meth:`ServerH2Connection.answer_unary` makes the same state
  transitions, in the same order, on the same state machines and windows, asks the same HPACK
  encoder for the same blocks, and writes the three frames' bytes itself.

Both reach into h2 internals (``_frame_dispatch_table``, the stream and connection state
machines, the outbound windows) that have been stable from h2 4.1 to 4.4. So both are used only
with an h2 whose ``H2Connection._receive_frame`` source is one of the digests below (the
releases these were checked against, byte for byte and state for state, by
``tests/server/test_h2conn.py``). A user's fresh install gets the newest h2; with a release
not vetted here, or a missing name, the connection is h2's own (its public calls, its receive
step): slower, never wrong. The test then skips, naming the digest waiting to be vetted.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
from typing import Callable, Iterable

import h2.connection
import h2.stream
from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import Frame, RstStreamFrame

_HEADER = struct.Struct(">HBBBL")  # a frame header: 24-bit length, type, flags, stream id
_TYPE_DATA, _TYPE_HEADERS = 0x0, 0x1
_END_STREAM, _END_HEADERS = 0x1, 0x4

# sha256 of ``inspect.getsource(H2Connection._receive_frame)``: h2 4.1.0, and 4.2.0-4.4.1.
VETTED_RECEIVE_FRAME = frozenset({
    "4beae2c3c05681b0f5a501f24234fe2c673148c0734e61bcc3554102e2a3e961",
    "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873",
})


def receive_frame_digest(method: Callable[..., object]) -> str | None:
    """sha256 of a method's source; None where the source cannot be read (no .py shipped)."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()


H2_VETTED = receive_frame_digest(h2.connection.H2Connection._receive_frame) in VETTED_RECEIVE_FRAME

try:
    _CONN_SEND_HEADERS = h2.connection.ConnectionInputs.SEND_HEADERS
    _CONN_SEND_DATA = h2.connection.ConnectionInputs.SEND_DATA
    _SEND_HEADERS = h2.stream.StreamInputs.SEND_HEADERS
    _SEND_DATA = h2.stream.StreamInputs.SEND_DATA
    _SEND_END_STREAM = h2.stream.StreamInputs.SEND_END_STREAM
    _HALF_CLOSED_REMOTE = h2.stream.StreamState.HALF_CLOSED_REMOTE
    FAST_ANSWER = H2_VETTED
except AttributeError:  # pragma: no cover - an h2 release reorganised its state machines
    FAST_ANSWER = False


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


class ServerH2Connection(h2.connection.H2Connection):  # type: ignore[misc]
    """Server-side ``H2Connection`` with a receive step that skips the trace ``repr`` and a
    one-call unary answer. Behaviour on the wire is h2's."""

    def _receive_frame_untraced(self, frame: Frame) -> list[Event]:
        # h2's own step (4.1-4.4) without its ``logger.trace("Received frame: %s", repr(frame))``.
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # A frame on a stream closed by RST_STREAM is a stream error (answer RST_STREAM);
            # on a stream closed otherwise it is a connection error.
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            f = RstStreamFrame(e.stream_id)
            f.error_code = e.error_code
            self._prepare_for_sending([f])
            events = e._events
        except StreamIDTooLowError as e:
            # A stream id below the highest seen: a stream h2 already forgot.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    if H2_VETTED:
        _receive_frame = _receive_frame_untraced

    def answer_unary(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], data: bytes,
                     trailers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The whole answer of a call whose client has finished sending (HEADERS, one DATA
        frame, trailers ending the stream) as bytes to send after ``data_to_send()``; None
        (nothing changed) when this path does not apply: the stream is not half-closed by the
        client or has sent headers already, the data does not fit one frame or the windows.

        Equivalent to ``send_headers(headers)``, ``send_data(data)``,
        ``send_headers(trailers, end_stream=True)`` with header validation and normalisation
        off (our configuration)."""
        if not FAST_ANSWER:
            return None
        stream = self.streams.get(stream_id)
        if stream is None:
            return None
        machine = stream.state_machine
        size = len(data)
        if machine.state != _HALF_CLOSED_REMOTE or machine.headers_sent or not size \
                or size > self.max_outbound_frame_size or size > self.outbound_flow_control_window \
                or size > stream.outbound_flow_control_window:
            return None
        headers = list(headers)
        trailers = list(trailers)
        limit = self.max_outbound_frame_size
        if _block_bound(headers) > limit or _block_bound(trailers) > limit:
            return None  # would need CONTINUATION frames: h2's public path handles that
        # From here on nothing may fail back to the caller: the encoder's table moves.
        conn_machine = self.state_machine
        conn_machine.process_input(_CONN_SEND_HEADERS)
        machine.process_input(_SEND_HEADERS)
        head = self.encoder.encode(headers)
        conn_machine.process_input(_CONN_SEND_DATA)
        machine.process_input(_SEND_DATA)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        conn_machine.process_input(_CONN_SEND_HEADERS)
        machine.process_input(_SEND_HEADERS)
        tail = self.encoder.encode(trailers)
        machine.process_input(_SEND_END_STREAM)
        return (_frame(_TYPE_HEADERS, _END_HEADERS, stream_id, head)
                + _frame(_TYPE_DATA, 0, stream_id, data)
                + _frame(_TYPE_HEADERS, _END_HEADERS | _END_STREAM, stream_id, tail))


def _block_bound(headers: list[tuple[bytes, bytes]]) -> int:
    """An upper bound of a header list's HPACK block (literal fields, Huffman's worst case of
    30 bits per octet, the integer prefixes)."""
    return sum(4 * (len(name) + len(value)) + 12 for name, value in headers) + 8


__all__ = ["ServerH2Connection", "FAST_ANSWER", "H2_VETTED", "VETTED_RECEIVE_FRAME", "receive_frame_digest"]
