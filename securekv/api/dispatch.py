"""The gRPC dispatcher: runs each call on the server as its API-table row says.

Shared by all client connections of a member; the transport (``server/grpcpump.py``) hands it
calls. For every call: route by path (unknown -> UNIMPLEMENTED, as grpc-go words it), the
``hasleader`` metadata rule, identity from the connection + metadata and the per-identity cap on
concurrent calls, then -- when the request is there -- decode it once (hot writes: straight into
their log entry), ``AuthGate.authorize(caller, path, request)`` (the row's rule from
``securekv/auth/rules.py``), and run the handler:

- hot calls as plain callbacks in the trio thread (no task per request);
- other unary calls and streams as tasks in the connection's nursery, so a client that resets
  the stream or drops the connection cancels them (a cancelled Lock/Campaign withdraws its key).

Every call passes the gate before its handler runs: unary calls and server streams (Snapshot,
Observe, health Watch) with their request -- a rule may need it (Observe reads its election's
name) -- and client streams (Watch, LeaseKeepAlive) when they open, with ``None``; their
sessions then authorise each message (``AuthGate.authorize_message``).

Every outcome goes through the one error mapper (``api/status.py``) and is counted in the
per-RPC metrics: ``observe(method, code, seconds, service=..., grpc_type=...)``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

import attrs
import trio
from google.protobuf.message import DecodeError

from securekv.api.auth_gate import AuthGate, Caller
from securekv.api.status import status_of
from securekv.api.table import API, Kind, Rpc
from securekv.rpctypes import ERR_NO_LEADER, EtcdError
from securekv.server.grpcpump import Call, CallEnded

log = logging.getLogger(__name__)

INTERNAL, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 13, 2, 4, 8, 12
ERR_TOO_MANY_CALLS = EtcdError("RESOURCE_EXHAUSTED",
                               "securekv: too many concurrent requests for this client identity")


class RpcObserver(Protocol):
    """Per-RPC metrics (``server/metrics.py``, etcd's grpc_server_* names). ``grpc_type`` is
    unary, server_stream, client_stream or bidi_stream; ``service`` the full gRPC service name."""

    def started(self, method: str, grpc_type: str | None = None, service: str | None = None) -> None: ...

    def observe(self, method: str, code: str, seconds: float, grpc_type: str | None = None,
                service: str | None = None) -> None: ...


@attrs.frozen
class Limits:
    """Per-identity bounds (an identity is the caller's user name, or its address without one)."""

    max_calls_per_identity: int = 10_000


@attrs.frozen
class Bound:
    """A table row bound to the server method that answers it."""

    rpc: Rpc
    fn: Callable[..., Any]


class Dispatcher:
    def __init__(self, server: Any, gate: AuthGate, metrics: RpcObserver | None = None,
                 limits: Limits = Limits(), has_leader: Callable[[], bool] | None = None) -> None:
        self.server = server
        self.gate = gate
        self.metrics = metrics
        self.limits = limits
        self.has_leader = has_leader
        self.routes: dict[str, Bound] = {rpc.path: Bound(rpc, getattr(server, rpc.handler)) for rpc in API}
        self.services = {rpc.service for rpc in API}
        self.active: dict[str, int] = {}  # identity key -> calls running

    # -- called by the transport ---------------------------------------------------------------

    def started(self, call: Call) -> None:
        call.started_at = time.monotonic()
        bound = self.routes.get(call.path)
        if bound is None:
            code, message = self._unknown(call.path)
            call.fail(code, message)
            return
        call.route = bound
        call.on_over = self._over  # metrics from here on; ``key`` stays None until counted
        if self.metrics is not None:
            rpc = bound.rpc
            self.metrics.started(rpc.method, grpc_type=rpc.kind.grpc_type, service=rpc.service)
        try:
            if self.has_leader is not None:
                for key, value in call.metadata:
                    if key == "hasleader" and value == "true" and not self.has_leader():
                        raise EtcdError(ERR_NO_LEADER.code, ERR_NO_LEADER.message)
            caller = self.gate.identify(call.identity, call.metadata)
        except EtcdError as exc:
            self._fail(call, exc)
            return
        key = caller.username or call.identity.remote.rpartition(":")[0]
        active = self.active.get(key, 0)
        if active >= self.limits.max_calls_per_identity:
            self._fail(call, ERR_TOO_MANY_CALLS)
            return
        self.active[key] = active + 1
        call.caller = caller
        call.key = key
        if bound.rpc.kind is Kind.BIDI_STREAM:
            try:
                self.gate.authorize(caller, bound.rpc.path, None)
            except EtcdError as exc:
                self._fail(call, exc)
                return
            call.open_inbox()
            call.scope = trio.CancelScope()
            call.spawn(self._run_stream, call, bound, None)

    def message(self, call: Call, payload: bytes) -> None:
        """The request of a unary or server-streaming call (later messages are ignored)."""
        bound: Bound | None = call.route
        if bound is None or call.over:
            return
        call.pump.conn.ignore_input(call.sid)
        rpc = bound.rpc
        caller = call.caller
        try:
            if rpc.entry:
                request = self.server.prepare(rpc.entry, payload, caller)
                subject = request.body
            else:
                request = subject = rpc.request.FromString(payload)
        except DecodeError as exc:
            call.fail(INTERNAL, f"grpc: error unmarshalling request: {exc}")
            return
        except EtcdError as exc:
            self._fail(call, exc)
            return
        try:
            self.gate.authorize(caller, rpc.path, subject)
        except EtcdError as exc:
            self._fail(call, exc)
            return
        kind = rpc.kind
        if kind is Kind.HOT:
            def reply(response: Any, error: BaseException | None) -> None:
                if error is None:
                    payload = response.SerializeToString()
                    try:
                        self.server.check_response_size(len(payload))
                    except EtcdError as exc:
                        self._fail(call, exc)
                        return
                    call.reply(payload)
                else:
                    self._fail(call, error)

            try:
                bound.fn(request, caller, reply)
            except Exception as exc:
                self._fail(call, exc)
            return
        call.scope = trio.CancelScope()
        if kind is Kind.UNARY:
            call.spawn(self._run_unary, call, bound, request)
        else:
            call.spawn(self._run_stream, call, bound, request)

    def half_closed(self, call: Call) -> None:
        """The client finished sending before the request of a unary/server-streaming call
        (grpc-go reads io.EOF and answers Unknown "EOF")."""
        if call.route is not None and not call.over:
            call.fail(UNKNOWN, "EOF")

    # -- running calls -----------------------------------------------------------------------

    async def _run_unary(self, call: Call, bound: Bound, request: Any) -> None:
        assert call.scope is not None
        try:
            with call.scope:
                response = await bound.fn(request, call.caller)
                payload = response.SerializeToString()
                self.server.check_response_size(len(payload))  # --max-response-bytes
                call.reply(payload)
                return
            if call.expired:
                call.fail(DEADLINE_EXCEEDED, "context deadline exceeded")
        except Exception as exc:
            self._fail(call, exc)

    async def _run_stream(self, call: Call, bound: Bound, request: Any) -> None:
        assert call.scope is not None
        session = None
        errors: list[BaseException] = []
        try:
            with call.scope:
                session = await bound.fn(request, call.caller)
                async with trio.open_nursery() as nursery:
                    if call.inbox is not None:
                        nursery.start_soon(self._feed, call, bound.rpc, session, nursery.cancel_scope, errors)
                    try:
                        while True:
                            message = await session.next()
                            if message is None:
                                break
                            await call.send(message.SerializeToString())
                    except Exception as exc:
                        # Kept out of the nursery, which would wrap it in an ExceptionGroup: a
                        # session ending with an EtcdError (a keepalive the gate refuses) must
                        # answer that error's status, and CallEnded must stay CallEnded.
                        errors.append(exc)
                    nursery.cancel_scope.cancel()
                if errors:
                    raise errors[0]
                call.finish()
                return
            if call.expired:
                call.fail(DEADLINE_EXCEEDED, "context deadline exceeded")
        except CallEnded:
            pass
        except Exception as exc:
            self._fail(call, exc)
        finally:
            if session is not None:
                session.close()

    async def _feed(self, call: Call, rpc: Rpc, session: Any, scope: trio.CancelScope,
                    errors: list[BaseException]) -> None:
        """A client stream's requests, in order, to its session."""
        try:
            while True:
                payload = await call.receive()
                if payload is None:
                    await session.half_close()
                    return
                try:
                    request = rpc.request.FromString(payload)
                except DecodeError as exc:
                    raise EtcdError("INTERNAL", f"grpc: failed to unmarshal the received message {exc}") from None
                await session.handle(request)
        except Exception as exc:
            errors.append(exc)
            scope.cancel()

    # -- outcomes ----------------------------------------------------------------------------

    def _fail(self, call: Call, exc: BaseException) -> None:
        number, _name, message = status_of(exc, call.route.rpc.method if call.route is not None else "")
        if not isinstance(exc, EtcdError):
            log.error("%s failed", call.path, exc_info=exc)
        call.fail(number, message)

    def _over(self, call: Call, code: str) -> None:
        key = call.key
        if key is not None:
            left = self.active.get(key, 1) - 1
            if left:
                self.active[key] = left
            else:
                self.active.pop(key, None)
        if self.metrics is not None:
            rpc = call.route.rpc
            self.metrics.observe(rpc.method, code, time.monotonic() - call.started_at, grpc_type=rpc.kind.grpc_type,
                                 service=rpc.service)

    def _unknown(self, path: str) -> tuple[int, str]:
        """grpc-go's answers for a path no service handles."""
        name = path[1:] if path.startswith("/") else path
        service, sep, method = name.rpartition("/")
        if not sep:
            return RESOURCE_EXHAUSTED, f"malformed method name: {path!r}".replace("'", '"')
        if service not in self.services:
            return UNIMPLEMENTED, f"unknown service {service}"
        return UNIMPLEMENTED, f"unknown method {method} for service {service}"


__all__ = ["Dispatcher", "Limits", "RpcObserver", "Caller"]
