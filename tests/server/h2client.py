"""A raw HTTP/2 gRPC client for protocol tests: h2 over a blocking TLS socket.

Not a gRPC library on purpose: tests need to send what real clients never send (bad headers,
oversized messages, floods of PINGs, resets at odd moments) and to see every frame the server
answers with (RST_STREAM codes, GOAWAY, trailers-only responses).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame


def parse_frames(data: bytes) -> list[Frame]:
    """HTTP/2 frames in ``data`` (a whole number of them), parsed raw."""
    out = []
    while len(data) >= 9:
        f, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        f.parse_body(memoryview(data[9:9 + length]))
        out.append(f)
        data = data[9 + length:]
    return out


def frame(payload: bytes, compressed: bool = False) -> bytes:
    return (b"\x01" if compressed else b"\x00") + len(payload).to_bytes(4, "big") + payload


def grpc_headers(path: str, *extra: tuple[str, str], content_type: str = "application/grpc") -> list:
    return [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "127.0.0.1"),
            ("content-type", content_type), ("te", "trailers"), *extra]


class H2Client:
    def __init__(self, port: int, ca: Path, cert: Path, key: Path, *, window: int | None = None,
                 validate: bool = True, timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.settimeout(timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events: list[Any] = []
        self.raw = bytearray()  # every byte received (for frames h2 refuses to parse)
        self.closed = False
        self.auto_window = True  # acknowledge received data at once (turn off to stall the server)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, path: str, *messages: bytes, end: bool = True, headers: list | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers or grpc_headers(path), end_stream=not messages and end)
        for i, m in enumerate(messages):
            self.send_data(sid, m, end=end and i == len(messages) - 1)
        self.flush()
        return sid

    def send_data(self, sid: int, data: bytes, end: bool = False) -> None:
        """Send in frames the server's windows allow, reading its WINDOW_UPDATEs as needed."""
        view = memoryview(data)
        while True:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.flush()
                self.pump(lambda evs: self.conn.local_flow_control_window(sid) > 0)
                continue
            chunk, view = view[:room], view[room:]
            last = not len(view)
            self.conn.send_data(sid, bytes(chunk), end_stream=end and last)
            if last:
                return

    def pump(self, until: Any, timeout: float = 10.0) -> list[Any]:
        """Read frames until ``until(events)`` is true (or the connection ends); all events."""
        deadline = time.monotonic() + timeout
        while not until(self.events):
            if self.closed:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no expected event within {timeout}s; got {self.events}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.closed = True
                break
            self.raw += data
            try:
                received = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                # h2 (as a client) takes nothing after a GOAWAY; a server still finishing its
                # calls after one (graceful drain: GOAWAY, PING, GOAWAY) sends more. Record
                # the GOAWAYs from the raw bytes and stop reading.
                goaways = [f for f in parse_frames(bytes(self.raw)) if isinstance(f, GoAwayFrame)]
                if not goaways:
                    raise
                for f in goaways:
                    ev = h2.events.ConnectionTerminated()
                    ev.error_code, ev.last_stream_id, ev.additional_data = (
                        f.error_code, f.last_stream_id, f.additional_data)
                    self.events.append(ev)
                self.closed = True
                break
            for ev in received:
                self.events.append(ev)
                if isinstance(ev, h2.events.DataReceived) and self.auto_window:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            self.flush()
        return self.events

    def finished(self, sid: int) -> Any:
        """Predicate: the stream ended (trailers with END_STREAM) or was reset."""
        def done(events: list[Any]) -> bool:
            return any(getattr(e, "stream_id", None) == sid and isinstance(e, (h2.events.StreamEnded,
                                                                               h2.events.StreamReset))
                       for e in events)
        return done

    def result(self, sid: int, timeout: float = 10.0) -> "Result":
        self.pump(self.finished(sid), timeout)
        return Result.of(sid, self.events)


class Result:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.data = b""
        self.reset: int | None = None
        self.trailers_only = False

    @classmethod
    def of(cls, sid: int, events: list[Any]) -> "Result":
        r = cls()
        for e in events:
            if getattr(e, "stream_id", None) != sid:
                continue
            if isinstance(e, h2.events.ResponseReceived):
                r.headers = dict(e.headers)
                if e.stream_ended is not None:
                    r.trailers_only = True
                    r.trailers = r.headers
            elif isinstance(e, h2.events.TrailersReceived):
                r.trailers = dict(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                r.data += e.data
            elif isinstance(e, h2.events.StreamReset):
                r.reset = int(e.error_code)
        return r

    @property
    def status(self) -> int | None:
        value = self.trailers.get("grpc-status")
        return int(value) if value is not None else None

    @property
    def message(self) -> str:
        from urllib.parse import unquote

        return unquote(self.trailers.get("grpc-message", ""))

    def messages(self) -> list[bytes]:
        out, buf = [], self.data
        while len(buf) >= 5:
            n = int.from_bytes(buf[1:5], "big")
            out.append(buf[5:5 + n])
            buf = buf[5 + n:]
        return out
