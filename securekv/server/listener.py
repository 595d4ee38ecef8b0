"""One client URL: a trio listener that terminates TLS and serves gRPC and HTTP/1.1 itself.

Each connection is TLS-handshaken in bounded time (``server/tlsstream.py``, a lean stream over
``ssl.SSLObject``; client certificate required unless the operator opted out) and admitted by
the one TLS policy (``securekv.tlspolicy.ServerTLS``: a certificate a CRL revokes, leaf or
intermediate, is refused; the connection is registered in ``ServerTLS.live`` so that a reloaded
CRL that revokes it closes it), then routed by ALPN: ``h2`` is gRPC (``server/grpcpump.py`` over
the sans-IO ``server/grpcconn.py``), ``http/1.1`` is the h11 app (``/health``, ``/version``,
``/metrics``, the JSON gateway); without ALPN the first bytes decide (the HTTP/2 preface means
gRPC). There is no relay and no second port: everything runs in the trio thread that owns the
state.

The listener keeps a registry of its live connections with their peer certificate's identity
(:class:`LiveConnections`): the cap on connections per listener and the graceful GOAWAY drain on
shutdown use it; :meth:`LiveConnections.close_serials` closes a certificate's connections by leaf
serial (revocation itself goes through ``ServerTLS.live``, which also matches intermediates).
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
from typing import Awaitable, Callable

import attrs
import trio

from securekv.api.identity import Identity
from securekv.errors import PeerError
from securekv.server.etcdlog import rejected_connection
from securekv.server.tlsstream import TLSStream
from securekv.tlspolicy import ServerTLS, VerifiedPeer

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Connections from one address still in their TLS handshake at once; more from that address are
#: closed before TLS. The listener's cap (--max-connections-per-listener) bounds them all, but a
#: stranger who holds it full of silent handshakes (each up to --tls-handshake-timeout) from
#: one address would lock every client out; this keeps the rest for other addresses.
MAX_PENDING_PER_HOST = 64
#: Connections without a client certificate (a member that signs joins lets them finish the
#: handshake, for the join endpoints only) one address may hold at once: joins are rare, and
#: these connections are unauthenticated.
ANONYMOUS_PER_HOST = 8

HttpHandler = Callable[[trio.abc.Stream, Identity], Awaitable[None]]
GrpcHandler = Callable[[trio.abc.Stream, Identity, "LiveConnection"], Awaitable[None]]


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


@attrs.define(eq=False)
class LiveConnection:
    """A connection being served: who it is, how to end it, how to drain it gracefully."""

    id: int
    identity: Identity
    scope: trio.CancelScope
    protocol: str = ""  # "grpc" or "http" once routed
    drain: Callable[[], None] | None = None  # set by the gRPC pump: GOAWAY, finish running calls
    done: trio.Event = attrs.field(factory=trio.Event)


class LiveConnections:
    """The registry of one listener's connections."""

    def __init__(self) -> None:
        self._by_id: dict[int, LiveConnection] = {}
        self._ids = itertools.count(1)

    def add(self, identity: Identity, scope: trio.CancelScope) -> LiveConnection:
        conn = LiveConnection(next(self._ids), identity, scope)
        self._by_id[conn.id] = conn
        return conn

    def remove(self, conn: LiveConnection) -> None:
        self._by_id.pop(conn.id, None)
        conn.done.set()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
        return iter(list(self._by_id.values()))

    def close_serials(self, serials: set[str]) -> int:
        """Close every connection whose client certificate has one of these serial numbers
        (upper-case hex, as ``ssl`` reports them). Returns how many were closed."""
        closed = 0
        for conn in list(self._by_id.values()):
            if conn.identity.serial and conn.identity.serial.upper() in serials:
                conn.scope.cancel()
                closed += 1
        return closed

    async def drain(self, grace: float) -> None:
        """GOAWAY to every gRPC connection, then wait up to ``grace`` seconds for their calls
        to finish; whatever is still open then is closed."""
        conns = list(self._by_id.values())
        for conn in conns:
            if conn.drain is not None:
                conn.drain()
        with trio.move_on_after(grace):
            for conn in conns:
                if conn.drain is not None:
                    await conn.done.wait()
        for conn in list(self._by_id.values()):
            conn.scope.cancel()


