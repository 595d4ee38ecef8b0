"""The thin trio pump around one :class:`GrpcConnection`: socket bytes in, frames out.

Per connection three tasks: the reader (receive, feed the sans-IO connection, hand its events
to the dispatcher), the writer (one ``send_all`` per scheduler turn with everything the
connection queued meanwhile) and a deadline timer. Replies the node loop completes are written
by the node loop itself at the end of its turn, one write per connection, when the stream can
write without waiting (``server/replybatch.py``, ``TLSStream.send_nowait``); the writer sends
them only when the socket would block. Call handlers that need a task (streams, unary calls
that wait) run in this connection's nursery, so losing the connection cancels them.

:class:`Call` is the dispatcher's handle on one RPC: ``reply``/``fail``/``finish`` end it,
``send``/``receive`` move stream messages with back-pressure both ways.
"""

from __future__ import annotations

import heapq
import logging
import math
import ssl
from collections import deque
from typing import Any, Awaitable, Callable, Protocol

import trio
from h2.errors import ErrorCodes

from securekv.api.identity import Identity
from securekv.api.status import NAMES
from securekv.server.grpcconn import (
    DEADLINE_EXCEEDED,
    CallCancelled,
    CallHalfClosed,
    CallStarted,
    ConnectionEnded,
    GrpcConnection,
    GrpcSettings,
    MessageReceived,
)
from securekv.server.replybatch import ReplyBatch

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
INBOX_HIGH = 16  # a client stream's unread messages before its window is held back
INBOX_LOW = 4
BACKLOG_LIMIT = 16 << 20  # outbound bytes per connection before the reader stops reading
# Events of one read handled before the reader yields to the other tasks (Raft, other clients).
# One 64 KiB read can hold ~2,300 tiny HEADERS+RST_STREAM pairs ("rapid reset"), each ~300 us of
# call setup and teardown: 0.7 s in one go stalled heartbeats and every other client (found
# probing issue 12). In slices of this many, a flood costs CPU in proportion but never a stall.
EVENTS_PER_TURN = 64
FEED_SIZE = 8192  # bytes of one read handed to h2 at a time (its parsing is pure Python)
REFUSED_STREAM = ErrorCodes.REFUSED_STREAM
# How long control frames (PING/SETTINGS acks, window updates) may wait to leave with the answer
# of a call read together with them. grpc-go clients send a PING with every answer they
# receive (BDP estimation), so on a one-request-at-a-time connection every call came with a
# PING: answering it at once cost a TLS record, a socket write and a wake-up of the client per
# call. A few milliseconds is nothing to keepalive (seconds) or window estimation.
CONTROL_DELAY = 0.005


class CallEnded(Exception):
    """Raised by ``Call.send`` once the call is over (cancelled, expired or answered)."""


class Dispatcher(Protocol):
    """What the pump needs from the API side (``securekv.api.dispatch.Dispatcher``)."""

    def started(self, call: "Call") -> None: ...
    def message(self, call: "Call", payload: bytes) -> None: ...
    def half_closed(self, call: "Call") -> None: ...


