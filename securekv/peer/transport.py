"""The peer transport: Raft messages and request/response calls between members over mutual TLS.

Topology: every member dials every other member once (``run``) and sends its own Raft messages
and calls on that outgoing connection; it receives the other members' messages on the
connections they dialed in (``serve``). Call replies come back on the connection the call went
out on. One connection per direction keeps each stream single-writer-ordered and lets either
side detect a dead link by itself (keepalive pings + an idle read timeout).

Per connection, after TLS: the dialer sends HELLO (protocol version, cluster ID, its member ID,
the member ID it meant to reach); the listener answers HELLO_OK or REFUSE(reason) and closes.
Both sides check that the remote certificate names the member the connection speaks for
(:meth:`PeerTLS.bind`); a refusal says what is wrong without naming cluster or member IDs.
See docs/peer.md for the rules and the reasons behind them.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from typing import Awaitable, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import attrs
import trio

from securekv.errors import PeerError, UsageError
from securekv.peer import codec
from securekv.peer.codec import FrameKind
from securekv.raft.types import LOCAL_MESSAGES, Message, MessageType
from securekv.server.tlsstream import TLSStream
from securekv.tlspolicy.identity import VerifiedPeer
from securekv.tlspolicy.peer import PeerTLS

log = logging.getLogger(__name__)

CallHandler = Callable[[int, bytes], Awaitable[bytes]]

#: Messages of one MSGS frame: flush when this many bytes are gathered.
BATCH_BYTES = 256 * 1024
#: Bound on messages per MSGS frame.
BATCH_MAX = 1024
#: Calls served concurrently per incoming connection (more wait: backpressure on the reader).
MAX_CONCURRENT_CALLS = 64
#: Partially received oversized frames held at once per connection.
MAX_TRANSFERS = 4
#: Repeated identical log lines (refusals, dial failures) are written at most this often.
LOG_EVERY = 30.0
#: Live incoming connections one member may hold at once. A newer connection never displaces a
#: live one (an impostor must not cut the real member's link); two leave room for a member that
#: reconnects before its old, silently dead link hits the idle timeout.
MAX_INCOMING_PER_PEER = 2
#: Incoming connections not yet bound to a member (TLS handshake, certificate checks, HELLO) at
#: once, per remote address and in all; more are closed at once, before the TLS handshake.
#: With MAX_INCOMING_PER_PEER this bounds every connection the peer port holds: a stranger who
#: reaches it cannot pile up handshakes (tasks, memory, CPU), and from one address cannot take
#: the slots members on other addresses need.
MAX_PENDING_PER_HOST = 16
MAX_PENDING = 256

MemberNames = Callable[[], Mapping[int, str]]


class _ConnClosed(Exception):
    """The connection ended (EOF, idle timeout, protocol error); ``str`` is the reason."""


@attrs.define
class PeerStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    dropped: int = 0
    snapshots_sent: int = 0
    snapshots_failed: int = 0
    calls_sent: int = 0
    calls_served: int = 0
    connects: int = 0


class _FrameReader:
    def __init__(self, stream: trio.abc.ReceiveStream, on_bytes: Callable[[int], None]) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.on_bytes = on_bytes

    async def _fill(self, need: int) -> None:
        while len(self.buf) < need:
            data = await self.stream.receive_some(max(65536, need - len(self.buf)))
            if not data:
                raise _ConnClosed("connection closed by the remote")
            self.on_bytes(len(data))
            self.buf += data

    async def read(self) -> tuple[int, bytes]:
        head = codec.FRAME_HEAD.size
        await self._fill(head)
        length, kind = codec.FRAME_HEAD.unpack_from(self.buf)
        if length > codec.MAX_FRAME + 64:
            raise PeerError(f"peer frame of {length} bytes exceeds the {codec.MAX_FRAME}-byte limit")
        await self._fill(head + length)
        payload = bytes(self.buf[head:head + length])
        del self.buf[:head + length]
        return kind, payload


class _Reassembler:
    """Collects CHUNK frames into the oversized frame they carry, within a size cap."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.parts: dict[int, tuple[FrameKind, int, bytearray]] = {}

    def feed(self, payload: bytes) -> tuple[FrameKind, bytes] | None:
        tid, flags, kind, total, data = codec.decode_chunk(payload)
        if flags & codec.CHUNK_FIRST:
            if tid in self.parts:
                raise PeerError(f"peer restarted chunked transfer {tid} before finishing it")
            if total > self.max_bytes:
                raise PeerError(f"peer sent a {total}-byte {kind.name} frame; the limit is {self.max_bytes} bytes")
            if len(self.parts) >= MAX_TRANSFERS:
                raise PeerError(f"peer opened more than {MAX_TRANSFERS} chunked transfers at once")
            self.parts[tid] = (kind, total, bytearray())
        got = self.parts.get(tid)
        if got is None:
            raise PeerError(f"peer sent a chunk of unknown transfer {tid}")
        k, want, buf = got
        if k != kind or want != total or len(buf) + len(data) > want:
            raise PeerError(f"peer chunked transfer {tid} is inconsistent")
        buf += data
        if flags & codec.CHUNK_LAST:
            del self.parts[tid]
            if len(buf) != want:
                raise PeerError(f"peer chunked transfer {tid} ended at {len(buf)} of {want} bytes")
            return kind, bytes(buf)
        return None


