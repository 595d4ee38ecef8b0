"""etcd's grpc-gateway: the v3 API as JSON over HTTP/1.1 on the client port (``/v3/...``).

Why: etcd 3.4 serves it on every client URL and real clients depend on it (etcd3gw, used by
OpenStack; curl scripts in runbooks). It is a translation layer only, driven by the same API
table as the gRPC dispatcher (``api/table.py``): the JSON body becomes the same protobuf
request the gRPC path decodes (hot writes then go into their log entry the same way), the caller
gets its identity from the same TLS connection (or an ``Authorization`` token) and passes the
same :class:`AuthGate`, the same server methods answer, and failures go through the same error
mapper (``api/status.py``). JSON follows grpc-gateway with ``OrigName``: proto field names,
64-bit integers as strings, bytes as base64, enums by name, default values left out; unknown
request fields are ignored, an empty body is an empty request.

Streams (watch, lease keepalive, snapshot, election observe) answer with one
``{"result": ...}`` line per message. The requests of a client stream (one object, or several
in a row, as curl and etcd3gw send them; at most ``MAX_STREAM_OBJECTS``) are fed to the session
by their own task while the answers are written, so a body of many watch creates cannot fill
the session's outbox while nobody reads it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import attrs
import trio
from google.protobuf import json_format

from securekv.api.auth_gate import AuthGate, Caller
from securekv.api.goerrors import check_bytes_fields, json_error
from securekv.api.identity import Identity
from securekv.api.status import HTTP_STATUS, code_number, status_of
from securekv.api.table import GATEWAY, Kind, Rpc
from securekv.rpctypes import ERR_REQUEST_TOO_LARGE, EtcdError, err

log = logging.getLogger(__name__)

# The path prefixes etcd 3.4 serves (v3alpha went away in 3.4).
PREFIXES = ("/v3/", "/v3beta/")
# Most request objects one streaming body may carry (a body is also bounded in bytes).
MAX_STREAM_OBJECTS = 4096
# JSON values a body may hold, counted before it is parsed (``json_marks``). Bytes alone do not
# bound the work: protobuf's ParseDict is pure Python, ~6 us a value, and a 3 MiB body of
# ``{"compare":[{},{},...]}`` holds a million values (7 s of the single trio thread, found
# probing issue 12). A unary body may hold 8192 (at least 24 per --max-txn-ops; the largest
# txn the default limits accept has ~3,000) — under 50 ms to parse; a streaming body 16 per
# object on average (a watch create has ~8) — under 0.2 s for the largest.
MAX_UNARY_MARKS = 8192
MARKS_PER_STREAM_OBJECT = 16

HTTP_REASON = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
    413: "Request Entity Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def route_for(path: str) -> Rpc | None:
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return GATEWAY.get(path[len(prefix):])
    return None


def is_gateway_path(path: str) -> bool:
    return path.startswith(PREFIXES)


@attrs.frozen
class Reply:
    """A whole unary answer."""

    status: int
    body: bytes


class StreamReply:
    """A streaming answer: the HTTP layer runs ``feed`` (client streams) and pulls encoded
    lines until ``next_line`` gives None."""

    def __init__(self, session: Any, rpc: Rpc, observe: Callable[[str], None],
                 requests: list[Any] | None = None) -> None:
        self.session = session
        self.rpc = rpc
        self.requests = requests  # a client stream's requests, fed by ``feed``
        self._observe = observe
        self.code = "OK"
        self.lines = 0
        self.ended = False
        self.feed_error: EtcdError | None = None
        # The HTTP status of a stream that fails before its first message (grpc-gateway's rule).
        self.error_status = 0

    async def feed(self) -> None:
        """The body's requests to the session, in order, while answers are being read."""
        try:
            for request in self.requests or ():
                await self.session.handle(request)
            await self.session.half_close()
        except EtcdError as exc:
            self.feed_error = exc
            self.session.close()  # ends ``next``: the error line follows

    async def next_line(self) -> bytes | None:
        if self.ended:
            return None
        try:
            message = await self.session.next()
        except EtcdError as exc:
            return self._error(exc)
        if message is None:
            if self.feed_error is not None:
                return self._error(self.feed_error)
            self.ended = True
            return None
        self.lines += 1
        return b'{"result":' + encode(message) + b"}\n"

    def _error(self, exc: EtcdError) -> bytes:
        self.code, self.ended = exc.code, True
        if not self.lines:
            self.error_status = HTTP_STATUS[code_number(exc.code)]
        return stream_error(exc.code, exc.message)

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            self._observe(self.code)


def encode(message: Any) -> bytes:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True),
                      separators=(",", ":")).encode()


def error_body(code: str, message: str) -> tuple[int, bytes]:
    number = code_number(code)
    body = json.dumps({"error": message, "message": message, "code": number}, separators=(",", ":"))
    return HTTP_STATUS[number], body.encode()


def stream_error(code: str, message: str) -> bytes:
    number = code_number(code)
    status = HTTP_STATUS[number]
    chunk = {"error": {"grpc_code": number, "http_code": status, "message": message,
                       "http_status": HTTP_REASON.get(status, "")}}
    return json.dumps(chunk, separators=(",", ":")).encode() + b"\n"


