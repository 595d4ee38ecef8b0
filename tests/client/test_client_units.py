"""In-process tests of the formatting and parsing pieces (no server needed)."""

from __future__ import annotations

import hashlib
import os

import pytest

from securekv.cli.ctl_cmd import hoist_globals
from securekv.client import SnapshotError, compare, key_range, op_put, prefix_end
from securekv.client import boltread, gofmt, gojson, table
from securekv.client.snapshot import save_snapshot
from securekv.client.txnparse import TxnInputError, argify, parse_compare, parse_op
from securekv.proto import kv_pb2, rpc_pb2


def test_go_json_layout() -> None:
    resp = rpc_pb2.TxnResponse(succeeded=True)
    resp.header.revision = 8
    resp.header.cluster_id = 2**64 - 1
    r = resp.responses.add()
    r.response_range.header.revision = 8
    r.response_range.kvs.add(key=b"k1", create_revision=7, mod_revision=7, version=1, value=b"v1")
    r.response_range.count = 1
    resp.responses.add().response_put.header.revision = 8
    assert gojson.dumps(gojson.to_go(resp)) == (
        '{"header":{"cluster_id":18446744073709551615,"revision":8},"succeeded":true,"responses":['
        '{"Response":{"ResponseRange":{"header":{"revision":8},"kvs":[{"key":"azE=","create_revision":7,'
        '"mod_revision":7,"version":1,"value":"djE="}],"count":1}}},{"Response":{"ResponsePut":{"header":{"revision":8}}}}]}')
    ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"<&>", mod_revision=9))
    assert gojson.dumps(gojson.to_go(ev)) == '{"type":1,"kv":{"key":"PCY+","mod_revision":9}}'
    assert gojson.dumps({"a": "<&>"}) == '{"a":"\\u003c\\u0026\\u003e"}'


def test_table_layout() -> None:
    assert table.render(["ID", "Status", "is leader"], [["bdae9bbc11dd390d", "started", "true"]]) == (
        "+------------------+---------+-----------+\n"
        "|        ID        | STATUS  | IS LEADER |\n"
        "+------------------+---------+-----------+\n"
        "| bdae9bbc11dd390d | started |      true |\n"
        "+------------------+---------+-----------+\n")


@pytest.mark.parametrize("seconds,text", [(0.004390295, "4.390295ms"), (0.0000015, "1.5µs"), (1.5, "1.5s"),
                                          (90, "1m30s"), (7200, "2h0m0s"), (0, "0s"), (2e-7, "200ns")])
def test_go_duration(seconds: float, text: str) -> None:
    assert gofmt.duration(seconds) == text


def test_parse_duration_and_humanize() -> None:
    assert gofmt.parse_duration("1m30s") == 90 and gofmt.parse_duration("500ms") == 0.5
    with pytest.raises(ValueError, match="invalid duration"):
        gofmt.parse_duration("abc")
    assert [gofmt.humanize_bytes(n) for n in (9, 20480, 1_234_567, 82854982)] == ["9 B", "20 kB", "1.2 MB", "83 MB"]


def test_ranges() -> None:
    assert prefix_end(b"a/") == b"a0" and prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\0"
    assert key_range("", prefix=True) == (b"\0", b"\0")
    assert key_range("k", from_key=True) == (b"k", b"\0")
    assert key_range("a", "c") == (b"a", b"c")


def test_txn_language() -> None:
    assert argify('put k3 "hello world"') == ["put", "k3", "hello world"]
    assert argify("put k 'a b'") == ["put", "k", "a b"]
    cmp = parse_compare('mod("k1") > "0"')
    assert (cmp.key, cmp.result, cmp.target, cmp.mod_revision) == (b"k1", rpc_pb2.Compare.GREATER, rpc_pb2.Compare.MOD, 0)
    assert parse_compare('val("k") != "x\\n"').value == b"x\n"
    assert parse_op("put k v --prev-kv") == op_put("k", "v", prev_kv=True)
    assert parse_op("get a --prefix").request_range.range_end == b"b"
    assert parse_op("del a z").request_delete_range.range_end == b"z"
    for line, message in [("bogus", "malformed comparison: bogus"),
                          ('size("k") > "0"', 'malformed comparison: size("k") > "0" (unknown target size)'),
                          ('mod("k") > "x"', 'invalid txn compare request: mod("k") > "x"')]:
        with pytest.raises(TxnInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
            parse_compare(line)
    with pytest.raises(TxnInputError, match="invalid txn request: frob k v"):
        parse_op("frob k v")
    assert compare("value", "k", "=", "v").value == b"v"


def test_global_flags_anywhere() -> None:
    assert hoist_globals(["get", "k", "-w", "json", "--hex", "--endpoints=x"]) == \
        ["-w", "json", "--hex", "--endpoints=x", "get", "k"]
    assert hoist_globals(["put", "k", "--", "-w"]) == ["put", "k", "--", "-w"]
    assert hoist_globals(["get", "k", "-wjson"]) == ["-w", "json", "get", "k"]


def test_crc32c_vector() -> None:
    assert boltread.crc32c(b"123456789") == 0xE3069283


def test_bolt_rejects_non_bolt(tmp_path) -> None:
    p = tmp_path / "x.db"
    p.write_bytes(b"\0" * 8192)
    with pytest.raises(boltread.BoltError, match="^invalid database$"):
        boltread.snapshot_status(p)


class _FakeMaintenance:
    """Stands in for the server side of Maintenance.Snapshot (the client code is under test)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def Snapshot(self, request, timeout=None, wait_for_ready=None):
        total = sum(len(c) for c in self.chunks)
        sent = 0
        for c in self.chunks:
            sent += len(c)
            yield rpc_pb2.SnapshotResponse(blob=c, remaining_bytes=total - sent)


def test_snapshot_save_verifies_and_is_atomic(tmp_path) -> None:
    body = os.urandom(4096 * 3)
    digest = hashlib.sha256(body).digest()
    seen = []
    target = tmp_path / "snap.db"
    n = save_snapshot(_FakeMaintenance([body[:5000], body[5000:], digest]), target,
                      progress=lambda done, total: seen.append((done, total)))
    assert n == len(body) + 32 and target.read_bytes() == body + digest
    assert seen[-1] == (n, n) and oct(target.stat().st_mode & 0o777) == "0o600"
    bad = tmp_path / "bad.db"
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        save_snapshot(_FakeMaintenance([body, b"\0" * 32]), bad)
    with pytest.raises(SnapshotError, match=r"sha256 checksum not found \[bytes: 100\]"):
        save_snapshot(_FakeMaintenance([b"x" * 100]), bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]  # nothing half-written left behind
