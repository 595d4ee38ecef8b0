"""The client port's TLS stream: ``ssl.SSLObject`` over the connection's socket, yielding only
when it must wait.

Why not ``trio.SSLStream``: it is general (renegotiation, a handshake started implicitly from
either direction, any transport stream) and pays for it on every call. Profiling a lone put
(docs/benchmarks.md) found 3 of its ~7.8 task steps inside ``SSLStream``: a yield taking its
internal send lock, one after the socket ``send`` and one taking the receive lock, each a trip
through trio's scheduler (10-20 us here). This stream talks to the socket's descriptor directly:

- receive: decrypted bytes already buffered, else a non-blocking read of the socket, and only
  when that would block ``wait_readable``;
- send: encrypt, a non-blocking write, and only on a short write ``wait_writable``.

An operation that never had to wait is no scheduling point. So that a client whose bytes are
always ready cannot keep the one thread to itself, a direction yields anyway after
``YIELD_EVERY`` operations or ``YIELD_BYTES`` bytes without a wait (the gRPC pump also yields
per slice of events). Each call is a cancellation point (``checkpoint_if_cancelled``).

:meth:`send_nowait` is the synchronous half of ``send_all``: the node loop writes the replies of
its turn with it (``server/replybatch.py``), and whatever the socket does not take stays queued
here, in order, for the next ``send_all`` (which may be ``send_all(b"")``) to push.

Errors are trio's: ``BrokenResourceError`` (from the ``ssl.SSLError``/``OSError`` behind it)
once the connection is unusable, ``ClosedResourceError`` after ``aclose``. A ``send_all``
cancelled while its records wait for the socket breaks the stream (a TLS record may be half
written; nothing more may follow it), as with ``trio.SSLStream``. A peer that closes without
``close_notify`` is a ``BrokenResourceError`` too (trio's default), a clean ``close_notify`` is
end of stream (``b""``). Renegotiation is off in every context (``tlspolicy/contexts.py``), so a
write never has to read.
"""

from __future__ import annotations

import enum
import operator
import os
import ssl

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable

