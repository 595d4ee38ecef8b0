"""The one module that knows both grpc (sync server threads) and trio (the node).

Shape chosen (docs/server.md): grpcio's sync ``grpc.server(ThreadPoolExecutor)``; every unary
handler crosses into trio with ``trio.from_thread.run``; streams cross through a session object
living in trio whose responses the handler thread pulls one at a time (bounded by the session's
own channel), while a trio task reads the request iterator through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Awaitable, Callable, Iterator, Protocol

import grpc
import trio

from securekv.api.auth_gate import ERR_NOT_FRONT_DOOR, AuthGate, Caller, token_from
from securekv.api.status import status_code
from securekv.rpctypes import public_code
from securekv.rpctypes import EtcdError
from securekv.server.frontdoor import Identity

log = logging.getLogger(__name__)


class Session(Protocol):
    """A stream's trio-side state (watch stream, keepalive stream, snapshot, observe)."""

    async def handle(self, request: Any) -> None: ...
    async def half_close(self) -> None: ...
    async def next(self) -> Any | None: ...  # None = the stream is over
    def close(self) -> None: ...  # sync, trio thread: the client went away


class RpcObserver(Protocol):
    def started(self, method: str) -> None: ...

    def observe(self, method: str, code: str, seconds: float) -> None: ...


class Bridge:
    def __init__(self, token: trio.lowlevel.TrioToken, gate: AuthGate, metrics: RpcObserver | None = None) -> None:
        self.token = token
        self.gate = gate
        self.metrics = metrics
        self.stopping = False
        # Set by the server: False while this member knows no leader (etcd's `hasleader`
        # metadata then fails the call with "etcdserver: no leader").
        self.has_leader: Callable[[], bool] | None = None

    def connection(self, context: grpc.ServicerContext) -> tuple[Identity, str]:
        """The front door's identity of this call's connection and its token (grpc thread).

        Identifying the user and authorising the call happen in the trio thread, which owns
        the auth state (``_admit``)."""
        metadata = context.invocation_metadata()
        if self.has_leader is not None and any(k == "hasleader" and v == "true" for k, v in metadata or ()):
            if not self.has_leader():
                from securekv.rpctypes import ERR_NO_LEADER, err

                raise err(ERR_NO_LEADER)
        identity = self.gate.registry.lookup_peer(context.peer())
        if identity is None:
            raise EtcdError(ERR_NOT_FRONT_DOOR.code, ERR_NOT_FRONT_DOOR.message)
        return identity, token_from(metadata)

    @contextlib.contextmanager
    def _outcome(self, context: grpc.ServicerContext, method: str) -> Iterator[None]:
        """Map what the call raised to etcd's gRPC status and record the call's metrics."""
        start = time.monotonic()
        code = "OK"
        if self.metrics is not None:
            self.metrics.started(method)
        try:
            yield
        except EtcdError as exc:
            code = public_code(method, exc.code, exc.message)
            context.abort(status_code(code), exc.message)
        except trio.RunFinishedError:
            code = "UNAVAILABLE"
            context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
        except Exception as exc:  # a bug or an unsupported request: etcd sends these as Unknown
            code = "UNKNOWN"
            log.exception("%s failed", method)
            context.abort(grpc.StatusCode.UNKNOWN, str(exc))
        finally:
            if self.metrics is not None:
                self.metrics.observe(method.rsplit("/", 1)[-1], code, time.monotonic() - start)

    def unary(
        self,
        context: grpc.ServicerContext,
        method: str,
        fn: Callable[[Any, Caller], Awaitable[Any]],
        request: Any,
    ) -> Any:
        with self._outcome(context, method):
            identity, token = self.connection(context)
            scopes: list[trio.CancelScope] = []

            async def run() -> Any:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    caller = self.gate.admit(identity, token, method, request)
                    return await fn(request, caller)
                raise EtcdError("CANCELLED", "context canceled")

            def on_done() -> None:  # the client went away: stop waiting (Lock, Campaign)
                try:
                    self.token.run_sync_soon(lambda: [s.cancel() for s in scopes])
                except trio.RunFinishedError:
                    pass

            context.add_callback(on_done)
            return trio.from_thread.run(run, trio_token=self.token)

    def unary_cb(
        self,
        context: grpc.ServicerContext,
        method: str,
        fn: Callable[[Any, Caller, Callable[[Any, BaseException | None], None]], None],
        request: Any,
    ) -> Any:
        """Hot path: ``fn(request, caller, reply)`` runs as a plain callback in the trio thread
        (no task is spawned) and calls ``reply(response, error)`` once, now or later."""
        with self._outcome(context, method):
            identity, token = self.connection(context)
            waiter = _ThreadWaiter()

            def run() -> None:
                try:
                    fn(request, self.gate.admit(identity, token, method, request), waiter.reply)
                except BaseException as exc:  # validation errors etc. come back to the thread
                    waiter.reply(None, exc)

            self.token.run_sync_soon(run)
            response, error = waiter.wait(lambda: self.stopping)
            if error is not None:
                raise error
            return response

    def stream(
        self,
        context: grpc.ServicerContext,
        method: str,
        open_session: Callable[[Any, Caller], Awaitable[Session]],
        request_or_iterator: Any,
        bidi: bool,
    ) -> Iterator[Any]:
        """Generator for grpc: yields the session's responses until it ends or the client leaves."""
        with self._outcome(context, method):
            identity, token = self.connection(context)
            first = None if bidi else request_or_iterator

            async def admit_and_open() -> Session:
                return await open_session(first, self.gate.admit(identity, token, method, first))

            session = trio.from_thread.run(admit_and_open, trio_token=self.token)
            closed = False

            def on_done() -> None:
                nonlocal closed
                if closed:
                    return
                closed = True
                try:
                    trio.from_thread.run_sync(session.close, trio_token=self.token)
                except trio.RunFinishedError:
                    pass

            context.add_callback(on_done)
            if bidi:
                trio.from_thread.run_sync(_start_reader, session, request_or_iterator, trio_token=self.token)
            while True:
                response = trio.from_thread.run(session.next, trio_token=self.token)
                if response is None:
                    break
                yield response


