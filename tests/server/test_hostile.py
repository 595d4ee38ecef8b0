"""Hostile clients against a real member, each bounded in time: huge streaming gateway bodies,
thousands of idle streams, per-identity and per-listener caps, slow-loris heads.
(The ping flood is in test_grpc_protocol.py.)"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
from pathlib import Path

import hpack
import pytest

from h2client import H2Client, frame
from securekv.proto import rpc_pb2
from server_harness import Certs, Member

pytestmark = pytest.mark.timeout(180)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def tls(m: Member, alpn: str, cert: Path | None = None, key: Path | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(m.certs.ca))
    ctx.load_cert_chain(str(cert or m.certs.client_cert), str(key or m.certs.client_key))
    ctx.set_alpn_protocols([alpn])
    raw = socket.create_connection(("127.0.0.1", m.port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def metric(m: Member, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def wait_metric(m: Member, name: str, value: float, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while metric(m, name) != value:
        assert time.monotonic() < deadline, f"{name} = {metric(m, name)}, expected {value}"
        time.sleep(0.1)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_gateway_1100_watch_creates_in_one_body_neither_hang_nor_leak(member: Member) -> None:
    """More creates than a watch stream's unread control responses may hold (1024): the
    gateway feeds them while it writes the answers, so all are created, and all are released
    when the client leaves."""
    body = b"".join(json.dumps({"create_request": {"key": b64(f"w/{i}")}}).encode() for i in range(1100))
    start = time.monotonic()
    with tls(member, "http/1.1") as s:
        s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while data.count(b'"created":true') < 1100:
            chunk = s.recv(1 << 20)
            assert chunk, "the gateway closed the stream early"
            data += chunk
            assert time.monotonic() - start < 60
        assert metric(member, "etcd_debugging_mvcc_watcher_total") == 1100
    wait_metric(member, "etcd_debugging_mvcc_watcher_total", 0)
    wait_metric(member, "etcd_debugging_mvcc_watch_stream_total", 0)


def test_gateway_caps_objects_per_streamed_body(member: Member) -> None:
    body = b'{"create_request":{"key":"YQ=="}}' * 5000
    with tls(member, "http/1.1") as s:
        s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                  % (len(body), body))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(payload)["message"] == "too many requests in one streaming body (at most 4096)"
    assert metric(member, "etcd_debugging_mvcc_watcher_total") == 0


def _hog(m: Member, streams: int) -> ssl.SSLSocket:
    """A client that opens ``streams`` Watch streams (ignoring the server's limit), sends
    nothing on them and never reads."""
    s = tls(m, "h2")
    enc = hpack.Encoder()
    out = bytearray(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # empty SETTINGS
    headers = [(":method", "POST"), (":scheme", "https"), (":path", "/etcdserverpb.Watch/Watch"),
               (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]
    for i in range(streams):
        block = enc.encode(headers)
        sid = 2 * i + 1
        out += len(block).to_bytes(3, "big") + b"\x01\x04" + sid.to_bytes(4, "big") + block  # END_HEADERS
    s.sendall(out)
    return s


def test_2000_idle_streams_do_not_starve_a_second_client(member: Member) -> None:
    with _hog(member, 2000):
        # The default --max-concurrent-streams (1000) holds; the rest were refused.
        wait_metric(member, "etcd_debugging_mvcc_watch_stream_total", 1000, timeout=60)
        for i in range(5):
            start = time.monotonic()
            assert member.ctl("put", f"k{i}", "v").returncode == 0
            assert member.ctl("get", f"k{i}").stdout.splitlines()[1] == "v"
            assert time.monotonic() - start < 5
    wait_metric(member, "etcd_debugging_mvcc_watch_stream_total", 0, timeout=30)


def test_per_identity_caps_on_calls_and_watches(make_member, certs: Certs, tmp_path: Path) -> None:
    from securekv.pki.issue import issue_cert

    issue_cert(certs.dir, "client", "bob", out_dir=tmp_path)
    bob = (tmp_path / "bob.pem", tmp_path / "bob-key.pem")
    m = make_member(extra=["--max-calls-per-identity", "5", "--max-watches-per-identity", "3"])
    c = m.certs
    with H2Client(m.port, c.ca, c.client_cert, c.client_key) as root:
        watches = [root.request("/etcdserverpb.Watch/Watch", end=False) for _ in range(5)]
        # A sixth call of the same identity (CN root) is refused at once...
        r = root.result(root.request("/etcdserverpb.KV/Range", frame(rpc_pb2.RangeRequest(key=b"a").SerializeToString())))
        assert (r.status, r.message) == (8, "securekv: too many concurrent requests for this client identity")
        # ...while another identity is served.
        with H2Client(m.port, c.ca, *bob) as other:
            assert other.result(other.request("/etcdserverpb.KV/Range", frame(rpc_pb2.RangeRequest(
                key=b"a").SerializeToString()))).status == 0
        # Watchers: three per identity, across its streams; the fourth create is canceled.
        creates = [frame(rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=b"w%d" % i)).SerializeToString()) for i in range(4)]
        for sid, msg in zip(watches, creates):
            root.send_data(sid, msg)
        root.flush()
        def responses(evs: list) -> list:
            from h2client import Result

            return [rpc_pb2.WatchResponse.FromString(x) for sid in watches for x in Result.of(sid, evs).messages()]
        root.pump(lambda evs: len(responses(evs)) >= 4)
        got = responses(root.events)
        assert sum(1 for w in got if w.created and not w.canceled) == 3
        refused = [w for w in got if w.canceled]
        assert len(refused) == 1 and refused[0].cancel_reason == "securekv: too many watchers for this client identity"


def _served_again(m) -> None:
    """Poll /health until the member answers a new client again (freed slots are reused)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with tls(m, "http/1.1") as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b'{"health":"true"}' in s.recv(4096) + s.recv(4096):
                    return
        except (ssl.SSLError, OSError):
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_connection_cap_per_listener(make_member) -> None:
    m = make_member(extra=["--max-connections-per-listener", "3"])
    held = [tls(m, "http/1.1") for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", m.port), timeout=10) as extra:
            assert extra.recv(1) == b""  # closed before any TLS byte
    finally:
        for s in held:
            s.close()
    _served_again(m)  # the slots free up again


def test_silent_handshakes_from_one_address_do_not_lock_others_out(make_member) -> None:
    """64 connections from one address that never start TLS hold that address's handshake
    slots, not the listener: the 65th from that address is closed at once, a client on another
    loopback address is served, and the address is served again once they go."""
    m = make_member(extra=["--max-connections-per-listener", "100"])
    held = [socket.create_connection(("127.0.0.1", m.port), timeout=10) for _ in range(64)]
    try:
        deadline = time.monotonic() + 10
        while True:  # accepted one by one by the server: wait until the 65th is refused
            with socket.create_connection(("127.0.0.1", m.port), timeout=10) as extra:
                extra.settimeout(2)
                try:
                    refused = extra.recv(1) == b""  # closed before any TLS byte
                except socket.timeout:
                    refused = False  # still in its handshake: not every silent one was accepted yet
            if refused:
                break
            assert time.monotonic() < deadline
        ctx = ssl.create_default_context(cafile=str(m.certs.ca))
        ctx.load_cert_chain(str(m.certs.client_cert), str(m.certs.client_key))
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection(("127.0.0.1", m.port), timeout=10, source_address=("127.0.0.2", 0))
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b'{"health":"true"}' in s.recv(4096) + s.recv(4096)
    finally:
        for s in held:
            s.close()
    _served_again(m)


def test_connection_cap_per_identity(make_member, certs: Certs, tmp_path: Path) -> None:
    """One certificate cannot hold every slot of a listener: its fourth connection is closed
    right after the handshake, another identity still gets in, and a slot frees on close."""
    from securekv.pki.issue import issue_cert

    issue_cert(certs.dir, "client", "carol", out_dir=tmp_path)
    m = make_member(extra=["--max-connections-per-identity", "3", "--max-connections-per-listener", "10"])

    def health(s: ssl.SSLSocket) -> bool:
        """A keep-alive /health on ``s``: True when answered, False when the server closed it."""
        data = b""
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            while b'{"health":"true"}' not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return True
        except (ssl.SSLError, OSError):
            return False

    held = [tls(m, "http/1.1") for _ in range(3)]
    try:
        assert all(health(s) for s in held)
        with tls(m, "http/1.1") as fourth:
            assert not health(fourth)
        with tls(m, "http/1.1", tmp_path / "carol.pem", tmp_path / "carol-key.pem") as other:
            assert health(other)
        assert "too many connections of 'root' (--max-connections-per-identity 3)" in m.output()
    finally:
        held.pop().close()
    deadline = time.monotonic() + 10
    while True:  # the closed one's slot is free again (once the server saw it go)
        with tls(m, "http/1.1") as again:
            if health(again):
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for s in held:
        s.close()


def test_slow_loris_heads_and_silent_h2_clients_are_closed(make_member) -> None:
    m = make_member(extra=["--tls-handshake-timeout", "2"])
    with tls(m, "http/1.1") as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 10:  # one header byte every 0.2 s: never a whole head
            try:
                s.sendall(b"X")
                s.settimeout(0.2)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except (ssl.SSLError, OSError):
                closed = True
                break
        assert closed and time.monotonic() - start < 4, "a trickled head was not closed by the whole-request timer"
    with tls(m, "h2") as s:  # HTTP/2 negotiated, then silence: no preface within the timeout
        start = time.monotonic()
        s.settimeout(10)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        assert time.monotonic() - start < 5
