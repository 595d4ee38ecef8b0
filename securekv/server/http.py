"""HTTP/1.1 on the client port (behind the TLS front door) and on --listen-metrics-urls.

Serves etcd's GET endpoints: ``/health`` (``{"health":"true"}``), ``/version`` and
``/metrics``. One request per connection (``Connection: close``): these are probes and scrapes,
not a hot path, and it keeps the parser tiny and bounded.
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0

CORS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n"
    b"Access-Control-Allow-Headers: accept, content-type, authorization\r\n"
)


class HttpApp:
    def __init__(
        self,
        health: Callable[[], Awaitable[tuple[bool, str]]],
        version: Callable[[], dict],
        metrics: Callable[[], bytes],
        metrics_content_type: str,
    ) -> None:
        self.health = health
        self.version = version
        self.metrics = metrics
        self.metrics_content_type = metrics_content_type

    async def serve(self, stream: trio.abc.Stream, paths: frozenset[str]) -> None:
        head = b""
        with trio.move_on_after(HEAD_TIMEOUT):
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                head += chunk
        if b"\r\n\r\n" not in head:
            await _respond(stream, 400, b"text/plain; charset=utf-8", b"bad request\n")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(stream, 400, b"text/plain; charset=utf-8", b"bad request\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in paths:
            await _respond(stream, 404, b"text/plain; charset=utf-8", b"404 page not found\n")
            return
        if method == "OPTIONS":
            await _respond(stream, 200, b"text/plain; charset=utf-8", b"")
            return
        if method not in ("GET", "HEAD"):
            await _respond(stream, 405, b"text/plain; charset=utf-8", b"Method Not Allowed\n")
            return
        if path == "/health":
            ok, _reason = await self.health()
            body = b'{"health":"true"}' if ok else b'{"health":"false"}\n'
            await _respond(stream, 200 if ok else 503, b"text/plain; charset=utf-8", body, method == "HEAD")
        elif path == "/version":
            body = json.dumps(self.version(), separators=(",", ":")).encode()
            await _respond(stream, 200, b"application/json", body, method == "HEAD")
        elif path == "/metrics":
            await _respond(stream, 200, self.metrics_content_type.encode(), self.metrics(), method == "HEAD")


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


async def _respond(stream: trio.abc.Stream, status: int, ctype: bytes, body: bytes, head_only: bool = False) -> None:
    out = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Status"))
    out += CORS
    out += b"Content-Type: " + ctype + b"\r\n"
    out += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    if not head_only:
        out += body
    await stream.send_all(out)


CLIENT_PATHS = frozenset({"/health", "/version", "/metrics"})
METRICS_PATHS = frozenset({"/health", "/metrics"})
