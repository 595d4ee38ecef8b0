"""The client front door: TLS termination in trio, then gRPC relay or the HTTP handler.

Each client URL is a trio listener. A connection is TLS-handshaken (bounded time, CRL-checked,
client certificate required when configured), then routed by ALPN — ``h2`` relays the bytes to
grpcio on an internal loopback port, ``http/1.1`` goes to the HTTP handler (which the server
prefers when a client offers both: gRPC clients offer ``h2`` only) — or, without ALPN, by the
first bytes (the HTTP/2 preface means gRPC).

Trust boundary: grpcio listens insecurely on 127.0.0.1 at an ephemeral port. Before connecting
to it, the front door binds its outgoing socket and records ``source port -> Identity`` in the
:class:`IdentityRegistry`; the API layer looks the caller up by ``context.peer()`` and refuses
any connection the front door did not register (another local process that finds the port gets
UNAUTHENTICATED on every call).
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Awaitable, Callable

import attrs
import trio

from securekv.server.tls import ReloadingContext, peer_common_name

from securekv.server.etcdlog import rejected_connection  # noqa: E402  (etcd's log line)

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RELAY_CHUNK = 256 * 1024


@attrs.frozen
class Identity:
    """Who is on the other end of a client connection, as far as the transport knows."""

    common_name: str = ""  # CN of the verified client certificate ("" = none)
    remote: str = ""  # client ip:port, for logs
    tls: bool = True


class IdentityRegistry:
    """source port of a front-door→grpc connection -> Identity. Shared by trio and grpc threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_port: dict[int, Identity] = {}

    def register(self, port: int, identity: Identity) -> None:
        with self._lock:
            self._by_port[port] = identity

    def unregister(self, port: int) -> None:
        with self._lock:
            self._by_port.pop(port, None)

    def lookup_peer(self, peer: str) -> Identity | None:
        """``peer`` is grpc's ``context.peer()``, e.g. ``ipv4:127.0.0.1:40000``."""
        if not peer.startswith("ipv4:127.0.0.1:"):
            return None
        try:
            port = int(peer.rsplit(":", 1)[1])
        except ValueError:
            return None
        with self._lock:
            return self._by_port.get(port)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_port)


class PrefixedStream(trio.abc.Stream):
    """A stream that replays already-read bytes before reading from the wrapped stream."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


HttpHandler = Callable[[trio.abc.Stream, Identity], Awaitable[None]]


@attrs.define
class FrontDoorStats:
    accepted: int = 0
    handshake_failures: int = 0
    grpc_connections: int = 0
    http_connections: int = 0
    grpc_bytes_received: int = 0  # etcd_network_client_grpc_received_bytes_total
    grpc_bytes_sent: int = 0


class FrontDoor:
    def __init__(
        self,
        tls: ReloadingContext | None,
        grpc_port: int,
        registry: IdentityRegistry,
        http_handler: HttpHandler,
        handshake_timeout: float,
    ) -> None:
        self.tls = tls
        self.grpc_port = grpc_port
        self.registry = registry
        self.http_handler = http_handler
        self.handshake_timeout = handshake_timeout
        self.stats = FrontDoorStats()

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One client connection. Never raises: a bad client must not take the listener down."""
        try:
            await self._handle(tcp)
        except Exception:
            log.exception("client connection failed unexpectedly")
            await trio.aclose_forcefully(tcp)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        self.stats.accepted += 1
        try:
            remote = "%s:%s" % tcp.socket.getpeername()[:2]
        except OSError:
            remote = "?"
        stream: trio.abc.Stream = tcp
        identity = Identity(remote=remote, tls=False)
        alpn: str | None = None
        try:
            if self.tls is not None:
                ssl_stream = trio.SSLStream(tcp, self.tls.current, server_side=True)
                with trio.move_on_after(self.handshake_timeout) as scope:
                    try:
                        await ssl_stream.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                        self.stats.handshake_failures += 1
                        rejected_connection(log, remote, _reason(exc))
                        await trio.aclose_forcefully(tcp)
                        return
                if scope.cancelled_caught:
                    self.stats.handshake_failures += 1
                    rejected_connection(log, remote, "tls: handshake timed out")
                    await trio.aclose_forcefully(tcp)
                    return
                alpn = ssl_stream.selected_alpn_protocol()
                identity = Identity(common_name=peer_common_name(ssl_stream.getpeercert()), remote=remote)
                stream = ssl_stream
            if alpn == "h2":
                await self._relay_grpc(stream, identity, b"")
                return
            if alpn == "http/1.1":
                self.stats.http_connections += 1
                await self.http_handler(stream, identity)
                return
            # No ALPN: sniff the first bytes for the HTTP/2 prior-knowledge preface.
            head = b""
            with trio.move_on_after(self.handshake_timeout):
                while len(head) < len(H2_PREFACE) and H2_PREFACE.startswith(head):
                    chunk = await stream.receive_some(len(H2_PREFACE) - len(head))
                    if not chunk:
                        break
                    head += chunk
            if not head:
                return
            if head == H2_PREFACE:
                await self._relay_grpc(stream, identity, head)
            else:
                self.stats.http_connections += 1
                await self.http_handler(PrefixedStream(stream, head), identity)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.debug("client connection %s ended: %s", remote, _reason(exc))
        finally:
            await _close(stream)

    def _received(self, n: int) -> None:
        self.stats.grpc_bytes_received += n

    def _sent(self, n: int) -> None:
        self.stats.grpc_bytes_sent += n

    async def _relay_grpc(self, client: trio.abc.Stream, identity: Identity, head: bytes) -> None:
        self.stats.grpc_connections += 1
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        port = 0
        try:
            await sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            self.registry.register(port, identity)
            await sock.connect(("127.0.0.1", self.grpc_port))
            upstream = trio.SocketStream(sock)
            if head:
                await upstream.send_all(head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope, self._received)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope, self._sent)
            await trio.aclose_forcefully(upstream)
        finally:
            sock.close()
            if port:
                self.registry.unregister(port)


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, scope: trio.CancelScope,
                count: Callable[[int], None]) -> None:
    try:
        while True:
            data = await src.receive_some(RELAY_CHUNK)
            if not data:
                break
            count(len(data))
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
        pass
    finally:
        scope.cancel()


async def _close(stream: trio.abc.Stream) -> None:
    """Close with TLS close_notify when the peer is still there; never wait long for it."""
    with trio.move_on_after(1.0) as scope:
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
    if scope.cancelled_caught:
        await trio.aclose_forcefully(stream)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return cause.reason
    return str(cause) or type(cause).__name__
