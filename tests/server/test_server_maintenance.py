"""Maintenance, cluster and HTTP endpoints; gRPC-level errors; the PyPI etcd3 client."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from server_harness import REPO, clean_stderr


def test_status_members_snapshot_defrag(server, tmp_path: Path) -> None:
    server.ctl("put", "a", "1")
    status = json.loads(server.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
    assert status["version"] == "3.4.23"
    assert status["leader"] == status["header"]["member_id"] and status["dbSize"] > 0
    assert status["raftIndex"] >= 1 and status["raftTerm"] >= 1
    members = server.ctl("member", "list").stdout.strip().split(", ")
    assert members[0] == f"{status['header']['member_id']:x}"
    assert members[1:] == ["started", "m1", f"https://127.0.0.1:{server.peer_port}", server.endpoint, "false"]
    assert "is healthy: successfully committed proposal" in server.ctl("endpoint", "health").stderr + \
        server.ctl("endpoint", "health").stdout
    snap = tmp_path / "snap.db"
    out = server.ctl("snapshot", "save", str(snap))
    assert f"Snapshot saved at {snap}" in out.stdout
    assert snap.stat().st_size % 512 == 32
    import hashlib
    import struct

    data = snap.read_bytes()
    assert data[16:20] == struct.pack("<I", 0xED0CDAED)  # a bbolt file (meta page magic), as etcd's
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    if server.kind == "securekv":
        assert not list((server.data_dir / "member").glob(".snapshot-*"))  # temp copies removed
    assert server.ctl("defrag").stdout.strip() == f"Finished defragmenting etcd member[{server.endpoint}]"
    assert server.ctl("alarm", "list").stdout == ""
    hashkv = json.loads(server.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]
    assert hashkv["HashKV"]["hash"] != 0
    bad = server.ctl("move-leader", "1234", check=False)
    assert "bad leader transferee" in clean_stderr(bad.stderr)


def _https(member, path: str) -> tuple[int, bytes]:
    c = member.certs
    ctx = ssl.create_default_context(cafile=str(c.ca))
    ctx.load_cert_chain(str(c.client_cert), str(c.client_key))
    try:
        with urllib.request.urlopen(f"{member.endpoint}{path}", context=ctx, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_endpoints_on_client_port_and_metrics_listener(server) -> None:
    assert _https(server, "/health") == (200, b'{"health":"true"}')
    code, body = _https(server, "/version")
    assert code == 200 and json.loads(body) == {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}
    server.ctl("put", "m", "1")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "etcd_server_has_leader 1" in text and "etcd_mvcc_db_total_size_in_bytes" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/health", timeout=10) as resp:
        assert resp.read() == b'{"health":"true"}'


def test_metrics_content(member) -> None:
    member.ctl("put", "m", "1")
    member.ctl("get", "m")
    with urllib.request.urlopen(f"http://127.0.0.1:{member.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",'
            'grpc_type="unary"} 1.0') in text
    assert "grpc_server_handling_seconds" not in text  # only with --metrics extensive, as etcd
    assert "securekv_server_certificate_expiry_seconds{" in text
    assert "etcd_debugging_mvcc_watcher_total" in text and "securekv_server_leases" in text
    assert "etcd_disk_wal_fsync_duration_seconds_count" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{member.metrics_port}/version", timeout=10) as resp:
        assert json.loads(resp.read()) == {"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}


def _kv(member):
    from securekv.proto import rpc_pb2_grpc

    c = member.certs
    creds = grpc.ssl_channel_credentials(c.ca.read_bytes(), c.client_key.read_bytes(), c.client_cert.read_bytes())
    ch = grpc.secure_channel(f"127.0.0.1:{member.port}", creds, options=[("grpc.max_send_message_length", 8 << 20)])
    return ch, rpc_pb2_grpc.KVStub(ch)


def test_grpc_errors_have_etcds_codes_and_messages(server) -> None:
    from securekv.proto import rpc_pb2

    ch, kv = _kv(server)
    with ch:
        cases = [
            (lambda: kv.Put(rpc_pb2.PutRequest(key=b"", value=b"v")), grpc.StatusCode.INVALID_ARGUMENT,
             "etcdserver: key is not provided"),
            (lambda: kv.Range(rpc_pb2.RangeRequest(key=b"")), grpc.StatusCode.INVALID_ARGUMENT,
             "etcdserver: key is not provided"),
            (lambda: kv.Put(rpc_pb2.PutRequest(key=b"big", value=b"x" * 1_600_000)), grpc.StatusCode.INVALID_ARGUMENT,
             "etcdserver: request is too large"),
            (lambda: kv.Range(rpc_pb2.RangeRequest(key=b"a", revision=99)), grpc.StatusCode.OUT_OF_RANGE,
             "etcdserver: mvcc: required revision is a future revision"),
            (lambda: kv.Put(rpc_pb2.PutRequest(key=b"a", lease=77)), grpc.StatusCode.NOT_FOUND,
             "etcdserver: requested lease not found"),
            (lambda: kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"v", ignore_value=True)),
             grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided"),
        ]
        for call, code, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert (info.value.code(), info.value.details()) == (code, message)
        # A range_end before the key is an empty range, not an error.
        resp = kv.Range(rpc_pb2.RangeRequest(key=b"b", range_end=b"a"))
        assert resp.count == 0 and resp.header.revision == 1
        # Malformed protobuf bytes: rejected by the transport, nothing changes.
        bad = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            bad(b"\x0a\xff\xff\xff\xff\x0f")
        assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        assert kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")).header.revision == 1


ETCD3_SCRIPT = r"""
import sys, etcd3
host, port, ca, cert, key = sys.argv[1:6]
c = etcd3.client(host=host, port=int(port), ca_cert=ca, cert_cert=cert, cert_key=key, timeout=10)
c.put("/p/a", "1")
value, meta = c.get("/p/a")
assert value == b"1", value
events, cancel = c.watch_prefix("/p/")
c.put("/p/b", "2")
ev = next(events)
assert ev.key == b"/p/b" and ev.value == b"2", ev
cancel()
ok, _ = c.transaction(compare=[c.transactions.value("/p/a") == "1"],
                      success=[c.transactions.put("/p/a", "3")], failure=[])
assert ok
lease = c.lease(30)
c.put("/p/l", "x", lease=lease)
assert lease.remaining_ttl > 0 and lease.keys == [b"/p/l"]
lease.refresh()
lease.revoke()
assert c.get("/p/l")[0] is None
print("etcd3 ok", c.status().version)
"""


def test_pypi_etcd3_client(server) -> None:
    c = server.certs
    env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", ETCD3_SCRIPT, "127.0.0.1", str(server.port), str(c.ca),
                           str(c.client_cert), str(c.client_key)], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "etcd3 ok 3.4.23"
