"""The partition proxy itself: forwards bytes both ways, names the process that dialled it, cuts
live and new links from a blocked source, lets them through again after heal."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tcpproxy import Proxy, pid_owning, socket_inode


@pytest.fixture
def echo_port():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.shutdown(socket.SHUT_RDWR)
    srv.close()
    t.join(5)


def identify_me(client_port: int, proxy_port: int):
    inode = socket_inode(client_port, proxy_port)
    return "me" if inode is not None and pid_owning(inode, [os.getpid()]) == os.getpid() else None


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_cluster_tcpproxy_forwards_identifies_blocks_and_heals(echo_port: int) -> None:
    proxy = Proxy(echo_port, "echo", identify_me)
    try:
        payload = os.urandom(300_000)
        assert roundtrip(proxy.port, payload) == payload
        assert proxy.accepted["me"] == 1

        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        assert proxy.wait_for(lambda p: p.accepted["me"] == 2, 5)
        live.sendall(b"ping")
        assert live.recv(4) == b"ping"

        proxy.block(["someone-else"])  # other sources only: this link survives
        live.sendall(b"pong")
        assert live.recv(4) == b"pong"

        proxy.block(["me"])
        with pytest.raises(OSError):  # the live link is reset ...
            live.sendall(b"x" * 65536)
            if not live.recv(1):
                raise ConnectionResetError("closed")
        live.close()
        with pytest.raises(OSError):  # ... and new ones are refused
            if not roundtrip(proxy.port, b"hello"):
                raise ConnectionResetError("closed")
        assert proxy.refused["me"] >= 1

        proxy.heal()
        assert roundtrip(proxy.port, b"again") == b"again"
    finally:
        proxy.close()


def test_cluster_tcpproxy_block_all_and_retarget(echo_port: int) -> None:
    proxy = Proxy(echo_port, "echo")  # no identification: sources are None
    try:
        assert roundtrip(proxy.port, b"a") == b"a"
        proxy.block()
        with pytest.raises(OSError):
            if not roundtrip(proxy.port, b"b"):
                raise ConnectionResetError("closed")
        proxy.heal()
        proxy.retarget(echo_port)
        assert roundtrip(proxy.port, b"c") == b"c"
    finally:
        proxy.close()