def json_marks(text: str) -> int:
    """An upper bound of the JSON values in ``text`` minus one, in C speed (str.count): each
    value after the first follows a ``[``, ``,`` or ``:``, and each object adds one ``{``.
    Marks inside strings count too (base64 has none), which only makes the bound safer."""
    return text.count(",") + text.count(":") + text.count("[") + text.count("{")


def decode_all(body: bytes, message_type: type, limit: int = 1, max_marks: int | None = None) -> list[Any]:
    """The body's JSON objects, in order (an empty body is one empty request); more than
    ``limit`` objects is an error, and so is a body with more than ``max_marks`` JSON values
    (default: MAX_UNARY_MARKS for one object, MARKS_PER_STREAM_OBJECT per object for a
    stream), refused as too large before any parsing."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EtcdError("INVALID_ARGUMENT", f"request body is not UTF-8: {exc}") from None
    if max_marks is None:
        max_marks = MAX_UNARY_MARKS if limit == 1 else MARKS_PER_STREAM_OBJECT * limit
    if json_marks(text) > max_marks:
        raise err(ERR_REQUEST_TOO_LARGE)
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        if len(out) >= limit:
            if limit == 1:
                break  # unary calls read one object, as grpc-gateway does
            raise EtcdError("INVALID_ARGUMENT", f"too many requests in one streaming body (at most {limit})")
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:  # Go's wording, as etcd's gateway answers (api/goerrors.py)
            raise EtcdError("INVALID_ARGUMENT", json_error(text, exc)) from None
        except RecursionError:  # found by fuzzing: [[[[... nested past the interpreter's limit
            raise EtcdError("INVALID_ARGUMENT", "invalid JSON in request body: nested too deeply") from None
        try:
            bad_base64 = check_bytes_fields(value, message_type.DESCRIPTOR)
        except RecursionError:
            raise EtcdError("INVALID_ARGUMENT", "invalid JSON in request body: nested too deeply") from None
        if bad_base64:
            raise EtcdError("INVALID_ARGUMENT", bad_base64)
        message = message_type()
        try:
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
            raise EtcdError("INVALID_ARGUMENT", f"invalid request: {exc}") from None
        out.append(message)
    return out or [message_type()]


class Gateway:
    def __init__(self, server: Any, gate: AuthGate, metrics: Any | None = None) -> None:
        self.server = server
        self.gate = gate
        self.metrics = metrics

    def _observer(self, rpc: Rpc, start: float) -> Callable[[str], None]:
        if self.metrics is not None:
            self.metrics.started(rpc.method, grpc_type=rpc.kind.grpc_type, service=rpc.service)

        def observe(code: str) -> None:
            if self.metrics is not None:
                self.metrics.observe(rpc.method, code, time.monotonic() - start, grpc_type=rpc.kind.grpc_type,
                                     service=rpc.service)
        return observe

    async def call(self, rpc: Rpc, body: bytes, identity: Identity, token: str) -> Reply | StreamReply:
        """Answer one request; never raises for a request's own failure (that is an error body)."""
        start = time.monotonic()
        observe = self._observer(rpc, start)
        client_stream = rpc.kind is Kind.BIDI_STREAM
        called = False  # the body was read: from here on a stream fails in the stream form
        try:
            requests = decode_all(body, rpc.request, MAX_STREAM_OBJECTS if client_stream else 1,
                                  None if client_stream else max(MAX_UNARY_MARKS, 24 * self.server.max_txn_ops))
            called = True
            caller = self.gate.caller_for(identity, token)
            fn = getattr(self.server, rpc.handler)
            if rpc.kind.streaming:
                # As on the gRPC path: client streams (watch, keepalive) are authorised when
                # opened and then per message by their session; server streams with their request.
                self.gate.authorize(caller, rpc.path, None if client_stream else requests[0])
                session = await fn(None if client_stream else requests[0], caller)
                return StreamReply(session, rpc, observe, requests if client_stream else None)
            request = requests[0]
            if rpc.entry:
                request = self.server.prepare(rpc.entry, request.SerializeToString(), caller)
            self.gate.authorize(caller, rpc.path, request.body if rpc.entry else request)
            if rpc.kind is Kind.HOT:
                response = await _run_cb(fn, request, caller)
            else:
                response = await fn(request, caller)
            self.server.check_response_size(response.ByteSize())  # --max-response-bytes
        except trio.Cancelled:
            observe("CANCELLED")
            raise
        except Exception as exc:
            _number, name, message = status_of(exc, rpc.method)
            if not isinstance(exc, EtcdError):
                log.exception("gateway %s failed", rpc.method)
            observe(name)
            if rpc.kind.streaming and called:
                # grpc-gateway: a body it cannot decode is an HTTPError (the unary form); a
                # stream the server refuses fails on its first Recv (the stream form).
                return Reply(HTTP_STATUS[code_number(name)], stream_error(name, message))
            return Reply(*error_body(name, message))
        observe("OK")
        return Reply(200, encode(response))


async def _run_cb(fn: Callable[..., None], request: Any, caller: Caller) -> Any:
    """Await a callback-style server method (the gRPC hot path's shape) from a trio task."""
    done = trio.Event()
    result: list[Any] = [None, None]

    def reply(response: Any, error: BaseException | None) -> None:
        result[0], result[1] = response, error
        done.set()

    fn(request, caller, reply)
    await done.wait()
    if result[1] is not None:
        raise result[1]
    return result[0]