class _Pending:
    __slots__ = ("event", "status", "payload")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.status = -1
        self.payload = b""


class _Conn:
    """One connection that passed TLS and the HELLO exchange."""

    def __init__(self, stream: trio.abc.Stream, peer: _Peer, outgoing: bool, remote: str) -> None:
        self.stream = stream
        self.peer = peer
        self.outgoing = outgoing
        self.remote = remote
        self.lock = trio.StrictFIFOLock()
        self.reader = _FrameReader(stream, self._count_in)
        self.last_sent = self.last_received = trio.current_time()
        self.next_transfer = 1
        self.pending: dict[int, _Pending] = {}
        self.call_send, self.call_recv = trio.open_memory_channel[tuple[int, str, bytes]](256)
        self.scope: trio.CancelScope | None = None
        self.reason = ""
        self.identity: VerifiedPeer | None = None

    def _count_in(self, n: int) -> None:
        self.peer.stats.bytes_received += n
        self.last_received = trio.current_time()

    async def send_frame(self, data: bytes) -> None:
        """Write one whole frame; the lock keeps frames from different tasks from interleaving."""
        async with self.lock:
            await self.stream.send_all(data)
        self.sent(len(data))

    def sent(self, size: int) -> None:
        """``size`` bytes of whole frames left (by a writer task or a direct write)."""
        self.last_sent = trio.current_time()
        self.peer.stats.bytes_sent += size

    async def send_payload(self, kind: FrameKind, payload: bytes) -> None:
        """One frame, or CHUNK frames (other frames may go between them) when it is too big."""
        if len(payload) <= codec.MAX_FRAME:
            await self.send_frame(codec.frame(kind, payload))
            return
        tid = self.next_transfer
        self.next_transfer += 1
        for f in codec.chunk_frames(tid, kind, payload):
            await self.send_frame(f)

    def close(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        if self.scope is not None:
            self.scope.cancel()


class _Peer:
    def __init__(self, member_id: int, urls: list[str], queue_size: int, snapshot_queue: int) -> None:
        self.id = member_id
        self.urls = urls
        self.url_index = 0
        # None in the queue: "push what the stream still holds" (after a direct write that the
        # socket did not take whole).
        self.msg_send, self.msg_recv = trio.open_memory_channel[Message | None](queue_size)
        # The message writer waits on an empty queue and holds no message: a direct write
        # (``PeerTransport.send``) cannot overtake one.
        self.writer_idle = False
        self.snap_send, self.snap_recv = trio.open_memory_channel[Message](snapshot_queue)
        self.snap_inflight: Message | None = None
        self.out: _Conn | None = None
        self.incoming: set[_Conn] = set()
        self.active_since: float | None = None
        self.connected = trio.Event()
        self.dial_scope = trio.CancelScope()
        self.removed = False
        self.stats = PeerStats()


def _parse_url(url: str, tls: bool) -> tuple[str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"peer URL {url!r} must start with https:// (or http:// when plaintext is allowed)")
    if (scheme == "https") != tls:
        raise UsageError(f"peer URL {url!r}: scheme {scheme}:// does not match the peer transport "
                         f"({'TLS' if tls else 'plaintext'})")
    try:
        port = parts.port or 2380
    except ValueError:
        raise UsageError(f"peer URL {url!r} has a bad port") from None
    if not parts.hostname:
        raise UsageError(f"peer URL {url!r} has no host")
    return parts.hostname, port


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        exc = cause
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


_DIAL_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ssl.SSLError,
                PeerError, _ConnClosed)


