"""HTTP/1.1 on the client port (behind the TLS front door) and on --listen-metrics-urls.

Serves etcd's GET endpoints ``/health`` (``{"health":"true"}``), ``/version`` and
``/metrics``, and on the client port etcd's JSON gateway (``POST /v3/...``,
:mod:`securekv.api.gateway`). h11 does the HTTP/1.1 framing: keep-alive, chunked bodies,
``Expect: 100-continue``. Every request is bounded in size and in time as a whole: its head must
be complete ``head_timeout`` (``--tls-handshake-timeout``) after its first byte and its body
``BODY_TIMEOUT`` after the head (timers on the whole, not per read, so a client trickling one
byte at a time -- slow loris -- is closed on time), and a body comes in at most
``MAX_BODY_PIECES`` chunks; a kept-alive connection waits ``IDLE_TIMEOUT`` for the next request.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

import h11
import trio

from securekv.api.gateway import HTTP_REASON, Gateway, Reply, StreamReply, is_gateway_path, route_for
from securekv.api.identity import Identity

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0  # from the first byte of a request to its complete head
IDLE_TIMEOUT = 60.0  # a kept-alive connection with no new request is closed
BODY_TIMEOUT = 30.0  # from the complete head to the end of the body
# Pieces (h11 Data events: chunks, or parts of a chunk split across reads) one body may come in.
# Bytes alone do not bound the work: h11 spends ~5 us a chunk, and a 3 MiB body sent as 1-byte
# chunks is 3 million of them (15 s of CPU for one request, found probing issue 12). A client
# streaming a gateway body one JSON object per chunk sends at most MAX_STREAM_OBJECTS (4096).
MAX_BODY_PIECES = 16384

CORS = [
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Methods", b"POST, GET, OPTIONS, PUT, DELETE"),
    (b"Access-Control-Allow-Headers", b"accept, content-type, authorization"),
]
TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"


class _Done(Exception):
    """The connection is over (closed by the peer, timed out or unusable)."""


class HttpApp:
    def __init__(
        self,
        health: Callable[[], Awaitable[tuple[bool, str]]],
        version: Callable[[], dict],
        metrics: Callable[[], bytes],
        metrics_content_type: str,
        gateway: Gateway | None = None,
        max_body: int = 4 * 1024 * 1024,
        head_timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self.health = health
        self.version = version
        self.metrics = metrics
        self.metrics_content_type = metrics_content_type
        self.gateway = gateway
        self.max_body = max_body
        self.head_timeout = head_timeout

    async def serve(self, stream: trio.abc.Stream, paths: frozenset[str], identity: Identity | None = None,
                    gateway: bool = False, only: frozenset[str] | None = None) -> None:
        """Requests on one connection until either side closes it."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                try:
                    request, body = await self._read_request(conn, stream)
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        status = exc.error_status_hint
                        await _send(conn, stream, status, TEXT, b"%d %s\n" % (status, HTTP_REASON.get(
                            status, "Bad Request").encode()))
                    return
                except _TooLarge:
                    await _send(conn, stream, 413, TEXT, b"request body too large\n")
                    return
                if request is None:
                    return
                if only is not None and not _allowed(request, only):
                    # A connection without a client certificate (server/listener.py): the join
                    # endpoints only, and the answer says why.
                    await _send(conn, stream, 403, TEXT, b"this connection presented no client certificate: "
                                b"only the join endpoints are served (POST /v3/securekv/join)\n")
                    return
                keep = await self._dispatch(conn, stream, request, body, paths, identity, gateway)
                if not keep or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (_Done, trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return

    async def _read_request(self, conn: h11.Connection, stream: trio.abc.Stream) -> tuple[Any, bytes]:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # Idle until the first byte of the next request.
            if conn.their_state is h11.DONE or conn.their_state is h11.MUST_CLOSE:
                raise _Done()
            data = b""
            with trio.move_on_after(IDLE_TIMEOUT) as idle:
                data = await stream.receive_some(65536)
            if idle.cancelled_caught:
                raise _Done()
            conn.receive_data(data)
            with trio.move_on_after(self.head_timeout) as head:
                event = await _next_event(conn, stream)
            if head.cancelled_caught:
                raise _Done()  # the whole head did not arrive in time (slow loris)
        if isinstance(event, h11.ConnectionClosed):
            return None, b""
        if not isinstance(event, h11.Request):
            raise _Done()
        length = _content_length(event)
        if length is not None and length > self.max_body:
            raise _TooLarge()
        body = bytearray()
        if conn.client_is_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        pieces = 0
        with trio.move_on_after(BODY_TIMEOUT) as scope:
            while True:
                part = await _next_event(conn, stream)
                if isinstance(part, h11.Data):
                    body += part.data
                    pieces += 1
                    if len(body) > self.max_body or pieces > MAX_BODY_PIECES:
                        raise _TooLarge()
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    raise _Done()
        if scope.cancelled_caught:
            raise _Done()
        return event, bytes(body)

    async def _dispatch(self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request, body: bytes,
                        paths: frozenset[str], identity: Identity | None, gateway: bool) -> bool:
        method = request.method.decode("latin-1")
        path = request.target.decode("latin-1").split("?", 1)[0]
        if gateway and self.gateway is not None and is_gateway_path(path):
            route = route_for(path)
            if route is None:  # grpc-gateway's own answer, not Go's default mux text
                await _send(conn, stream, 404, TEXT, b"Not Found\n")
                return True
            if method == "OPTIONS":
                await _send(conn, stream, 200, TEXT, b"")
                return True
            if method != "POST":
                await _send(conn, stream, 405, TEXT, b"Method Not Allowed\n")
                return True
            token = ""
            for name, value in request.headers:
                if name == b"authorization":
                    token = value.decode("latin-1")
            reply = await self.gateway.call(route, body, identity or Identity(tls=False), token)
            if isinstance(reply, Reply):
                await _send(conn, stream, reply.status, JSON, reply.body)
                return True
            await _stream(conn, stream, reply)
            return False
        if path not in paths:
            await _send(conn, stream, 404, TEXT, b"404 page not found\n")
            return True
        if method == "OPTIONS":
            await _send(conn, stream, 200, TEXT, b"")
            return True
        if method not in ("GET", "HEAD"):
            await _send(conn, stream, 405, TEXT, b"Method Not Allowed\n")
            return True
        head_only = method == "HEAD"
        if path == "/health":
            ok, _reason = await self.health()
            body_out = b'{"health":"true"}' if ok else b'{"health":"false"}\n'
            await _send(conn, stream, 200 if ok else 503, TEXT, body_out, head_only)
        elif path == "/version":
            await _send(conn, stream, 200, JSON, json.dumps(self.version(), separators=(",", ":")).encode(),
                        head_only)
        elif path == "/metrics":
            await _send(conn, stream, 200, self.metrics_content_type.encode(), self.metrics(), head_only)
        return True


class _TooLarge(Exception):
    pass


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    """The next h11 event (the caller bounds the time for the whole head or body)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.their_state is h11.DONE or conn.their_state is h11.MUST_CLOSE:
            raise _Done()
        conn.receive_data(await stream.receive_some(65536))


async def _send(conn: h11.Connection, stream: trio.abc.Stream, status: int, ctype: bytes, body: bytes,
                head_only: bool = False) -> None:
    headers = [*CORS, (b"Content-Type", ctype), (b"Content-Length", b"%d" % len(body))]
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=HTTP_REASON.get(status, "").encode()))
    if body and not head_only:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


async def _stream(conn: h11.Connection, stream: trio.abc.Stream, reply: StreamReply) -> None:
    """One line per message, each its own chunk (etcd3gw parses chunk by chunk); the connection
    closes after the stream (the client may not send more while it is open)."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_for_close, stream, nursery.cancel_scope)
            if reply.requests is not None:
                nursery.start_soon(reply.feed)
            first = await reply.next_line()
            status = reply.error_status if reply.error_status else 200
            headers = [*CORS, (b"Content-Type", JSON), (b"Connection", b"close")]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers,
                                                         reason=HTTP_REASON.get(status, "").encode())))
            line = first
            while line is not None:
                await stream.send_all(conn.send(h11.Data(data=line)))
                line = await reply.next_line()
            await stream.send_all(conn.send(h11.EndOfMessage()))
            nursery.cancel_scope.cancel()
    finally:
        reply.close()


async def _watch_for_close(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """End the stream when the client goes away (all it may send now is EOF)."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except trio.BusyResourceError:
        return
    scope.cancel()


def _allowed(request: h11.Request, gateway_paths: frozenset[str]) -> bool:
    path = request.target.decode("latin-1").split("?", 1)[0]
    return request.method == b"POST" and path.startswith("/v3/") and path[len("/v3/"):] in gateway_paths


CLIENT_PATHS = frozenset({"/health", "/version", "/metrics"})
# etcd 3.4 serves only /health and /metrics here; /version too costs nothing and probes expect it.
METRICS_PATHS = frozenset({"/health", "/version", "/metrics"})