@attrs.define
class ListenerStats:
    accepted: int = 0
    refused: int = 0  # over the connection cap
    pending_refused: int = 0  # over MAX_PENDING_PER_HOST handshakes from one address
    identity_refused: int = 0  # over --max-connections-per-identity
    handshake_failures: int = 0
    grpc_connections: int = 0
    http_connections: int = 0


class ClientListener:
    def __init__(
        self,
        tls: ServerTLS | None,
        http_handler: HttpHandler,
        grpc_handler: GrpcHandler | None,
        handshake_timeout: float,
        max_connections: int,
        join_handler: HttpHandler | None = None,
        max_pending_per_host: int = MAX_PENDING_PER_HOST,
        max_per_identity: int = 0,
    ) -> None:
        self.tls = tls
        # HTTP/1.1 for a TLS connection without a client certificate when the policy lets one
        # finish its handshake (a member with a signing CA): the join endpoints and nothing else.
        self.join_handler = join_handler
        self.http_handler = http_handler
        self.grpc_handler = grpc_handler
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.max_pending_per_host = max_pending_per_host
        self._pending: dict[str, int] = {}  # remote host -> connections still in the TLS handshake
        # --max-connections-per-identity (0 = none): certificate CN, or the address without one.
        self.max_per_identity = max_per_identity
        self._per_identity: dict[str, int] = {}
        self.live = LiveConnections()
        self.stats = ListenerStats()
        self._refusals_logged = 0

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One client connection. Never raises: a bad client must not take the listener down."""
        self.stats.accepted += 1
        if len(self.live) >= self.max_connections:
            self.stats.refused += 1
            if self._refusals_logged < 10 or self.stats.refused % 1000 == 0:
                self._refusals_logged += 1
                log.warning("connection refused: this listener already serves %d connections "
                            "(--max-connections-per-listener); %d refused so far", len(self.live), self.stats.refused)
            await trio.aclose_forcefully(tcp)
            return
        try:
            remote = "%s:%s" % tcp.socket.getpeername()[:2]
        except OSError:
            remote = "?"
        if self.tls is not None and self._pending.get(remote.rsplit(":", 1)[0], 0) >= self.max_pending_per_host:
            self.stats.pending_refused += 1
            if self._refusals_logged < 10 or self.stats.pending_refused % 1000 == 0:
                self._refusals_logged += 1
                log.warning("connection from %s refused: %d connections from this address are still in their TLS "
                            "handshake; %d refused so far", remote, self.max_pending_per_host,
                            self.stats.pending_refused)
            await trio.aclose_forcefully(tcp)
            return
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            pass
        with trio.CancelScope() as scope:
            live = self.live.add(Identity(remote=remote, tls=False), scope)
            try:
                await self._handle(tcp, remote, live)
            except Exception:
                log.exception("client connection failed unexpectedly")
            finally:
                self.live.remove(live)
        if scope.cancelled_caught:
            await trio.aclose_forcefully(tcp)

    async def _handle(self, tcp: trio.SocketStream, remote: str, live: LiveConnection) -> None:
        stream: trio.abc.Stream = tcp
        identity = live.identity
        alpn: str | None = None
        token: int | None = None
        counted: str | None = None  # the identity this connection counts against
        try:
            if self.tls is not None:
                ssl_stream = TLSStream(tcp, self.tls.current)
                host = remote.rsplit(":", 1)[0]
                self._pending[host] = self._pending.get(host, 0) + 1
                try:
                    with trio.move_on_after(self.handshake_timeout) as scope:
                        try:
                            await ssl_stream.do_handshake()
                        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                            self.stats.handshake_failures += 1
                            rejected_connection(log, remote, _reason(exc))  # etcd's log line
                            await trio.aclose_forcefully(tcp)
                            return
                finally:
                    left = self._pending[host] - 1
                    if left:
                        self._pending[host] = left
                    else:
                        del self._pending[host]
                if scope.cancelled_caught:
                    self.stats.handshake_failures += 1
                    rejected_connection(log, remote, "tls: handshake timed out")
                    await trio.aclose_forcefully(tcp)
                    return
                stream = ssl_stream
                try:
                    peer = self.tls.admit(ssl_stream, remote)
                except PeerError as exc:  # e.g. a certificate a CRL revokes
                    self.stats.handshake_failures += 1
                    rejected_connection(log, remote, f"tls: {exc}")
                    return
                alpn = ssl_stream.selected_alpn_protocol()
                identity = live.identity = _identity(peer, remote)
                anonymous = peer.leaf is None and self.tls.files.client_cert_auth
                host = remote.rsplit(":", 1)[0]
                if anonymous:
                    owner, limit, what = f"anonymous@{host}", ANONYMOUS_PER_HOST, "join connections per address"
                else:
                    owner, limit, what = identity.common_name or host, self.max_per_identity, \
                        "--max-connections-per-identity"
                if limit and self._per_identity.get(owner, 0) >= limit:
                    self.stats.identity_refused += 1
                    rejected_connection(log, remote, f"too many connections of {owner!r} ({what} {limit})")
                    return
                self._per_identity[owner] = self._per_identity.get(owner, 0) + 1
                counted = owner
                if anonymous:
                    await self._anonymous(stream, alpn, remote, identity, live)
                    return
                # A reloaded CRL that revokes this certificate (or an issuer) ends the connection.
                token = self.tls.live.register(peer, lambda reason: live.scope.cancel())
            if alpn == "h2":
                await self._grpc(stream, identity, live)
                return
            if alpn == "http/1.1":
                await self._http(stream, identity, live)
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
                await self._grpc(PrefixedStream(stream, head), identity, live)
            else:
                await self._http(PrefixedStream(stream, head), identity, live)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.debug("client connection %s ended: %s", remote, _reason(exc))
        finally:
            if token is not None and self.tls is not None:
                self.tls.live.unregister(token)
            if counted is not None:
                left = self._per_identity[counted] - 1
                if left:
                    self._per_identity[counted] = left
                else:
                    del self._per_identity[counted]
            await _close(stream)

    async def _anonymous(self, stream: trio.abc.Stream, alpn: str | None, remote: str, identity: Identity,
                         live: LiveConnection) -> None:
        """A TLS client without a certificate on a port that requires one: only possible when the
        member signs join requests (CERT_OPTIONAL). It gets the join endpoints over HTTP/1.1 and
        nothing else: no gRPC, no /health, no KV gateway (the join handler refuses other paths)."""
        if self.join_handler is None or alpn == "h2":
            self.stats.handshake_failures += 1
            rejected_connection(log, remote, "tls: client didn't provide a certificate")
            return
        if alpn is None:
            head = b""
            with trio.move_on_after(self.handshake_timeout):
                head = await stream.receive_some(len(H2_PREFACE))
            if not head or H2_PREFACE.startswith(head[:len(H2_PREFACE)]):
                rejected_connection(log, remote, "tls: client didn't provide a certificate")
                return
            stream = PrefixedStream(stream, head)
        self.stats.http_connections += 1
        live.protocol = "http"
        await self.join_handler(stream, identity)

    async def _grpc(self, stream: trio.abc.Stream, identity: Identity, live: LiveConnection) -> None:
        if self.grpc_handler is None:  # the metrics listener speaks HTTP/1.1 only
            return
        self.stats.grpc_connections += 1
        live.protocol = "grpc"
        await self.grpc_handler(stream, identity, live)

    async def _http(self, stream: trio.abc.Stream, identity: Identity, live: LiveConnection) -> None:
        self.stats.http_connections += 1
        live.protocol = "http"
        await self.http_handler(stream, identity)


def _identity(peer: VerifiedPeer, remote: str) -> Identity:
    """The one place the listener turns the verified client certificate into an identity."""
    leaf = peer.leaf
    member, sans = "", ()
    if leaf is not None and peer.has_peer_usages():
        member = peer.member_name or ""
        sans = _host_sans(leaf)
    return Identity(common_name=peer.common_name, remote=remote,
                    serial=f"{leaf.serial_number:X}" if leaf is not None else "", member_name=member, sans=sans)


def _host_sans(cert) -> tuple[str, ...]:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple([*(d.lower() for d in ext.get_values_for_type(x509.DNSName)),
                  *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))])


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


__all__ = ["ClientListener", "LiveConnections", "LiveConnection", "PrefixedStream"]
