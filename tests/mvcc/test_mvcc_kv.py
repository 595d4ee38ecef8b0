"""MVCC keyspace semantics (etcd 3.4): revisions, per-key metadata, Range, Put and DeleteRange."""

from __future__ import annotations

import pytest

from mvcc_support import Node, del_req, put_req, raises, range_req
from securekv.mvcc import MVCCStore, prefix_end, validate_delete_range, validate_put, validate_range
from securekv.proto import kv_pb2, rpc_pb2

DELETE = kv_pb2.Event.DELETE


@pytest.fixture
def n() -> Node:
    return Node()


def _meta(kv) -> tuple[int, int, int, int]:
    return kv.create_revision, kv.mod_revision, kv.version, kv.lease


# ------------------------------------------------------------------------------ revisions
def test_empty_store_is_at_revision_one() -> None:
    s = MVCCStore()
    assert s.current_revision == 1
    assert s.compact_revision == -1
    assert len(s) == 0
    r = s.range(range_req("a"))
    assert r.header.revision == 1 and r.count == 0 and not r.kvs and not r.more


def test_one_revision_per_write_and_key_metadata(n: Node) -> None:
    assert n.put("a", "1").header.revision == 2
    assert _meta(n.get("a").kvs[0]) == (2, 2, 1, 0)
    assert n.put("a", "2").header.revision == 3
    assert _meta(n.get("a").kvs[0]) == (2, 3, 2, 0)
    n.put("b", "x")
    assert n.store.current_revision == 4
    assert _meta(n.get("b").kvs[0]) == (4, 4, 1, 0)
    # same value again is still a new revision and version
    n.put("b", "x")
    assert _meta(n.get("b").kvs[0]) == (4, 5, 2, 0)


def test_delete_then_recreate_starts_a_new_life(n: Node) -> None:
    n.put("k", "v1")
    n.put("k", "v2")
    d = n.delete("k")
    assert d.deleted == 1 and d.header.revision == 4
    assert n.get("k").count == 0
    n.put("k", "v3")
    assert _meta(n.get("k").kvs[0]) == (5, 5, 1, 0)
    # history is still there
    assert n.value("k", rev=3) == b"v2"
    assert n.value("k", rev=4) is None
    assert _meta(n.get("k", revision=3).kvs[0]) == (2, 3, 2, 0)


def test_noop_delete_does_not_bump_the_revision(n: Node) -> None:
    n.put("a", "1")
    r = n.apply(del_req("zzz"))
    assert r.error is None and r.kv is None and r.events == ()
    assert r.response.deleted == 0 and r.response.header.revision == 2
    assert n.store.current_revision == 2


def test_delete_range_is_one_revision_with_prev_kvs(n: Node) -> None:
    for k in ("a", "b", "c", "d"):
        n.put(k, k.upper())
    r = n.apply(del_req("b", "d", prev_kv=True))
    assert r.response.deleted == 2
    assert [(kv.key, kv.value, kv.mod_revision) for kv in r.response.prev_kvs] == [(b"b", b"B", 3), (b"c", b"C", 4)]
    assert r.revision == 6 == n.store.current_revision
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.prev_kv.value) for e in r.events] == [
        (DELETE, b"b", 6, b"B"),
        (DELETE, b"c", 6, b"C"),
    ]
    # without prev_kv the response carries none
    assert not n.delete("a").prev_kvs
    assert n.keys() == [b"d"]


# ------------------------------------------------------------------------------ Range
@pytest.fixture
def filled(n: Node) -> Node:
    # rev 2..7: a=3 b=1 c=2 d=5 (two versions) e
    n.put("a", "3")        # 2
    n.put("b", "1")        # 3
    n.put("c", "2")        # 4
    n.put("d", "4")        # 5
    n.put("d", "5")        # 6
    n.put("e\xff", "0")    # 7
    return n


def test_range_end_prefix_and_from_key(filled: Node) -> None:
    assert filled.keys("b", "d") == [b"b", b"c"]
    assert filled.keys("b", "b") == []  # empty interval
    assert filled.keys("d", "b") == []  # range_end before key: empty, not an error
    assert filled.keys("c", "\0") == [b"c", b"d", "e\xff".encode()]  # from-key
    assert filled.keys("\0", "\0") == [b"a", b"b", b"c", b"d", "e\xff".encode()]  # everything
    assert filled.keys("e", prefix=True) == ["e\xff".encode()]
    assert prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff\xff") == b"\0" and prefix_end(b"") == b"\0"
    assert filled.keys("x") == [] and filled.get("a").count == 1


def test_limit_more_and_count(filled: Node) -> None:
    r = filled.get("a", "\0", limit=2)
    assert [kv.key for kv in r.kvs] == [b"a", b"b"] and r.more and r.count == 5
    r = filled.get("a", "\0", limit=5)
    assert len(r.kvs) == 5 and not r.more and r.count == 5
    r = filled.get("a", "\0", limit=0)
    assert len(r.kvs) == 5 and not r.more


def test_count_only_and_keys_only(filled: Node) -> None:
    r = filled.get("a", "\0", count_only=True)
    assert r.count == 5 and not r.kvs and not r.more
    r = filled.get("d", keys_only=True)
    assert r.kvs[0].value == b"" and r.kvs[0].key == b"d"
    assert _meta(r.kvs[0]) == (5, 6, 2, 0)


