"""etcd's JSON gateway (POST /v3/...) on the client port, through the real PyPI client etcd3gw
and raw HTTP/1.1, against securekv and the real etcd with the same scenario.

etcd's own gateway dials its gRPC port with the server certificate as a client certificate, so
the etcd member here gets a certificate of the `etcd` profile (server + client auth)."""

from __future__ import annotations

import base64
import json
import queue
import re
import socket
import ssl
import threading
from pathlib import Path

import attrs
import pytest

from server_harness import Certs, Member

etcd3gw = pytest.importorskip("etcd3gw.client")


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE win over the session's own CA file (a known
    requests quirk); this machine sets both, so the client would not trust the test CA."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def gw_certs(certs: Certs) -> Certs:
    from securekv.pki.issue import issue_cert

    issue_cert(certs.dir, "etcd", "gateway-server", hosts=["127.0.0.1", "localhost"])
    return attrs.evolve(certs, server_cert=certs.dir / "gateway-server.pem",
                        server_key=certs.dir / "gateway-server-key.pem")


def _member(kind: str, tmp_path: Path, gw_certs: Certs, request: pytest.FixtureRequest) -> Member:
    m = Member(kind, tmp_path / kind, gw_certs).start()
    request.addfinalizer(m.kill)
    if kind == "etcd":  # etcd's gateway dials its own gRPC port lazily: wait until it answers
        _wait_gateway(m)
    return m


def _wait_gateway(m: Member) -> None:
    import time

    deadline = time.monotonic() + 20
    while True:
        status, _ = post(m, "/v3/maintenance/status", b"{}")
        if status == 200 or time.monotonic() > deadline:
            return
        time.sleep(0.1)


@pytest.fixture(params=["securekv", "etcd"])
def gw(request: pytest.FixtureRequest, tmp_path: Path, gw_certs: Certs) -> Member:
    return _member(request.param, tmp_path, gw_certs, request)


def client(m: Member):
    return etcd3gw.Etcd3Client(host="127.0.0.1", port=m.port, protocol="https", ca_cert=str(m.certs.ca),
                               cert_cert=str(m.certs.client_cert), cert_key=str(m.certs.client_key), timeout=10)


def tls_socket(m: Member) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(m.certs.ca))
    ctx.load_cert_chain(str(m.certs.client_cert), str(m.certs.client_key))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", m.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response head"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def post(m: Member, path: str, body: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    with tls_socket(m) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), extra, len(body), body))
        status, _headers, payload = read_response(s)
        return status, payload


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


NUMBERS = re.compile(r'"(cluster_id|member_id|raft_term|revision|ID|id|lease|create_revision|mod_revision|'
                     r'raftIndex|raftAppliedIndex|raftTerm|leader|dbSize|dbSizeInUse|hash|TTL|'
                     r'compact_revision)": ?"?\d+"?')


def normalise(value: object) -> str:
    """Numbers that differ between two servers (ids, revisions, sizes) are masked."""
    return NUMBERS.sub(lambda mo: '"%s":N' % mo.group(1), json.dumps(value, sort_keys=True))