class PeerTransport:
    """See the module docstring and docs/peer.md. All methods run in the trio thread."""

    def __init__(
        self,
        member_id: int,
        cluster_id: int,
        tls: PeerTLS | None,
        deliver: Callable[[Message], None],
        report_unreachable: Callable[[int], None],
        report_snapshot: Callable[[int, bool], None],
        handshake_timeout: float = 5.0,
        *,
        queue_size: int = 4096,
        snapshot_queue: int = 2,
        max_message_bytes: int = 2 << 30,
        keepalive_interval: float = 1.0,
        idle_timeout: float = 5.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
        member_names: MemberNames | None = None,
        tls_reload_interval: float = 1.0,
        max_incoming_per_peer: int = MAX_INCOMING_PER_PEER,
        max_pending_per_host: int = MAX_PENDING_PER_HOST,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if member_id <= 0 or cluster_id < 0:
            raise UsageError("peer transport needs a positive member ID and a cluster ID")
        if tls is not None and tls.authenticated and member_names is None:
            raise UsageError("a TLS peer transport needs member_names to bind certificates to members")
        self.member_id = member_id
        self.cluster_id = cluster_id
        self.tls = tls
        self._deliver = deliver
        self._unreachable_cb = report_unreachable
        self._snapshot_cb = report_snapshot
        self.handshake_timeout = handshake_timeout
        self.queue_size = queue_size
        self.snapshot_queue = snapshot_queue
        self.max_message_bytes = max_message_bytes
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._rng = rng if rng is not None else random.Random()
        self._member_names: MemberNames = member_names or (lambda: {})
        self.tls_reload_interval = tls_reload_interval
        self.max_incoming_per_peer = max_incoming_per_peer
        self.max_pending_per_host = max_pending_per_host
        self.max_pending = max_pending
        self._pending: dict[str, int] = {}  # remote host -> connections not yet bound to a member
        self._pending_total = 0
        self.pending_refused = 0
        self._peers: dict[int, _Peer] = {}
        self._handlers: dict[str, CallHandler] = {}
        self._nursery: trio.Nursery | None = None
        self._next_call = 1
        self._logged: dict[tuple, float] = {}
        self.dropped_unknown = 0
        self.handshake_failures = 0
        self.refused = 0
        if tls is None:
            log.warning("peer transport of member %x runs WITHOUT TLS (explicit plaintext opt-out)", member_id)

    # ---- membership ------------------------------------------------------------------------

    def add_peer(self, member_id: int, urls: list[str]) -> None:
        """Start talking to ``member_id``; also the set of members allowed to dial in."""
        if member_id == self.member_id:
            return
        if member_id in self._peers:
            self.update_peer(member_id, urls)
            return
        urls = self._check_urls(urls)
        peer = _Peer(member_id, urls, self.queue_size, self.snapshot_queue)
        self._peers[member_id] = peer
        if self._nursery is not None:
            self._start_dialer(peer)

    def _start_dialer(self, peer: _Peer) -> None:
        assert self._nursery is not None
        peer.dial_scope = trio.CancelScope()  # fresh: run() may be started again after it ended
        self._nursery.start_soon(self._dial_task, peer)

    def update_peer(self, member_id: int, urls: list[str]) -> None:
        """New URLs for the next dial; a connection to a URL no longer listed is closed."""
        peer = self._peers.get(member_id)
        if peer is None:
            self.add_peer(member_id, urls)
            return
        peer.urls = self._check_urls(urls)
        peer.url_index = 0
        if peer.out is not None and peer.out.remote not in peer.urls:
            peer.out.close("peer URLs updated")

    def remove_peer(self, member_id: int) -> None:
        """Stop talking to ``member_id`` and refuse it from now on (a removed member)."""
        peer = self._peers.pop(member_id, None)
        if peer is None:
            return
        peer.removed = True
        peer.dial_scope.cancel()
        for conn in list(peer.incoming):
            conn.close("member removed")
        peer.connected.set()  # wake call() waiters; they see ``removed``

    def _check_urls(self, urls: list[str]) -> list[str]:
        urls = list(urls)
        if not urls:
            raise UsageError("a peer needs at least one URL")
        for u in urls:
            _parse_url(u, self.tls is not None)
        return urls

    # ---- sending ---------------------------------------------------------------------------

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages without blocking; a message for a down peer or a full queue is dropped
        and the peer reported unreachable (a SNAP message is also reported as a failed snapshot)."""
        unreachable: set[int] = set()
        direct: dict[int, list[Message]] = {}
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                self.dropped_unknown += 1
                unreachable.add(m.to)
                if m.type == MessageType.SNAP:
                    self._report_snapshot(m.to, True)
                continue
            if peer.out is None:
                self._drop(peer, m, unreachable)
                continue
            if m.type == MessageType.SNAP:
                try:
                    peer.snap_send.send_nowait(m)
                except trio.WouldBlock:
                    self._drop(peer, m, unreachable)
                continue
            if peer.writer_idle and not peer.out.lock.locked():
                direct.setdefault(m.to, []).append(m)
                continue
            self._queue(peer, m, unreachable)
        for to, batch in direct.items():
            self._write_now(self._peers[to], batch, unreachable)
        for member in unreachable:
            self._report_unreachable(member)

    def _queue(self, peer: _Peer, m: Message | None, unreachable: set[int]) -> None:
        try:
            peer.msg_send.send_nowait(m)
        except trio.WouldBlock:
            if m is not None:
                self._drop(peer, m, unreachable)
        else:
            peer.writer_idle = False  # handed to the writer, which may not have run yet

    def _write_now(self, peer: _Peer, batch: list[Message], unreachable: set[int]) -> None:
        """Messages for a peer whose writer is idle: written here, synchronously, as one MSGS
        frame. Why: queueing them woke the writer task, whose ``send`` then yielded for its lock
        and the stream — task steps and scheduler turns on the path of every replicated write
        (the leader's appends, the followers' answers). What the socket does not take at once
        stays in the stream; the writer is woken to push it. Anything unusual (a frame too big
        for one MSGS frame, a connection going away) takes the queue as before."""
        conn = peer.out  # set: send() only writes directly to a peer with a link
        assert conn is not None
        stream = conn.stream
        payload = None
        if isinstance(stream, TLSStream) and not conn.reason:
            payload = codec.encode_batch([codec.encode_message(m) for m in batch])
        if payload is None or len(payload) > codec.MAX_FRAME:
            for m in batch:
                self._queue(peer, m, unreachable)
            return
        data = codec.frame(FrameKind.MSGS, payload)
        try:
            sent = stream.send_nowait(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError) as exc:
            peer.stats.dropped += len(batch)
            unreachable.add(peer.id)
            conn.close(_reason(exc))
            return
        conn.sent(len(data))
        peer.stats.messages_sent += len(batch)
        if not sent:
            self._queue(peer, None, unreachable)

    def _drop(self, peer: _Peer, m: Message, unreachable: set[int]) -> None:
        peer.stats.dropped += 1
        unreachable.add(peer.id)
        if m.type == MessageType.SNAP:
            peer.stats.snapshots_failed += 1
            self._report_snapshot(peer.id, True)

    def register_call(self, kind: str, handler: CallHandler) -> None:
        """``handler(from_id, payload) -> reply`` serves ``call(.., kind, ..)`` from other members."""
        codec.encode_call(0, kind, b"")  # validates the kind
        self._handlers[kind] = handler

    async def call(self, to_id: int, kind: str, payload: bytes, timeout: float = 5.0) -> bytes:
        """Request/response to ``to_id``; PeerError on timeout, refusal or a remote handler error."""
        peer = self._peers.get(to_id)
        if peer is None:
            raise PeerError(f"peer call {kind}: member {to_id:x} is not a known peer")
        codec.encode_call(0, kind, b"")  # validates the kind before waiting
        with trio.move_on_after(timeout):
            while peer.out is None:
                if peer.removed:
                    raise PeerError(f"peer call {kind}: member {to_id:x} was removed")
                await peer.connected.wait()
            if peer.removed:
                raise PeerError(f"peer call {kind}: member {to_id:x} was removed")
            conn = peer.out
            call_id = self._next_call
            self._next_call += 1
            pending = _Pending()
            conn.pending[call_id] = pending
            try:
                try:
                    conn.call_send.send_nowait((call_id, kind, payload))
                except trio.WouldBlock:
                    raise PeerError(f"peer call {kind} to member {to_id:x}: too many calls in flight") from None
                except trio.ClosedResourceError:
                    raise PeerError(f"peer call {kind} to member {to_id:x} failed: connection lost") from None
                peer.stats.calls_sent += 1
                await pending.event.wait()
            finally:
                conn.pending.pop(call_id, None)
            if pending.status == codec.REPLY_OK:
                return pending.payload
            if pending.status < 0:
                raise PeerError(f"peer call {kind} to member {to_id:x} failed: {pending.payload.decode()}")
            raise PeerError(f"peer call {kind} to member {to_id:x}: remote error: "
                            f"{pending.payload.decode(errors='replace')}")
        raise PeerError(f"peer call {kind} to member {to_id:x} timed out after {timeout:g}s")

    # ---- introspection ---------------------------------------------------------------------

    def active_since(self, member_id: int) -> float | None:
        """``trio.current_time()`` when the current verified outgoing connection came up, or None."""
        peer = self._peers.get(member_id)
        return None if peer is None else peer.active_since

    def peers(self) -> dict[int, list[str]]:
        return {p.id: list(p.urls) for p in self._peers.values()}

    def stats(self) -> dict:
        """Counters for metrics: per peer and totals."""
        per = {}
        for p in list(self._peers.values()):  # may be read by a metrics scrape in another thread
            d = attrs.asdict(p.stats)
            d["connected"] = p.out is not None
            d["incoming_connections"] = len(p.incoming)
            d["queued"] = p.msg_send.statistics().current_buffer_used
            per[p.id] = d
        return {
            "peers": per,
            "dropped": self.dropped_unknown + sum(d["dropped"] for d in per.values()),
            "dropped_unknown_peer": self.dropped_unknown,
            "handshake_failures": self.handshake_failures,
            "refused": self.refused,
            "pending_refused": self.pending_refused,
        }

    # ---- outgoing --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Dial every peer (and peers added later) until cancelled."""
        if self._nursery is not None:
            raise UsageError("PeerTransport.run is already running")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in list(self._peers.values()):
                    self._start_dialer(peer)
                if self.tls is not None:
                    nursery.start_soon(self._reload_loop)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _reload_loop(self) -> None:
        """Reload changed certificate/CA/CRL files; a reloaded CRL closes revoked members' links."""
        assert self.tls is not None
        while True:
            await trio.sleep(self.tls_reload_interval)
            try:
                self.tls.maybe_reload()
            except Exception:  # a reload problem must not take the transport down
                log.exception("peer TLS reload failed")

    def names(self) -> Mapping[int, str]:
        """Member ID -> name as the applied membership knows it ("" = added, not started yet)."""
        try:
            return self._member_names()
        except Exception:
            log.exception("reading member names failed")
            return {}

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_min * math.pow(2, max(0, attempt - 1)))
        return delay * (0.5 + 0.5 * self._rng.random())

    async def _dial_task(self, peer: _Peer) -> None:
        with peer.dial_scope:
            attempt = 0
            while not peer.removed:
                url = peer.urls[peer.url_index % len(peer.urls)]
                conn: _Conn | None = None
                try:
                    conn = await self._dial(peer, url)
                except _DIAL_ERRORS as exc:
                    # Nobody listening is routine (the peer is starting or down): INFO. A TLS or
                    # handshake failure is a configuration problem: WARNING.
                    routine = type(exc) is OSError or isinstance(exc, ConnectionError)
                    level = logging.INFO if routine else logging.WARNING
                    self._log_limited(level, ("dial", peer.id, _reason(exc)),
                                      "cannot connect to peer %x at %s: %s", peer.id, url, _reason(exc))
                except Exception:
                    log.exception("dialing peer %x at %s failed unexpectedly", peer.id, url)
                if conn is None:
                    attempt += 1
                    peer.url_index += 1
                    await trio.sleep(self._backoff(attempt))
                    continue
                attempt = 0
                for key in [k for k in self._logged if k[:2] == ("dial", peer.id)]:
                    del self._logged[key]
                log.info("peer %x connected at %s", peer.id, url)
                try:
                    await self._run_outgoing(peer, conn)
                finally:
                    await trio.aclose_forcefully(conn.stream)
                log.info("peer %x connection lost: %s", peer.id, conn.reason or "closed")
                await trio.sleep(self._backoff(1))

    async def _dial(self, peer: _Peer, url: str) -> _Conn:
        host, port = _parse_url(url, self.tls is not None)
        with trio.fail_after(self.handshake_timeout):
            tcp = await trio.open_tcp_stream(host, port)
            stream: trio.abc.Stream = tcp
            try:
                if self.tls is not None:
                    self.tls.maybe_reload()
                    ctx = self.tls.client_context
                    ssl_stream = TLSStream(tcp, ctx, server_side=False, server_hostname=host)
                    stream = ssl_stream
                    await ssl_stream.do_handshake()
                    try:
                        identity = self.tls.admit(ssl_stream, url)
                        reason = self.tls.bind(identity, peer.id, self.names(), peer.urls)
                        if reason:
                            raise PeerError(reason)
                    except PeerError as exc:
                        raise PeerError(f"refusing the certificate of peer {peer.id:x}: {exc}") from None
                else:
                    identity = None
                conn = _Conn(stream, peer, True, url)
                conn.identity = identity
                await conn.send_frame(codec.frame(FrameKind.HELLO,
                                                  codec.encode_hello(self.cluster_id, self.member_id, peer.id)))
                kind, payload = await conn.reader.read()
                if kind == FrameKind.REFUSE:
                    raise PeerError(f"peer {peer.id:x} refused the connection: {payload.decode(errors='replace')}")
                if kind != FrameKind.HELLO_OK:
                    raise PeerError(f"peer {peer.id:x} answered the handshake with frame kind {kind}")
                version, cluster, member = codec.decode_hello_ok(payload)
                if cluster != self.cluster_id or member != peer.id:
                    reason = (f"peer at {url} is member {member:x} of cluster {cluster:x}; expected member "
                              f"{peer.id:x} of cluster {self.cluster_id:x} (this member is {self.member_id:x})")
                    raise PeerError(reason)
                return conn
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def _run_outgoing(self, peer: _Peer, conn: _Conn) -> None:
        peer.out = conn
        peer.active_since = trio.current_time()
        peer.stats.connects += 1
        peer.connected.set()
        token = self._track(conn)
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                if conn.reason:  # closed (e.g. revoked) before its tasks started
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guard, conn, self._read_loop, conn, nursery)
                nursery.start_soon(self._guard, conn, self._pinger, conn)
                nursery.start_soon(self._guard, conn, self._msg_writer, conn)
                nursery.start_soon(self._guard, conn, self._snap_writer, conn)
                nursery.start_soon(self._guard, conn, self._call_writer, conn)
        finally:
            self._untrack(token)
            peer.out = None
            peer.active_since = None
            peer.connected = trio.Event()
            self._teardown_outgoing(peer, conn)

    def _teardown_outgoing(self, peer: _Peer, conn: _Conn) -> None:
        """Fail what was in flight on a lost connection: calls, queued messages, snapshots."""
        reason = (conn.reason or "connection lost").encode()
        for pending in conn.pending.values():
            pending.status = -1
            pending.payload = reason
            pending.event.set()
        conn.pending.clear()
        conn.call_send.close()
        lost = 0
        while True:
            try:
                if peer.msg_recv.receive_nowait() is not None:
                    lost += 1
            except trio.WouldBlock:
                break
        failed_snaps = 1 if peer.snap_inflight is not None else 0
        peer.snap_inflight = None
        while True:
            try:
                peer.snap_recv.receive_nowait()
                failed_snaps += 1
            except trio.WouldBlock:
                break
        peer.stats.dropped += lost + failed_snaps
        peer.stats.snapshots_failed += failed_snaps
        for _ in range(failed_snaps):
            self._report_snapshot(peer.id, True)
        self._report_unreachable(peer.id)

    async def _msg_writer(self, conn: _Conn) -> None:
        peer = conn.peer
        recv = peer.msg_recv
        stats = peer.stats
        while True:
            try:
                m = recv.receive_nowait()
            except trio.WouldBlock:
                peer.writer_idle = True
                try:
                    m = await recv.receive()
                finally:
                    peer.writer_idle = False
            if m is None:  # a direct write left bytes in the stream: push them
                await conn.send_frame(b"")
                continue
            batch: list[bytes] = []
            size = 0
            while True:
                enc = codec.encode_message(m)
                if size + len(enc) + 4 > codec.MAX_FRAME and batch:
                    await conn.send_frame(codec.frame(FrameKind.MSGS, codec.encode_batch(batch)))
                    stats.messages_sent += len(batch)
                    batch, size = [], 0
                batch.append(enc)
                size += len(enc) + 4
                if size >= BATCH_BYTES or len(batch) >= BATCH_MAX:
                    break
                try:
                    m = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if m is None:
                    break  # the frame below pushes the stream's leftover first
            await conn.send_payload(FrameKind.MSGS, codec.encode_batch(batch))
            stats.messages_sent += len(batch)

    async def _snap_writer(self, conn: _Conn) -> None:
        peer = conn.peer
        while True:
            m = await peer.snap_recv.receive()
            peer.snap_inflight = m
            await conn.send_payload(FrameKind.MSGS, codec.encode_batch([codec.encode_message(m)]))
            peer.snap_inflight = None
            peer.stats.messages_sent += 1
            peer.stats.snapshots_sent += 1
            self._report_snapshot(peer.id, False)

    async def _call_writer(self, conn: _Conn) -> None:
        async for call_id, kind, payload in conn.call_recv:
            if call_id in conn.pending:  # not timed out meanwhile
                await conn.send_payload(FrameKind.CALL, codec.encode_call(call_id, kind, payload))

    async def _pinger(self, conn: _Conn) -> None:
        """A PING when nothing was sent for a keepalive interval, and the idle check: nothing
        received for ``idle_timeout`` ends the connection. The check lives here, not as a
        deadline around every frame read: a cancel scope with a deadline per frame was a
        measurable part of a lone message's cost (scope, deadline heap, per message)."""
        ping = codec.frame(FrameKind.PING)
        interval, idle = self.keepalive_interval, self.idle_timeout
        while True:
            await trio.sleep_until(min(conn.last_sent + interval, conn.last_received + idle))
            now = trio.current_time()
            if now - conn.last_received >= idle:
                raise _ConnClosed(f"nothing received for {idle:g}s")
            if now - conn.last_sent >= interval * 0.9:
                await conn.send_frame(ping)

    async def _guard(self, conn: _Conn, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run one connection task; any ending ends the whole connection (never raises)."""
        try:
            await fn(*args)
            conn.close("connection task ended")
        except (_ConnClosed, PeerError, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                ssl.SSLError) as exc:
            if isinstance(exc, PeerError):
                self._log_limited(logging.WARNING, ("proto", conn.peer.id, str(exc)),
                                  "closing connection with peer %x: %s", conn.peer.id, exc)
            conn.close(_reason(exc))
        except Exception:
            log.exception("peer %x connection task failed", conn.peer.id)
            conn.close("internal error")

    # ---- incoming --------------------------------------------------------------------------

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Accept peer connections on already-bound listeners until cancelled."""
        await trio.serve_listeners(self._handle_incoming, listeners, task_status=task_status)

    async def _handle_incoming(self, tcp: trio.SocketStream) -> None:
        try:
            remote = "%s:%s" % tcp.socket.getpeername()[:2]
        except OSError:
            remote = "?"
        host = remote.rsplit(":", 1)[0]
        if self._pending_total >= self.max_pending or self._pending.get(host, 0) >= self.max_pending_per_host:
            self.pending_refused += 1
            self._log_limited(logging.WARNING, ("pending", host),
                              "refusing peer connection from %s: too many connections still in their handshake "
                              "(%d from this address, %d in all; at most %d and %d)", remote,
                              self._pending.get(host, 0), self._pending_total, self.max_pending_per_host,
                              self.max_pending)
            await trio.aclose_forcefully(tcp)
            return
        conn: _Conn | None = None
        try:
            self._pending[host] = self._pending.get(host, 0) + 1
            self._pending_total += 1
            try:
                with trio.move_on_after(self.handshake_timeout) as scope:
                    conn = await self._accept(tcp, remote)
            finally:
                self._pending_total -= 1
                left = self._pending[host] - 1
                if left:
                    self._pending[host] = left
                else:
                    del self._pending[host]
            if scope.cancelled_caught:
                self.handshake_failures += 1
                self._log_limited(logging.WARNING, ("hs-timeout", remote.rsplit(":", 1)[0]),
                                  "peer handshake from %s timed out after %gs", remote, self.handshake_timeout)
                return
            if conn is None:
                return
            await self._run_incoming(conn)
        except Exception:
            log.exception("peer connection from %s failed unexpectedly", remote)
        finally:
            if conn is not None:
                conn.peer.incoming.discard(conn)  # _accept took the slot; _run_incoming may not have run
            await trio.aclose_forcefully(conn.stream if conn is not None else tcp)

    async def _accept(self, tcp: trio.SocketStream, remote: str) -> _Conn | None:
        stream: trio.abc.Stream = tcp
        identity: VerifiedPeer | None = None
        host = remote.rsplit(":", 1)[0]
        if self.tls is not None:
            self.tls.maybe_reload()
            ssl_stream = TLSStream(tcp, self.tls.server_context)
            try:
                await ssl_stream.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                self.handshake_failures += 1
                self._log_limited(logging.WARNING, ("tls", host, _reason(exc)),
                                  "refusing peer connection from %s: TLS: %s", remote, _reason(exc))
                await trio.aclose_forcefully(ssl_stream)
                return None
            stream = ssl_stream
            try:
                identity = self.tls.admit(ssl_stream, remote)
                # etcd's client SAN check (DNS lookups: a worker thread, within the handshake timeout)
                san = await trio.to_thread.run_sync(self.tls.client_san_refusal, identity, host.strip("[]"),
                                                    abandon_on_cancel=True)
                if san:
                    raise PeerError(san)
            except PeerError as exc:
                self.handshake_failures += 1
                self._log_limited(logging.WARNING, ("tls", host, str(exc)),
                                  "refusing peer connection from %s: TLS: %s", remote, exc)
                await self._send_refusal(stream, str(exc))
                return None
        reader = _FrameReader(stream, lambda n: None)
        try:
            kind, payload = await reader.read()
            if kind != FrameKind.HELLO:
                raise PeerError(f"expected a handshake, got frame kind {kind}")
            version, cluster, sender, receiver = codec.decode_hello(payload)
        except (_ConnClosed, PeerError, trio.BrokenResourceError, OSError) as exc:
            self.handshake_failures += 1
            self._log_limited(logging.WARNING, ("hello", host, _reason(exc)),
                              "refusing peer connection from %s: %s", remote, _reason(exc))
            return None
        who = identity.describe() if identity is not None else "no certificate"
        if cluster == 0 and receiver == 0 and version == codec.PROTOCOL_VERSION:
            # A member joining an existing cluster asks for the cluster ID (server/discovery.py):
            # answered only to a member of the applied membership whose certificate names it.
            reason = self._refusal_for(sender, identity)
            if reason:
                self.refused += 1
                self._log_limited(logging.WARNING, ("discover", sender, who),
                                  "refusing cluster ID discovery from %s (%s, claims member %x): %s",
                                  remote, who, sender, reason)
                await self._send_refusal(stream, reason)
            else:
                log.info("told the cluster ID to joining member %x at %s (%s)", sender, remote, who)
                try:
                    await stream.send_all(codec.frame(FrameKind.HELLO_OK,
                                                      codec.encode_hello_ok(self.cluster_id, self.member_id)))
                except (trio.BrokenResourceError, OSError):
                    pass
            return None
        reason = self._refusal(version, cluster, sender, receiver, identity)
        if reason:
            self.refused += 1
            self._log_limited(logging.WARNING, ("refuse", sender, cluster, receiver, reason),
                              "refusing peer connection from %s (%s, claims member %x of cluster %x, to reach "
                              "%x; this is member %x of cluster %x): %s", remote, who, sender, cluster, receiver,
                              self.member_id, self.cluster_id, reason)
            await self._send_refusal(stream, reason)
            return None
        peer = self._peers[sender]
        conn = _Conn(stream, peer, False, remote)
        conn.identity = identity
        conn.reader = reader
        reader.on_bytes = conn._count_in
        # Take the member's slot now, before the first await: HELLOs arriving together must see
        # each other, or all of them pass the MAX_INCOMING_PER_PEER check above.
        peer.incoming.add(conn)
        try:
            await conn.send_frame(codec.frame(FrameKind.HELLO_OK,
                                              codec.encode_hello_ok(self.cluster_id, self.member_id)))
        except BaseException:
            peer.incoming.discard(conn)
            raise
        return conn

    async def _send_refusal(self, stream: trio.abc.Stream, reason: str) -> None:
        """Tell the dialer why (best effort, bounded): the text names no cluster or member ID."""
        with trio.move_on_after(1.0):
            try:
                await stream.send_all(codec.frame(FrameKind.REFUSE, reason.encode()))
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass

    def _refusal(self, version: int, cluster: int, sender: int, receiver: int,
                 identity: VerifiedPeer | None) -> str:
        """Why this HELLO is refused ("" = accepted). Sent to the dialer: no IDs in the text."""
        if version != codec.PROTOCOL_VERSION:
            return f"peer protocol version {version} is not supported (this member speaks {codec.PROTOCOL_VERSION})"
        if cluster != self.cluster_id:
            return "cluster ID mismatch: the dialing member belongs to another cluster"
        if receiver != self.member_id:
            return "this is not the member the dialer wanted to reach (a stale or swapped peer URL?)"
        return self._refusal_for(sender, identity)

    def _refusal_for(self, sender: int, identity: VerifiedPeer | None) -> str:
        peer = self._peers.get(sender)
        if peer is None or sender == self.member_id:
            return "the dialing member is not a member of this cluster (unknown or removed)"
        if self.tls is not None and identity is not None:
            reason = self.tls.bind(identity, sender, self.names(), peer.urls)
            if reason:
                return reason
        live = [c for c in peer.incoming if c.scope is None or not c.scope.cancel_called]
        if len(live) >= self.max_incoming_per_peer:
            return ("the member already has as many live connections here as allowed; a new one does not "
                    "replace them (they end when the remote closes them or after the idle timeout)")
        return ""

    async def _run_incoming(self, conn: _Conn) -> None:
        peer = conn.peer
        peer.incoming.add(conn)  # (taken in _accept) a newer connection never displaces a live one
        token = self._track(conn)
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                if conn.reason:  # closed (e.g. revoked) before its tasks started
                    nursery.cancel_scope.cancel()
                if peer.removed:
                    conn.close("member removed")
                nursery.start_soon(self._guard, conn, self._read_loop, conn, nursery)
                nursery.start_soon(self._guard, conn, self._pinger, conn)
        finally:
            peer.incoming.discard(conn)
            self._untrack(token)
            log.debug("incoming connection from peer %x ended: %s", peer.id, conn.reason)

    def _track(self, conn: _Conn) -> int | None:
        """Register an authenticated link so that revoking its certificate closes it."""
        if self.tls is None or conn.identity is None or not conn.identity.chain:
            return None
        return self.tls.live.register(conn.identity, conn.close)

    def _untrack(self, token: int | None) -> None:
        if token is not None and self.tls is not None:
            self.tls.live.unregister(token)

    # ---- reading (both directions) ---------------------------------------------------------

    async def _read_loop(self, conn: _Conn, nursery: trio.Nursery) -> None:
        reasm = _Reassembler(self.max_message_bytes)
        calls = trio.Semaphore(MAX_CONCURRENT_CALLS)
        while True:
            kind, payload = await conn.reader.read()  # the pinger ends an idle connection
            if kind == FrameKind.CHUNK:
                whole = reasm.feed(payload)
                if whole is None:
                    continue
                kind, payload = whole
            if kind == FrameKind.MSGS:
                self._receive_batch(conn, payload)
            elif kind == FrameKind.PING:
                pass
            elif kind == FrameKind.CALL and not conn.outgoing:
                call_id, call_kind, body = codec.decode_call(payload)
                await calls.acquire()
                nursery.start_soon(self._serve_call, conn, calls, call_id, call_kind, body)
            elif kind == FrameKind.REPLY and conn.outgoing:
                call_id, status, body = codec.decode_reply(payload)
                pending = conn.pending.get(call_id)
                if pending is not None:
                    pending.status, pending.payload = status, body
                    pending.event.set()
            elif kind == FrameKind.REFUSE:
                raise _ConnClosed(f"peer closed the connection: {payload.decode(errors='replace')}")
            else:
                raise PeerError(f"unexpected frame kind {kind} on an established connection")

    def _receive_batch(self, conn: _Conn, payload: bytes) -> None:
        peer = conn.peer
        for raw in codec.iter_batch(payload):
            m = codec.decode_message(raw)
            if m.frm != peer.id or m.to != self.member_id or m.type in LOCAL_MESSAGES:
                self._log_limited(logging.WARNING, ("misaddressed", peer.id),
                                  "dropping a %s message from peer %x addressed %x -> %x",
                                  m.type.name, peer.id, m.frm, m.to)
                continue
            peer.stats.messages_received += 1
            try:
                self._deliver(m)
            except Exception:
                log.exception("delivering a %s message from peer %x failed", m.type.name, peer.id)

    async def _serve_call(self, conn: _Conn, calls: trio.Semaphore, call_id: int, kind: str, body: bytes) -> None:
        try:
            handler = self._handlers.get(kind)
            if handler is None:
                status, out = codec.REPLY_UNKNOWN_KIND, f"unknown peer call kind {kind!r}".encode()
            else:
                try:
                    out = bytes(await handler(conn.peer.id, body))
                    status = codec.REPLY_OK
                except Exception as exc:  # the caller gets the error text, we keep serving
                    status, out = codec.REPLY_ERROR, (str(exc) or type(exc).__name__).encode()
            conn.peer.stats.calls_served += 1
            await conn.send_payload(FrameKind.REPLY, codec.encode_reply(call_id, status, out))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            conn.close(_reason(exc))
        except Exception:
            log.exception("serving peer call %s from %x failed", kind, conn.peer.id)
            conn.close("internal error")
        finally:
            calls.release()

    # ---- callbacks and logging ------------------------------------------------------------

    def _report_unreachable(self, member_id: int) -> None:
        try:
            self._unreachable_cb(member_id)
        except Exception:  # a broken callback must not take the transport down
            log.exception("report_unreachable(%x) failed", member_id)

    def _report_snapshot(self, member_id: int, failed: bool) -> None:
        try:
            self._snapshot_cb(member_id, failed)
        except Exception:
            log.exception("report_snapshot(%x, %s) failed", member_id, failed)

    def _log_limited(self, level: int, key: tuple, msg: str, *args: object) -> None:
        """Log a repeated condition (a peer retrying with bad credentials) once per LOG_EVERY s."""
        now = trio.current_time()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY:
            log.debug(msg, *args)
            return
        if len(self._logged) > 1024:
            self._logged.clear()
        self._logged[key] = now
        log.log(level, msg, *args)