class Call:
    """One RPC on one connection."""

    __slots__ = ("pump", "sid", "path", "metadata", "deadline", "over", "expired", "scope", "route",
                 "caller", "key", "started_at", "on_over", "got_message", "inbox", "inbox_end", "_inbox_event",
                 "_paused", "_writable")

    def __init__(self, pump: "GrpcPump", sid: int, path: str, metadata: tuple[tuple[str, str], ...],
                 deadline: float) -> None:
        self.pump = pump
        self.sid = sid
        self.path = path
        self.metadata = metadata
        self.deadline = deadline
        self.over = False
        self.expired = False
        self.scope: trio.CancelScope | None = None  # set for calls that run in a task
        self.route: Any = None  # set by the dispatcher
        self.caller: Any = None
        self.key: str | None = None  # the identity this call counts against, once counted
        self.started_at = 0.0
        self.on_over: Callable[["Call", str], None] | None = None
        self.got_message = False
        self.inbox: deque[bytes] | None = None  # client-streaming input, when opened
        self.inbox_end = False
        self._inbox_event: trio.Event | None = None
        self._paused = False
        self._writable: trio.Event | None = None

    @property
    def identity(self) -> Identity:
        return self.pump.identity

    # -- ending the call ---------------------------------------------------------------------

    def reply(self, payload: bytes) -> None:
        """The whole answer of a unary call (status OK)."""
        if self.over:
            return
        pump = self.pump
        pump.conn.send_unary(self.sid, payload)
        pump.kick()
        self._end("OK")

    def fail(self, code: int, message: str) -> None:
        if self.over:
            return
        pump = self.pump
        pump.conn.send_status(self.sid, code, message)
        pump.kick()
        self._end(NAMES.get(code, "UNKNOWN"))

    def finish(self) -> None:
        """End a stream with status OK (after its messages)."""
        self.fail(0, "")

    def cancelled(self) -> None:
        """The transport ended the call (RST_STREAM, protocol error, connection loss)."""
        if self.over:
            return
        if self.scope is not None:
            self.scope.cancel()
        self._end("CANCELLED")

    def expire(self) -> None:
        """The grpc-timeout passed: a task is cancelled and answers; a callback call is
        answered here (its late reply is dropped)."""
        if self.over:
            return
        self.expired = True
        if self.scope is not None:
            self.scope.cancel()
        else:
            self.fail(DEADLINE_EXCEEDED, "context deadline exceeded")

    def _end(self, code: str) -> None:
        self.over = True
        pump = self.pump
        pump.calls.pop(self.sid, None)
        if pump._closing:
            pump.call_ended()
        if self._writable is not None:
            self._writable.set()
        if self._inbox_event is not None:
            self._inbox_event.set()
        if self.on_over is not None:
            self.on_over(self, code)

    # -- streams -----------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.pump.nursery.start_soon(fn, *args)

    async def send(self, payload: bytes) -> None:
        """One message of a streaming answer; waits while the client's window is closed."""
        if self.over:
            raise CallEnded()
        pump = self.pump
        pending = pump.conn.send_message(self.sid, payload)
        pump.kick()
        high = pump.conn.settings.pending_high
        while pending > high:
            self._writable = trio.Event()
            pump.send_waiters.add(self)
            try:
                await self._writable.wait()
            finally:
                pump.send_waiters.discard(self)
            if self.over:
                raise CallEnded()
            pending = pump.conn.pending_bytes(self.sid)

    def open_inbox(self) -> None:
        self.inbox = deque()

    def push(self, payload: bytes, end: bool) -> None:
        inbox = self.inbox
        assert inbox is not None
        inbox.append(payload)
        if end:
            self.inbox_end = True
        if self._inbox_event is not None:
            self._inbox_event.set()
        if len(inbox) >= INBOX_HIGH and not self._paused:
            self._paused = True
            self.pump.conn.pause(self.sid)

    def push_end(self) -> None:
        self.inbox_end = True
        if self._inbox_event is not None:
            self._inbox_event.set()

    async def receive(self) -> bytes | None:
        """The next request message of a client stream; None once the client half-closed."""
        inbox = self.inbox
        assert inbox is not None
        while not inbox:
            if self.inbox_end or self.over:
                return None
            self._inbox_event = trio.Event()
            await self._inbox_event.wait()
        payload = inbox.popleft()
        if self._paused and len(inbox) <= INBOX_LOW:
            self._paused = False
            self.pump.conn.resume(self.sid)
            self.pump.kick()
        return payload

    def wake_writable(self) -> None:
        if self._writable is not None:
            self._writable.set()