def etcd3gw_session(m: Member) -> list[str]:
    """The client's whole surface, as its users call it; returns a masked transcript."""
    c = client(m)
    out: list[str] = []
    assert c.api_path == "/v3/"
    status = c.status()
    assert status["version"].startswith("3.4")
    out.append(normalise(sorted(status)))
    members = c.members()
    assert len(members) == 1 and members[0]["clientURLs"] == [m.endpoint]
    out.append(normalise([sorted(x) for x in members]))

    assert c.put("/app/a", "1") is True
    assert c.put("/app/b", "2") is True
    assert c.get("/app/a") == [b"1"]
    assert c.get("/app/missing") == []
    prefix = c.get_prefix("/app/", sort_order="descend", sort_target="key")
    assert [meta["key"] for _value, meta in prefix] == [b"/app/b", b"/app/a"]
    out.append(normalise([(v.decode(), {k: (x.decode() if isinstance(x, bytes) else x) for k, x in meta.items()})
                          for v, meta in prefix]))
    assert c.create("/app/a", "x") is False
    assert c.create("/app/c", "3") is True
    assert c.replace("/app/c", "3", "33") is True
    assert c.replace("/app/c", "3", "4") is False
    assert c.get("/app/c") == [b"33"]
    assert c.delete("/app/c") is True
    assert c.delete("/app/c") is False

    lease = c.lease(ttl=60)
    assert lease.id > 0
    assert c.put("/app/leased", "v", lease=lease) is True
    assert 0 < lease.ttl() <= 60
    assert 0 < lease.refresh() <= 60
    assert lease.keys() == [b"/app/leased"]
    assert lease.revoke() is True
    assert c.get("/app/leased") == []

    lock = c.lock(id="gw-lock", ttl=60)
    assert lock.acquire() is True
    assert lock.is_acquired()
    other = c.lock(id="gw-lock", ttl=60)
    assert other.acquire() is False
    assert lock.release() is True
    assert other.acquire() is True
    assert other.release() is True

    txn = c.transaction({
        "compare": [{"key": b64("/app/a"), "result": "EQUAL", "target": "VALUE", "value": b64("1")}],
        "success": [{"request_put": {"key": b64("/app/t"), "value": b64("yes")}},
                    {"request_range": {"key": b64("/app/a")}}],
        "failure": [],
    })
    assert txn["succeeded"] is True and len(txn["responses"]) == 2
    out.append(normalise(txn))

    events: queue.Queue = queue.Queue()
    it, cancel = c.watch("/app/w")
    reader = threading.Thread(target=lambda: events.put(next(it)), daemon=True)
    reader.start()
    # The watch is created before any later write (the server answered "created" first).
    c.put("/app/w", "event")
    event = events.get(timeout=10)
    cancel()
    assert event["kv"]["key"] == b"/app/w" and event["kv"]["value"] == b"event"
    out.append(normalise({k: v for k, v in event["kv"].items() if k not in ("key", "value")}))
    history = c.watch_once("/app/a", timeout=10, start_revision=1)
    assert history["kv"]["value"] == b"1"
    prefixed = c.watch_prefix_once("/app/", timeout=10, start_revision=1)
    assert prefixed["kv"]["key"] == b"/app/a"

    assert c.delete_prefix("/app/") is True
    assert c.get_prefix("/app/") == []
    return out


def test_etcd3gw_whole_client(gw: Member) -> None:
    etcd3gw_session(gw)


def test_etcd3gw_same_transcript(tmp_path: Path, gw_certs: Certs, request: pytest.FixtureRequest) -> None:
    ours = etcd3gw_session(_member("securekv", tmp_path, gw_certs, request))
    theirs = etcd3gw_session(_member("etcd", tmp_path, gw_certs, request))
    assert ours == theirs


CASES = [
    ("/v3/kv/range", b'{"key":""}'),
    ("/v3/kv/range", b'{"key":"' + b64("nothing").encode() + b'","bogus_field":1}'),
    ("/v3/kv/range", b""),
    ("/v3/kv/put", b'{"key":"' + b64("k").encode() + b'","value":"' + b64("v").encode() + b'","lease":"12345"}'),
    ("/v3/lease/revoke", b'{"ID":"123"}'),
    ("/v3/kv/lease/timetolive", b'{"ID":"123"}'),
    ("/v3/kv/range", b'{"key":"' + b64("k").encode() + b'","revision":"1000"}'),
    ("/v3/kv/compaction", b'{"revision":"1000"}'),
    ("/v3/kv/txn", b'{"compare":[{"key":"' + b64("k").encode() + b'","target":"VERSION","result":"GREATER",'
                   b'"version":"0"}],"success":[{"request_put":{"key":"' + b64("k").encode() + b'"}}]}'),
    ("/v3beta/kv/range", b'{"key":"' + b64("k").encode() + b'"}'),
    ("/v3/maintenance/alarm", b'{"action":"GET"}'),
    ("/v3/lease/keepalive", b'{"ID":"1"}'),
    ("/v3alpha/kv/range", b'{"key":"' + b64("k").encode() + b'"}'),
    ("/v3/kv/nosuch", b"{}"),
]


@pytest.mark.parametrize("path,body", CASES, ids=[f"{i}:{p}" for i, (p, _b) in enumerate(CASES)])
def test_raw_requests_answer_like_etcd(tmp_path: Path, gw_certs: Certs, request: pytest.FixtureRequest,
                                       path: str, body: bytes) -> None:
    answers = []
    for kind in ("securekv", "etcd"):
        m = _member(kind, tmp_path, gw_certs, request)
        status, payload = post(m, path, body)
        text = payload.decode()
        answers.append((status, normalise(json.loads(text)) if text.startswith("{") else text))
    assert answers[0] == answers[1]