def test_historical_revision(filled: Node) -> None:
    r = filled.get("a", "\0", revision=4)
    assert [(kv.key, kv.value) for kv in r.kvs] == [(b"a", b"3"), (b"b", b"1"), (b"c", b"2")]
    assert r.header.revision == 7  # the header always carries the current revision
    assert filled.value("d", rev=5) == b"4" and filled.value("d", rev=6) == b"5"
    assert filled.get("a", "\0", revision=1).count == 0
    with raises("required revision is a future revision"):
        filled.get("a", revision=8)


@pytest.mark.parametrize(("target", "order", "expected"), [
    ("KEY", "NONE", "abcde"), ("KEY", "ASCEND", "abcde"), ("KEY", "DESCEND", "edcba"),
    ("VALUE", "ASCEND", "ebcad"), ("VALUE", "DESCEND", "dacbe"),
    ("VALUE", "NONE", "ebcad"),  # a non-KEY target without an order sorts ascending (etcd)
    ("CREATE", "DESCEND", "edcba"), ("MOD", "ASCEND", "abcde"), ("MOD", "DESCEND", "edcba"),
    ("VERSION", "DESCEND", "dabce"),  # ties keep key order (d has version 2)
    ("VERSION", "ASCEND", "abced"),
])
def test_sort_order_and_target(filled: Node, target: str, order: str, expected: str) -> None:
    keys = filled.keys("a", "\0", sort_target=target, sort_order=order)
    assert "".join(k[:1].decode() for k in keys) == expected


def test_sort_with_limit_sorts_everything_first(filled: Node) -> None:
    r = filled.get("a", "\0", sort_target="VALUE", sort_order="DESCEND", limit=2)
    assert [kv.key for kv in r.kvs] == [b"d", b"a"] and r.more and r.count == 5
    # etcd: with no sort *order* the limit applies while fetching (limit+1 keys), then the
    # default ascending sort of a non-KEY target runs over those only
    r = filled.get("a", "\0", sort_target="VALUE", limit=2)
    assert [kv.key for kv in r.kvs] == [b"b", b"c"] and r.more


def test_min_max_mod_and_create_revision(filled: Node) -> None:
    def keys(**kw):
        return "".join(k[:1].decode() for k in filled.keys("a", "\0", **kw))

    assert keys(min_mod_revision=4) == "cde"
    assert keys(max_mod_revision=4) == "abc"
    assert keys(min_mod_revision=3, max_mod_revision=5) == "bc"  # d was modified at 6
    assert keys(min_create_revision=5) == "de"
    assert keys(max_create_revision=3) == "ab"
    assert keys(min_create_revision=3, max_create_revision=5) == "bcd"
    r = filled.get("a", "\0", min_mod_revision=4, limit=1)
    assert [kv.key for kv in r.kvs] == [b"c"] and r.more and r.count == 5  # count is before filtering


def test_validation_errors() -> None:
    with raises("key is not provided"):
        validate_range(range_req(""))
    with raises("key is not provided"):
        validate_put(put_req("", "v"))
    with raises("value is provided"):
        validate_put(put_req("k", "v", ignore_value=True))
    with raises("lease is provided"):
        validate_put(put_req("k", lease=5, ignore_lease=True))
    with raises("key is not provided"):
        validate_delete_range(del_req(""))
    validate_put(put_req("k", ignore_value=True, ignore_lease=True))


# ------------------------------------------------------------------------------ Put options
def test_put_prev_kv(n: Node) -> None:
    r = n.put("k", "v1", prev_kv=True)
    assert not r.HasField("prev_kv")
    r = n.put("k", "v2", prev_kv=True)
    assert r.prev_kv.value == b"v1" and _meta(r.prev_kv) == (2, 2, 1, 0)
    assert not n.put("k", "v3").HasField("prev_kv")


def test_put_lease_ignore_value_ignore_lease(n: Node) -> None:
    n.grant(7)
    n.grant(8)
    n.put("k", "v", lease=7)
    assert n.get("k").kvs[0].lease == 7
    n.put("k", ignore_value=True, lease=8)  # new lease, value kept
    kv = n.get("k").kvs[0]
    assert (kv.value, kv.lease, kv.version) == (b"v", 8, 2)
    n.put("k", "w", ignore_lease=True)  # new value, lease kept
    kv = n.get("k").kvs[0]
    assert (kv.value, kv.lease, kv.version) == (b"w", 8, 3)
    r = n.put("k", ignore_value=True, ignore_lease=True, prev_kv=True)
    kv = n.get("k").kvs[0]
    assert (kv.value, kv.lease, kv.version, r.prev_kv.value) == (b"w", 8, 4, b"w")
    n.put("k", "x")  # no lease option: the lease is dropped
    assert n.get("k").kvs[0].lease == 0
    assert n.lessor.lookup(8).keys == frozenset()


def test_put_errors_change_nothing(n: Node) -> None:
    n.put("k", "v")
    assert "key not found" in str(n.fails(put_req("missing", ignore_value=True)))
    assert "key not found" in str(n.fails(put_req("missing", "v", ignore_lease=True)))
    e = n.fails(put_req("k", "v", lease=99))
    assert e.code == "NOT_FOUND" and e.message == "etcdserver: requested lease not found"


def test_write_responses_and_rows(n: Node) -> None:
    r = n.apply(put_req("k", "v"))
    assert r.revision == 2 and r.kv.revision == 2
    (row,) = r.kv.puts
    assert (row.main, row.sub, row.key, row.tombstone) == (2, 0, b"k", False)
    assert kv_pb2.KeyValue.FromString(row.value).value == b"v"
    r = n.apply(del_req("k"))
    (row,) = r.kv.puts
    assert (row.main, row.sub, row.tombstone) == (3, 0, True)