RECEIVE_SIZE = 65536  # plaintext per receive_some() when the caller names no size
SOCKET_READ = 65536 + 1024  # ciphertext per socket read (four full TLS records and their overhead)
YIELD_EVERY = 8  # operations of one direction that never waited before it yields anyway
YIELD_BYTES = 256 * 1024  # or bytes moved in that direction without a wait


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class TLSStream(trio.abc.Stream):
    """TLS over a ``trio.SocketStream``: the server side of an accepted connection (the client
    port, the peer port) or, with ``server_side=False``, the client side of a dialled one (the
    peer transport's outgoing links). Call :meth:`do_handshake` first."""

    def __init__(self, transport_stream: trio.SocketStream, context: ssl.SSLContext, *,
                 server_side: bool = True, server_hostname: str | None = None) -> None:
        self.transport_stream = transport_stream
        self._fd = transport_stream.socket.fileno()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        #: The ``ssl.SSLObject``: the peer's certificate, chain, ALPN, cipher (tlspolicy reads it).
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                           server_hostname=None if server_side else server_hostname)
        self._state = _State.OK
        self._handshook = False
        self._receiving = False
        self._sending = False
        self._backlog = b""  # ciphertext the socket did not take yet (sent before anything else)
        self._rx_ops = self._rx_bytes = 0  # receives / bytes since the last wait or yield
        self._tx_ops = self._tx_bytes = 0

    # -- the handshake -------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """The handshake (either side). Its time bound is the caller's (the listener's
        --tls-handshake-timeout); a failure raises BrokenResourceError from the ssl error."""
        self._check()
        obj = self.ssl_object
        while True:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._state = _State.BROKEN
                self._push_quietly()  # the alert, so the client learns why
                raise trio.BrokenResourceError(exc) from exc
            else:
                break
            await self._push_waiting()
            await self._read_socket_waiting()
        self._handshook = True
        await self._push_waiting()  # the handshake's last flight (TLS 1.3: session tickets)

    def selected_alpn_protocol(self) -> str | None:
        return self.ssl_object.selected_alpn_protocol()

    def getpeercert(self, binary_form: bool = False):  # type: ignore[no-untyped-def]
        return self.ssl_object.getpeercert(binary_form)

    # -- receiving -----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._check()
        await checkpoint_if_cancelled()
        if max_bytes is None:
            size = RECEIVE_SIZE
        else:
            size = operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
        self._receiving = True
        try:
            obj = self.ssl_object
            while True:
                try:
                    data = obj.read(size)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:  # a bad record, an alert, EOF without close_notify
                    self._state = _State.BROKEN
                    raise trio.BrokenResourceError(exc) from exc
                else:
                    if data and len(data) < size and self._incoming.pending:
                        data = self._read_buffered(obj, data, size)
                    if self._outgoing.pending and not self._sending:
                        self._push_quietly()  # TLS's own answers (key updates); the rest waits for a send
                    self._rx_ops += 1
                    self._rx_bytes += len(data)
                    if self._rx_ops >= YIELD_EVERY or self._rx_bytes >= YIELD_BYTES:
                        self._rx_ops = self._rx_bytes = 0
                        await cancel_shielded_checkpoint()
                    return data
                if not self._read_socket():
                    self._rx_ops = self._rx_bytes = 0
                    await wait_readable(self._fd)
                    self._check()
        finally:
            self._receiving = False

    def _read_buffered(self, obj: ssl.SSLObject, data: bytes, size: int) -> bytes:
        """``data`` and the whole records after it whose ciphertext is already here: one receive
        returns what one socket read brought, not one TLS record. grpc-go writes its BDP PING
        (with a WINDOW_UPDATE) and the next request as two records; handed over one at a time,
        the gRPC reader answered the PING alone (its own record and write, a second pass of the
        reader) before it even saw the request. A partial record, an error or the end of the
        stream stops here and is met by the next receive, as it would have been."""
        parts = [data]
        n = len(data)
        while n < size and self._incoming.pending:
            try:
                more = obj.read(size - n)
            except ssl.SSLError:  # SSLWantReadError (a partial record) among them
                break
            if not more:
                break
            parts.append(more)
            n += len(more)
        return b"".join(parts) if len(parts) > 1 else data

    def _read_socket(self) -> bool:
        """Ciphertext from the socket into the SSLObject; False when none is there yet."""
        try:
            chunk = os.read(self._fd, SOCKET_READ)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._state = _State.BROKEN
            raise trio.BrokenResourceError(exc) from exc
        if chunk:
            self._incoming.write(chunk)
        else:
            self._incoming.write_eof()
        return True

    async def _read_socket_waiting(self) -> None:
        while not self._read_socket():
            await wait_readable(self._fd)
            self._check()

    # -- sending -------------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send ``data`` after whatever is still queued; ``b""`` only pushes the queue."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check()
        await checkpoint_if_cancelled()
        self._sending = True
        try:
            if self._send(data):
                self._tx_ops += 1
                self._tx_bytes += len(data)
                if self._tx_ops >= YIELD_EVERY or self._tx_bytes >= YIELD_BYTES:
                    self._tx_ops = self._tx_bytes = 0
                    await cancel_shielded_checkpoint()
                return
            self._tx_ops = self._tx_bytes = 0
            try:
                await self._push_waiting()
            except trio.Cancelled:
                # What is queued may end in the middle of a record: nothing may follow it.
                self._state = _State.BROKEN
                raise
        finally:
            self._sending = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data`` and write what the socket takes without waiting. True when all of it
        left; otherwise the rest is queued here and the next ``send_all`` (``b""`` will do) sends
        it first. Raises BusyResourceError while a ``send_all`` waits for the socket."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check()
        return self._send(data)

    def _send(self, data: bytes | bytearray | memoryview) -> bool:
        if data:  # SSLObject.write(b"") would mean nothing to send, but raises on some versions
            if not self._handshook:
                raise trio.BrokenResourceError("send before the TLS handshake")
            try:
                self.ssl_object.write(data)
            except ssl.SSLError as exc:
                self._state = _State.BROKEN
                raise trio.BrokenResourceError(exc) from exc
        return self._push()

    def _push(self) -> bool:
        """Write the queued ciphertext, in order, as far as the socket takes it without waiting."""
        out = self._outgoing
        if out.pending:
            data = self._backlog + out.read() if self._backlog else out.read()
        else:
            data = self._backlog
            if not data:
                return True
        fd = self._fd
        while True:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._state = _State.BROKEN
                self._backlog = b""
                raise trio.BrokenResourceError(exc) from exc
            if n == len(data):
                self._backlog = b""
                return True
            if n == 0:
                self._backlog = data
                return False
            data = data[n:]

    async def _push_waiting(self) -> None:
        while not self._push():
            await wait_writable(self._fd)
            self._check()

    def _push_quietly(self) -> None:
        try:
            self._push()
        except trio.BrokenResourceError:
            pass

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        self._check()
        if self._backlog or self._outgoing.pending:
            self._sending = True
            try:
                await self._push_waiting()
            finally:
                self._sending = False
        else:
            await checkpoint()

    # -- closing -------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """close_notify (best effort, after what is still queued), then close the socket. Callers
        bound the wait (the listener gives it a second)."""
        if self._state is _State.CLOSED:
            await checkpoint()
            return
        try:
            if self._state is _State.OK and self._handshook and not self._sending:
                try:
                    self.ssl_object.unwrap()  # queues close_notify; the peer's answer is not awaited
                except (ssl.SSLWantReadError, ssl.SSLError):
                    pass
                try:
                    await self._push_waiting()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        finally:
            self._state = _State.CLOSED
            await self.transport_stream.aclose()

    def _check(self) -> None:
        state = self._state
        if state is _State.OK:
            return
        if state is _State.CLOSED:
            raise trio.ClosedResourceError("the TLS stream is closed")
        raise trio.BrokenResourceError("the TLS stream is broken")


__all__ = ["TLSStream"]