def test_bad_json_is_invalid_argument_and_changes_nothing(gw: Member) -> None:
    status, payload = post(gw, "/v3/kv/put", b'{"key": notjson')
    assert status == 400
    error = json.loads(payload)
    assert error["code"] == 3 and error["error"] == error["message"] and error["message"]
    status, payload = post(gw, "/v3/kv/range", b'{"key":"AA==","range_end":"AA=="}')
    assert status == 200 and json.loads(payload)["header"]["revision"] == "1"


def test_get_and_wrong_method(gw: Member) -> None:
    with tls_socket(gw) as s:
        s.sendall(b"GET /v3/kv/range HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _h, _b = read_response(s)
    assert status == 405


def test_keep_alive_pipelined_and_100_continue(member: Member) -> None:
    """Several requests on one connection (etcd3gw's requests.Session reuses it), a chunked body,
    and a client that waits for `100 Continue` before sending its body (curl does for large ones)."""
    m = member
    put = b'{"key":"' + b64("ka").encode() + b'","value":"' + b64("1").encode() + b'"}'
    with tls_socket(m) as s:
        req = b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(put), put)
        s.sendall(req + req)  # pipelined
        assert read_response(s)[0] == 200
        assert read_response(s)[0] == 200
        chunked = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b'{"key":"' + b64("ka").encode() + b'"}'
        s.sendall(chunked + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        status, _h, payload = read_response(s)
        assert status == 200 and json.loads(payload)["kvs"][0]["version"] == "2"
        s.sendall(b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
                  % len(body))
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        s.sendall(body)
        status, _h, payload = read_response(s)
        assert status == 200 and json.loads(payload)["count"] == "1"


def test_oversized_body_refused(member: Member) -> None:
    big = b'{"key":"' + b64("big").encode() + b'","value":"' + base64.b64encode(b"x" * (4 * 1024 * 1024)) + b'"}'
    with tls_socket(member) as s:
        s.sendall(b"POST /v3/kv/put HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big))
        status, _h, _b = read_response(s)
    assert status == 413
    status, payload = post(member, "/v3/kv/range", b'{"key":"' + b64("big").encode() + b'"}')
    assert status == 200 and "kvs" not in json.loads(payload)


def _metric(m: Member, name: str) -> float:
    with tls_socket(m) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _status, _h, body = read_response(s)
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_watch_stream_ends_when_client_leaves_and_calls_are_counted(member: Member) -> None:
    m = member
    before = _metric(m, 'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",')
    post(m, "/v3/kv/range", b'{"key":"' + b64("a").encode() + b'"}')
    assert _metric(m, 'grpc_server_handled_total{grpc_code="OK",grpc_method="Range",') == before + 1
    s = tls_socket(m)
    body = b'{"create_request":{"key":"' + b64("w").encode() + b'"}}'
    s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    head = b""
    while b'"created":true' not in head:
        chunk = s.recv(65536)
        assert chunk
        head += chunk
    assert b"Transfer-Encoding: chunked" in head
    assert _metric(m, "etcd_debugging_mvcc_watcher_total") == 1
    s.close()
    import time

    deadline = time.monotonic() + 10  # the server notices EOF; poll its own gauge
    while _metric(m, "etcd_debugging_mvcc_watcher_total") != 0:
        assert time.monotonic() < deadline, "watcher not released after the client left"
        time.sleep(0.05)


def test_plain_curl_reaches_health_and_gateway(gw: Member) -> None:
    """curl offers h2 and http/1.1 by ALPN; runbooks call it with no protocol flag. securekv picks
    HTTP/1.1 for such clients (gRPC clients offer h2 only), so /health and /v3 answer as etcd's do."""
    import shutil
    import subprocess

    curl = shutil.which("curl")
    assert curl, "curl is installed by scripts/install-and-test.sh"
    c = gw.certs
    base = [curl, "-sS", "--cacert", str(c.ca), "--cert", str(c.client_cert), "--key", str(c.client_key)]
    health = subprocess.run([*base, f"{gw.endpoint}/health"], capture_output=True, text=True, timeout=20)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"health": "true"}
    put = subprocess.run([*base, "-d", '{"key":"%s","value":"%s"}' % (b64("c"), b64("url")),
                          f"{gw.endpoint}/v3/kv/put"], capture_output=True, text=True, timeout=20)
    assert put.returncode == 0 and '"revision":"2"' in put.stdout, (put.stdout, put.stderr)
    got = subprocess.run([*base, "-d", '{"key":"%s"}' % b64("c"), f"{gw.endpoint}/v3/kv/range"],
                         capture_output=True, text=True, timeout=20)
    assert json.loads(got.stdout)["kvs"][0]["value"] == b64("url")