class GrpcPump:
    def __init__(self, stream: trio.abc.Stream, identity: Identity, dispatcher: Dispatcher,
                 settings: GrpcSettings | None = None, preface_timeout: float = 10.0,
                 keepalive: tuple[float, float] = (2 * 3600.0, 20.0),
                 on_bytes: Callable[[int, int], None] | None = None,
                 reply_batch: ReplyBatch | None = None) -> None:
        self.stream = stream
        self.identity = identity
        self.dispatcher = dispatcher
        self.conn = GrpcConnection(settings)
        self.calls: dict[int, Call] = {}
        self.send_waiters: set[Call] = set()  # streaming senders waiting for the client's window
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set in run()
        self._wake = trio.Event()
        self._room = trio.Event()  # set when the outbound backlog shrank
        self._heap: list[tuple[float, int, Call | None]] = []  # None: flush deferred control frames
        self._control_at: float | None = None
        self._seq = 0
        self._timer_scope: trio.CancelScope | None = None
        self._in_flight = 0
        self._closing = False
        self._finishing = False
        self._written = trio.Event()
        self._reader_scope = trio.CancelScope()
        self._preface_timeout = preface_timeout
        # etcd's --grpc-keepalive-interval / --grpc-keepalive-timeout (0 disables).
        self._keepalive = keepalive
        self._last_read = trio.current_time()
        # (received, sent) byte counts of this connection, as they happen (the server's metrics).
        self._on_bytes = on_bytes
        self._batch = reply_batch
        self._batched = False  # listed in the node loop's reply batch for the end of its turn
        self._send_nowait: Callable[[bytes], bool] | None = getattr(stream, "send_nowait", None)
        self._writing = False  # the writer task is inside send_all
        self._unflushed = False  # the stream holds bytes send_nowait could not write yet

    def kick(self) -> None:
        """Something was queued: sent once, with whatever else this turn adds (by the node loop
        at the end of its turn when it is the caller, else by the writer task)."""
        if self._batched:
            return
        batch = self._batch
        if batch is not None and batch.defer(self):
            self._batched = True
            return
        self._wake.set()

    def flush_now(self) -> None:
        """What this connection queued leaves now, from the calling task (the node loop at the end
        of its turn, the reader after a read that made only control frames, the timer), if the
        socket takes it without waiting; otherwise the writer task sends it."""
        self._batched = False
        send_nowait = self._send_nowait
        if send_nowait is None or self._writing or self._unflushed or self._finishing:
            self._wake.set()
            return
        data = self.conn.data_to_send()
        if not data:
            return
        try:
            done = send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, ssl.SSLError, OSError):
            self._reader_scope.cancel()  # the peer is gone: the writer finds out on its next send
            self._wake.set()
            return
        if self._on_bytes is not None:
            self._on_bytes(0, len(data))
        if not done:
            self._unflushed = True
            self._in_flight = len(data)  # at most this much is still in the stream
            self._wake.set()

    async def run(self) -> None:
        self.conn.initiate()
        self.kick()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._writer)
                nursery.start_soon(self._timer)
                if self._keepalive[0] > 0 and self._keepalive[1] > 0:
                    nursery.start_soon(self._pinger)
                try:
                    with self._reader_scope:
                        await self._reader()
                finally:
                    self._end_calls()
                    # Let the writer send what is queued (a GOAWAY, last statuses); never wait long.
                    self._finishing = True
                    self.kick()
                    with trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0):
                        await self._written.wait()
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.debug("gRPC connection %s ended: %s", self.identity.remote, exc)

    def drain(self) -> None:
        """Graceful stop: GOAWAY; calls already started finish; the pump ends when idle."""
        self._closing = True
        self.conn.drain()
        self.kick()
        if not self.calls:
            self._reader_scope.cancel()

    def call_ended(self) -> None:
        if self._closing and not self.calls:
            self._reader_scope.cancel()

    # -- tasks -------------------------------------------------------------------------------

    async def _reader(self) -> None:
        conn = self.conn
        receive = self.stream.receive_some
        dispatcher = self.dispatcher
        calls = self.calls
        preface_deadline = trio.current_time() + self._preface_timeout
        while not conn.closed:
            if self._closing and not calls and conn.idle:
                return
            while self._backlog() > BACKLOG_LIMIT:
                self._room = trio.Event()
                await self._room.wait()
            try:
                if conn.client_ready:
                    data = await receive(RECEIVE_SIZE)
                else:
                    # A client must send its preface and SETTINGS promptly (no idle TLS
                    # connections that never speak HTTP/2).
                    data = b""
                    with trio.move_on_at(preface_deadline):
                        data = await receive(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                return
            if not data:
                return
            if self._on_bytes is not None:
                self._on_bytes(len(data), 0)
            now = self._last_read = trio.current_time()
            answering = False  # a call read here waits for its answer (which kicks the writer)
            for n, ev in enumerate(await self._feed(data, now), 1):
                if n % EVENTS_PER_TURN == 0:
                    self.kick()  # what this slice answered leaves while others run
                    await trio.sleep(0)
                    if conn.closed:
                        break
                t = type(ev)
                if t is MessageReceived:
                    call = calls.get(ev.stream_id)
                    if call is None:
                        continue
                    if call.inbox is not None:
                        call.push(ev.payload, ev.end_stream)
                    elif not call.got_message:
                        call.got_message = True
                        dispatcher.message(call, ev.payload)
                        answering = answering or not call.over
                elif t is CallStarted:
                    if conn.pending_total > BACKLOG_LIMIT:
                        # The client leaves answers unread: take no new calls until it reads.
                        conn.reset(ev.stream_id, REFUSED_STREAM)
                        continue
                    deadline = math.inf if ev.timeout is None else now + ev.timeout
                    call = Call(self, ev.stream_id, ev.path, ev.metadata, deadline)
                    calls[ev.stream_id] = call
                    if ev.timeout is not None:
                        self._add_deadline(call)
                    dispatcher.started(call)
                elif t is CallHalfClosed:
                    call = calls.get(ev.stream_id)
                    if call is not None:
                        if call.inbox is not None:
                            call.push_end()
                        elif not call.got_message:
                            dispatcher.half_closed(call)
                elif t is CallCancelled:
                    call = calls.get(ev.stream_id)
                    if call is not None:
                        call.cancelled()
                elif t is ConnectionEnded:
                    log.debug("gRPC connection %s: %s", self.identity.remote, ev.reason)
            if self.send_waiters:
                # WINDOW_UPDATEs may have let queued stream data out: wake the senders below
                # the mark again.
                high = conn.settings.pending_high
                for call in list(self.send_waiters):
                    if conn.pending_bytes(call.sid) <= high:
                        call.wake_writable()
            if conn.unsent:
                # Only when the input made output (PING/SETTINGS acks, window updates, refusals):
                # a call's answer kicks the writer itself. An empty wake-up per read was a task
                # step per request for nothing. Output read together with a call that is being
                # answered leaves with that answer (within CONTROL_DELAY). Written from here
                # when the socket takes it at once (no writer wake-up for a PING ack).
                if answering:
                    self._defer_control(now)
                else:
                    self.flush_now()

    async def _feed(self, data: bytes, now: float) -> list[Any]:
        """``conn.receive_data`` in slices of FEED_SIZE bytes with a checkpoint between them:
        parsing a whole 64 KiB read of tiny frames takes h2 ~0.1 s in one go."""
        if len(data) <= FEED_SIZE:
            return self.conn.receive_data(data, now)
        events: list[Any] = []
        for start in range(0, len(data), FEED_SIZE):
            if start:
                await trio.sleep(0)
            events.extend(self.conn.receive_data(data[start:start + FEED_SIZE], now))
        return events

    async def _writer(self) -> None:
        conn = self.conn
        send = self.stream.send_all
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                data = conn.data_to_send()
                if data or self._unflushed:
                    self._in_flight += len(data)
                    self._writing = True
                    await send(data)  # after what send_nowait left in the stream, if anything
                    self._writing = False
                    self._unflushed = False
                    self._in_flight = 0
                    if self._on_bytes is not None and data:
                        self._on_bytes(0, len(data))
                    self._room.set()
                if self._finishing and not conn.unsent:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            # The peer is gone: stop reading too.
            self._in_flight = 0
            self._room.set()
            self._reader_scope.cancel()
        finally:
            self._written.set()

    async def _pinger(self) -> None:
        """grpc-go's server keepalive: after ``interval`` without a byte from the client, PING;
        no answer (or anything else) within ``timeout``: the client is gone, close."""
        interval, timeout = self._keepalive
        while True:
            await trio.sleep_until(self._last_read + interval)
            if trio.current_time() - self._last_read < interval:
                continue
            sent = trio.current_time()
            self.conn.ping()
            self.kick()
            await trio.sleep(timeout)
            if self._last_read < sent:
                log.info("gRPC client %s did not answer a keepalive ping within %gs: closing",
                         self.identity.remote, timeout)
                self._reader_scope.cancel()
                return

    async def _timer(self) -> None:
        heap = self._heap
        while True:
            deadline = heap[0][0] if heap else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                call = heapq.heappop(heap)[2]
                if call is None:
                    self._control_at = None
                    if self.conn.unsent:
                        self.flush_now()
                elif not call.over:
                    call.expire()

    # -- helpers -----------------------------------------------------------------------------

    def _add_deadline(self, call: Call) -> None:
        self._at(call.deadline, call)

    def _defer_control(self, now: float) -> None:
        if self._control_at is None:
            self._control_at = now + CONTROL_DELAY
            self._at(self._control_at, None)

    def _at(self, when: float, call: Call | None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, call))
        scope = self._timer_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    def _backlog(self) -> int:
        """Bytes written to the connection and not yet accepted by the socket."""
        return self.conn.unsent + self._in_flight

    def _end_calls(self) -> None:
        for call in list(self.calls.values()):
            call.cancelled()
        self.calls.clear()


__all__ = ["GrpcPump", "Call", "CallEnded", "Dispatcher"]
