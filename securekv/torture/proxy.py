"""A loopback TCP proxy put in front of each member's peer port (the fault suite, the cluster tests).

Members advertise the proxy's address as their peer URL, so all replication traffic to a member
passes through its proxy. Every proxy knows which member it leads to; it learns which member
*dialled* a connection from the kernel (the client socket's inode in /proc/net/tcp and the
member process owning it), so the test can cut exactly the links it wants: a minority partition
blocks connections from majority members into the minority's proxy and from minority members
into the majority's proxies, in both directions, while leaving every other link alone.
Blocking closes live connections with a reset and resets new ones at once (what a peer sees
when a link dies); healing lets new connections through again.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Optional

BUF = 65536


def _hexport(port: int) -> str:
    return f"{port:04X}"


def socket_inode(local_port: int, remote_port: int) -> Optional[int]:
    """Inode of the loopback TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port, if any."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if local.endswith(":" + _hexport(local_port)) and remote.endswith(":" + _hexport(remote_port)):
                return int(inode)
    return None


def pid_owning(inode: int, pids: Iterable[int]) -> Optional[int]:
    """Which of ``pids`` holds the socket ``inode`` open (threads share the fd table)."""
    target = f"socket:[{inode}]"
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if fd.readlink().as_posix() == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def _abort(sock: socket.socket) -> None:
    """Reset and close: the far end sees ECONNRESET, as when a link dies."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket, source: Optional[str]) -> None:
        self.client = client
        self.upstream = upstream
        self.source = source
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._closed = False

    def abort(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _abort(self.client)
        _abort(self.upstream)
        self.done.set()


class Proxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>; links can be cut per source."""

    def __init__(self, target_port: int, dest: str, identify: Callable[[int, int], Optional[str]] | None = None) -> None:
        self.target_port = target_port
        self.dest = dest
        self._identify = identify
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._blocked: set[Optional[str]] = set()
        self._block_all = False
        self._pairs: set[_Pair] = set()
        self.accepted: Counter = Counter()  # source -> connections forwarded
        self.refused: Counter = Counter()  # source -> connections reset by a block
        self.closed: Counter = Counter()  # source -> forwarded connections that ended
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{dest}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- control -------------------------------------------------------------------------------
    def block(self, sources: Iterable[Optional[str]] | None = None) -> None:
        """Cut links from ``sources`` (member names) to this proxy's member; None cuts everything."""
        with self._lock:
            if sources is None:
                self._block_all = True
            else:
                self._blocked.update(sources)
            victims = [p for p in self._pairs if self._is_blocked(p.source)]
        for pair in victims:
            pair.abort()

    def heal(self) -> None:
        with self._lock:
            self._blocked.clear()
            self._block_all = False

    def retarget(self, target_port: int) -> None:
        """Send new connections to another port (live ones are reset)."""
        with self._lock:
            self.target_port = target_port
            victims = list(self._pairs)
        for pair in victims:
            pair.abort()

    def wait_for(self, predicate: Callable[["Proxy"], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (checked on every connection event) or timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout=timeout)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            victims = list(self._pairs)
        for pair in victims:
            pair.abort()

    # -- internals -----------------------------------------------------------------------------
    def _is_blocked(self, source: Optional[str]) -> bool:
        return self._block_all or source in self._blocked

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, (_, client_port) = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            source = self._identify(client_port, self.port) if self._identify else None
            with self._lock:
                blocked = self._is_blocked(source)
                target = self.target_port
                if blocked:
                    self.refused[source] += 1
                    self._cond.notify_all()
            if blocked:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                with self._lock:
                    self.closed[source] += 1
                    self._cond.notify_all()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream, source)
            with self._lock:
                self._pairs.add(pair)
                self.accepted[source] += 1
                self._cond.notify_all()
            threading.Thread(target=self._pump, args=(pair, client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, upstream, client), daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(BUF)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    if pair.done.is_set():
                        break
                    pair.done.set()  # first direction finished; the other pump closes the pair
                    return
                dst.sendall(data)
        except OSError:
            pass
        pair.abort()
        with self._lock:
            if pair in self._pairs:
                self._pairs.discard(pair)
                self.closed[pair.source] += 1
                self._cond.notify_all()