class _ThreadWaiter:
    """One-shot result hand-off from the trio thread to a grpc worker thread (a bare lock)."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value: tuple[Any, BaseException | None] = (None, None)

    def reply(self, response: Any, error: BaseException | None) -> None:
        self._value = (response, error)
        self._lock.release()

    def wait(self, stopping: Callable[[], bool]) -> tuple[Any, BaseException | None]:
        # Poll so a reply lost to shutdown can never pin a grpc thread (and the process) forever.
        while not self._lock.acquire(timeout=1.0):
            if stopping():
                return None, EtcdError("UNAVAILABLE", "etcdserver: server stopped")
        return self._value


# The nursery that owns stream reader tasks; set by the server at start-up.
_reader_nursery: trio.Nursery | None = None
# Readers block a thread each for the life of a stream: keep them off trio's default limiter
# (40 threads), which the node's fsync/sqlite work uses.
_reader_limiter: trio.CapacityLimiter | None = None


def set_reader_nursery(nursery: trio.Nursery | None) -> None:
    global _reader_nursery, _reader_limiter
    _reader_nursery = nursery
    _reader_limiter = trio.CapacityLimiter(100_000)


def _start_reader(session: Session, iterator: Iterator[Any]) -> None:
    assert _reader_nursery is not None, "bridge reader nursery not set"
    _reader_nursery.start_soon(_read_requests, session, iterator)


_END = object()


def _next_or_end(iterator: Iterator[Any]) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _END
    except Exception:  # grpc raises on cancellation / broken stream
        return _END


async def _read_requests(session: Session, iterator: Iterator[Any]) -> None:
    try:
        while True:
            request = await trio.to_thread.run_sync(
                _next_or_end, iterator, abandon_on_cancel=True, limiter=_reader_limiter
            )
            if request is _END:
                await session.half_close()
                return
            await session.handle(request)
    except EtcdError as exc:
        log.debug("stream request rejected: %s", exc)
        session.close()
    except Exception:  # never let one stream's bad request take the server's nursery down
        log.exception("stream request handling failed")
        session.close()
