"""Compaction, HashKV, watch history (``events_between``) and restore from backend rows."""

from __future__ import annotations

import pytest

from mvcc_support import Node, del_req, put_req, raises, range_req, txn_req
from securekv.mvcc import MVCCStore
from securekv.proto import kv_pb2, rpc_pb2

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE


@pytest.fixture
def n() -> Node:
    node = Node()
    node.put("a", "1")   # 2
    node.put("a", "2")   # 3
    node.put("b", "1")   # 4
    node.delete("b")     # 5
    node.put("c", "1")   # 6
    node.put("a", "3")   # 7
    return node


def test_compact_errors_and_response(n: Node) -> None:
    r = n.compact(8)
    assert r.error is not None and r.error.code == "OUT_OF_RANGE"
    assert r.error.message == "etcdserver: mvcc: required revision is a future revision"
    r = n.compact(4)
    assert r.error is None and r.response.header.revision == 7 and r.revision == 7
    assert n.store.compact_revision == 4 and n.store.current_revision == 7  # no new revision
    for rev in (4, 3):
        r = n.compact(rev)
        assert r.error.message == "etcdserver: mvcc: required revision has been compacted"
    assert n.compact(7).error is None  # the current revision may be compacted


def test_reads_after_compaction(n: Node) -> None:
    n.compact(4)
    assert n.value("a", rev=4) == b"2"  # the compact revision itself stays readable
    assert n.get("a", "\0", revision=4).count == 2
    with raises("required revision has been compacted"):
        n.get("a", revision=3)
    assert n.value("a", rev=5) == b"2" and n.value("b", rev=5) is None and n.value("c", rev=6) == b"1"
    assert n.value("a") == b"3"
    # metadata survives compaction
    kv = n.get("a").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 7, 3)
    # a txn range at a compacted revision fails before any write
    e = n.fails(txn_req([], [put_req("x", "1"), range_req("a", revision=3)]))
    assert e.message == "etcdserver: mvcc: required revision has been compacted"


def test_compaction_drops_rows_and_deleted_keys(n: Node) -> None:
    r = n.compact(5)
    # a@2 superseded by a@3 (<= 5); b's life ended at 5: b@4 and its tombstone go
    assert r.kv.deletes == ((2, 0), (4, 0), (5, 0))
    assert r.kv.compact_revision == 5 and r.kv.puts == ()
    assert n.store.get(b"b") is None
    assert n.get("b", revision=5).count == 0
    size = n.store.size_bytes
    assert n.compact(7).kv.deletes == ((3, 0),)
    assert n.store.size_bytes < size


def test_hash_kv(n: Node) -> None:
    h7, c = n.store.hash_kv()
    assert c == -1 and h7 == n.store.hash_kv(7)[0]
    h5 = n.store.hash_kv(5)[0]
    assert h5 != h7
    with raises("future revision"):
        n.store.hash_kv(8)
    other = Node()
    for req in (put_req("a", "1"), put_req("a", "2"), put_req("b", "1"), del_req("b")):
        other.ok(req)
    assert other.store.hash_kv()[0] == h5  # same history up to 5, same hash
    n.compact(5)
    with raises("required revision has been compacted"):
        n.store.hash_kv(5)
    assert n.store.hash_kv()[1] == 5


def test_events_between(n: Node) -> None:
    evs = n.store.events_between(2, 7, b"a", b"\0", prev_kv=True)
    got = [(e.type, e.kv.key, e.kv.mod_revision, e.prev_kv.value) for e in evs]
    assert got == [(PUT, b"a", 2, b""), (PUT, b"a", 3, b"1"), (PUT, b"b", 4, b""), (DELETE, b"b", 5, b"1"),
                   (PUT, b"c", 6, b""), (PUT, b"a", 7, b"2")]
    assert [e.kv.mod_revision for e in n.store.events_between(3, 5, b"b")] == [4, 5]
    assert n.store.events_between(8, 100, b"a", b"\0") == []
    # a DELETE event's kv holds only the key and the deletion revision (etcd)
    (dele,) = n.store.events_between(5, 5, b"b")
    assert dele.kv == kv_pb2.KeyValue(key=b"b", mod_revision=5)
    n.compact(4)
    with raises("required revision has been compacted"):
        n.store.events_between(3, 7, b"a")
    assert [e.kv.mod_revision for e in n.store.events_between(4, 7, b"a", b"\0")] == [4, 5, 6, 7]


def test_restore_from_persisted_rows() -> None:
    """Replaying the applier's KVWriteBatch rows into a table and restoring gives the same store."""
    n = Node()
    rows: dict[tuple[int, int], object] = {}
    compact_rev = -1

    def persist(r) -> None:
        nonlocal compact_rev
        if r.kv is None:
            return
        for row in r.kv.puts:
            rows[(row.main, row.sub)] = row
        for key in r.kv.deletes:
            rows.pop(key)
        if r.kv.compact_revision is not None:
            compact_rev = r.kv.compact_revision

    n.grant(5)
    for req in (put_req("a", "1"), put_req("b", "2", lease=5), txn_req([], [put_req("c", "3"), del_req("a")]),
                put_req("a", "4"), put_req("b", "5", lease=5)):
        persist(n.apply(req))
    persist(n.compact(4))
    persist(n.apply(del_req("c")))
    restored = MVCCStore.restore(reversed(list(rows.values())), compact_revision=compact_rev,
                                 current_revision=n.store.current_revision)
    assert restored.current_revision == n.store.current_revision == 7
    assert restored.compact_revision == 4
    assert restored.hash_kv() == n.store.hash_kv()
    assert restored.size_bytes == n.store.size_bytes and len(restored) == len(n.store) == 2
    for rev in (0, 4, 5, 6, 7):
        req = range_req("\0", "\0", revision=rev)
        assert restored.range(req) == n.store.range(req)
    assert restored.events_between(4, 7, b"\0", b"\0", True) == n.store.events_between(4, 7, b"\0", b"\0", True)
    # the restored store keeps counting revisions where the old one stopped
    tw = restored.write()
    tw.put(b"z", b"1", 0)
    assert tw.end().revision == 8


def test_restore_of_nothing() -> None:
    s = MVCCStore.restore([])
    assert s.current_revision == 1 and s.compact_revision == -1 and len(s) == 0
    s = MVCCStore.restore([], compact_revision=9, current_revision=9)
    assert s.current_revision == 9
    with raises("required revision has been compacted"):
        s.range(rpc_pb2.RangeRequest(key=b"a", revision=8))
