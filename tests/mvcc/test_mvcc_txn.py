"""Txn semantics (etcd 3.4): compares on every target with every operator, success/failure
branches, nested txns, request validation (too many ops, duplicate keys) and read-only txns."""

from __future__ import annotations

import pytest

from mvcc_support import Node, cmp, del_req, put_req, raises, range_req, txn_req
from securekv.mvcc import is_txn_readonly, validate_txn
from securekv.proto import rpc_pb2


@pytest.fixture
def n() -> Node:
    node = Node()
    node.grant(0x77)
    node.put("k", "m")            # 2: create 2, mod 2, version 1
    node.put("k", "m", lease=0x77)  # 3: mod 3, version 2, lease 0x77
    node.put("z", "a")            # 4
    return node


def _holds(n: Node, c: rpc_pb2.Compare) -> bool:
    return n.txn([c]).succeeded


@pytest.mark.parametrize(("target", "value", "expected"), [
    # (target, operand, {op: result}) for key "k": value m, version 2, create 2, mod 3, lease 0x77
    ("value", "m", {"=": True, "!=": False, ">": False, "<": False}),
    ("value", "l", {"=": False, "!=": True, ">": True, "<": False}),
    ("value", "n", {"=": False, "!=": True, ">": False, "<": True}),
    ("value", "", {"=": False, "!=": True, ">": True, "<": False}),
    ("version", 2, {"=": True, "!=": False, ">": False, "<": False}),
    ("version", 1, {"=": False, "!=": True, ">": True, "<": False}),
    ("create", 2, {"=": True, "!=": False, ">": False, "<": False}),
    ("create", 3, {"=": False, "!=": True, ">": False, "<": True}),
    ("mod", 3, {"=": True, "!=": False, ">": False, "<": False}),
    ("mod", 0, {"=": False, "!=": True, ">": True, "<": False}),
    ("lease", 0x77, {"=": True, "!=": False, ">": False, "<": False}),
    ("lease", 0, {"=": False, "!=": True, ">": True, "<": False}),
])
def test_compare_targets_and_operators(n: Node, target: str, value, expected: dict) -> None:
    for op_, want in expected.items():
        assert _holds(n, cmp(target, "k", op_, value)) is want, (target, op_, value)


def test_compare_on_missing_key(n: Node) -> None:
    # a missing key has version/create/mod/lease 0 ...
    assert _holds(n, cmp("version", "nope", "=", 0))
    assert _holds(n, cmp("create", "nope", "=", 0))
    assert _holds(n, cmp("mod", "nope", "<", 1))
    assert _holds(n, cmp("lease", "nope", "=", 0))
    # ... and no value: every value compare is false, even "!="
    for op_ in ("=", "!=", ">", "<"):
        assert not _holds(n, cmp("value", "nope", op_, ""))


def test_compare_over_a_range_needs_every_key(n: Node) -> None:
    n.put("r/1", "x")
    n.put("r/2", "x")
    assert _holds(n, cmp("value", "r/", "=", "x", range_end="r0"))
    n.put("r/2", "y")
    assert not _holds(n, cmp("value", "r/", "=", "x", range_end="r0"))
    assert _holds(n, cmp("version", "r/", ">", 0, range_end="r0"))
    assert _holds(n, cmp("mod", "r/", ">", 0, range_end="\0"))  # from-key compare range
    # an empty range behaves like a missing key
    assert _holds(n, cmp("version", "q/", "=", 0, range_end="q0"))
    assert not _holds(n, cmp("value", "q/", "!=", "x", range_end="q0"))


def test_all_compares_must_hold(n: Node) -> None:
    assert n.txn([cmp("value", "k", "=", "m"), cmp("version", "k", "=", 2)]).succeeded
    assert not n.txn([cmp("value", "k", "=", "m"), cmp("version", "k", "=", 3)]).succeeded
    assert n.txn([]).succeeded  # no compares: success


def test_success_and_failure_branches_one_revision(n: Node) -> None:
    rev = n.store.current_revision
    r = n.apply(txn_req([cmp("value", "k", "=", "m")],
                        [put_req("a", "1"), put_req("b", "2", prev_kv=True), range_req("a", "c"), del_req("z")],
                        [put_req("never", "x")]))
    resp = r.response
    assert resp.succeeded and resp.header.revision == rev + 1 == r.revision
    put_a, put_b, rng, dele = resp.responses
    assert put_a.response_put.header.revision == rev + 1
    assert not put_b.response_put.HasField("prev_kv")
    # reads inside the txn see its own earlier writes, at the txn's revision
    assert [(kv.key, kv.mod_revision) for kv in rng.response_range.kvs] == [(b"a", rev + 1), (b"b", rev + 1)]
    assert rng.response_range.header.revision == rev + 1
    assert dele.response_delete_range.deleted == 1
    # sub-revisions in op order: one event per write, all at one revision
    assert [(e.kv.key, e.kv.mod_revision) for e in r.events] == [(b"a", rev + 1), (b"b", rev + 1), (b"z", rev + 1)]
    assert [(row.main, row.sub) for row in r.kv.puts] == [(rev + 1, 0), (rev + 1, 1), (rev + 1, 2)]
    assert n.value("never") is None
    # failure branch
    resp = n.txn([cmp("value", "k", "=", "nope")], [put_req("never", "x")], [put_req("f", "1"), range_req("k")])
    assert not resp.succeeded and n.value("f") == b"1" and n.value("never") is None
    assert resp.responses[1].response_range.kvs[0].value == b"m"


def test_txn_without_writes_keeps_the_revision(n: Node) -> None:
    rev = n.store.current_revision
    resp = n.txn([cmp("value", "k", "=", "m")], [range_req("k"), del_req("nothing")])
    assert resp.header.revision == rev == n.store.current_revision
    assert resp.responses[1].response_delete_range.header.revision == rev


def test_nested_txn(n: Node) -> None:
    inner = txn_req([cmp("value", "z", "=", "a")], [put_req("in/then", "1"), range_req("k")], [put_req("in/else", "1")])
    inner_fail = txn_req([cmp("value", "z", "=", "no")], [put_req("in2/then", "1")], [put_req("in2/else", "1")])
    rev = n.store.current_revision
    resp = n.txn([cmp("version", "k", ">", 0)], [put_req("outer", "1"), inner, inner_fail])
    assert resp.succeeded and resp.header.revision == rev + 1
    nested = resp.responses[1].response_txn
    assert nested.succeeded and nested.header.revision == 0  # nested txn headers are empty (etcd)
    assert nested.responses[1].response_range.header.revision == rev + 1
    assert not resp.responses[2].response_txn.succeeded
    assert n.keys("in", prefix=True) == [b"in/then", b"in2/else"]
    assert n.get("outer").kvs[0].mod_revision == n.get("in/then").kvs[0].mod_revision == rev + 1


def test_nested_compares_see_the_state_before_the_txn(n: Node) -> None:
    # the outer branch writes z, but the nested compare is evaluated on the pre-txn state
    inner = txn_req([cmp("value", "z", "=", "a")], [put_req("seen", "old")], [put_req("seen", "new")])
    n.txn([], [put_req("z", "changed"), inner])
    assert n.value("seen") == b"old" and n.value("z") == b"changed"


def test_txn_errors_change_nothing(n: Node) -> None:
    e = n.fails(txn_req([], [put_req("a", "1"), put_req("b", "2", lease=0xdead)]))
    assert e.message == "etcdserver: requested lease not found"
    e = n.fails(txn_req([], [put_req("a", "1"), put_req("missing", ignore_value=True)]))
    assert e.message == "etcdserver: key not found"
    e = n.fails(txn_req([], [put_req("a", "1"), range_req("k", revision=99)]))
    assert e.message == "etcdserver: mvcc: required revision is a future revision"
    # errors only count on the branch that runs
    assert not n.txn([cmp("value", "k", "=", "x")], [put_req("b", "2", lease=0xdead)], [put_req("c", "3")]).succeeded
    e = n.fails(txn_req([], [txn_req([], [put_req("deep", lease=0xdead)])]))
    assert e.message == "etcdserver: requested lease not found"


def test_read_only_txn_served_without_the_log(n: Node) -> None:
    ro = txn_req([cmp("value", "k", "=", "m")], [range_req("k"), range_req("z")], [range_req("nope")])
    assert is_txn_readonly(ro)
    assert not is_txn_readonly(txn_req([], [range_req("k")], [del_req("k")]))
    assert not is_txn_readonly(txn_req([], [txn_req([], [range_req("k")])]))  # nested txn counts as a write
    resp = n.store.txn_readonly(ro)
    assert resp.succeeded and resp.header.revision == n.store.current_revision
    assert [r.response_range.kvs[0].value for r in resp.responses] == [b"m", b"a"]
    with raises("future revision"):
        n.store.txn_readonly(txn_req([], [range_req("k", revision=100)]))


# ------------------------------------------------------------------------------ validation
def test_too_many_ops() -> None:
    ops = [put_req(f"k{i}") for i in range(4)]
    validate_txn(txn_req([], ops), max_txn_ops=4)
    with raises("too many operations in txn request"):
        validate_txn(txn_req([], ops), max_txn_ops=3)
    with raises("too many operations in txn request"):
        validate_txn(txn_req([cmp("version", f"c{i}", "=", 0) for i in range(4)]), max_txn_ops=3)
    with raises("too many operations in txn request"):
        validate_txn(txn_req([], [], ops), max_txn_ops=3)
    # a nested txn gets what the outer level left over (etcd: maxTxnOps - opc)
    nested = txn_req([], [put_req("a"), put_req("b")])
    validate_txn(txn_req([], [nested, put_req("c")]), max_txn_ops=4)
    with raises("too many operations in txn request"):
        validate_txn(txn_req([], [nested, put_req("c"), put_req("d")]), max_txn_ops=4)
    validate_txn(txn_req([], [put_req(f"k{i}") for i in range(128)]))  # etcd's default 128


def test_empty_keys_and_empty_ops() -> None:
    with raises("key is not provided"):
        validate_txn(txn_req([cmp("version", "", "=", 0)]))
    for bad in (put_req(""), range_req(""), del_req("")):
        with raises("key is not provided"):
            validate_txn(txn_req([], [bad]))
    with raises("value is provided"):
        validate_txn(txn_req([], [], [put_req("k", "v", ignore_value=True)]))
    empty = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()])
    with raises("key not found"):
        validate_txn(empty)


@pytest.mark.parametrize("success", [
    [put_req("a"), put_req("a")],
    [put_req("a"), del_req("a")],
    [del_req("a", "c"), put_req("b")],
    [put_req("ab"), del_req("a", prefix=True)],
    [put_req("a"), txn_req([], [put_req("a")])],
    [del_req("a"), txn_req([], [], [put_req("a")])],
    [txn_req([], [put_req("x")]), txn_req([], [put_req("x")])],
    [txn_req([], [put_req("x")], [put_req("y")]), txn_req([], [put_req("y")])],
    [txn_req([], [del_req("x")]), put_req("x")],  # nested deletes count for the outer level
])
def test_duplicate_keys(success) -> None:
    with raises("duplicate key given in txn request"):
        validate_txn(txn_req([], success))
    with raises("duplicate key given in txn request"):
        validate_txn(txn_req([], [], success))


@pytest.mark.parametrize("success", [
    [put_req("a"), put_req("b")],
    [del_req("a"), del_req("a"), del_req("a", "z")],  # overlapping deletes are fine
    [put_req("a"), range_req("a"), range_req("a", "z")],
    [del_req("a", "c"), put_req("c")],  # range_end is exclusive
    [txn_req([], [put_req("x")], [put_req("x")])],  # then/else of one txn are exclusive
    [txn_req([], [put_req("x"), del_req("y")], [put_req("y")])],
    [put_req("d"), del_req("c", "\0")],  # etcd's interval for a from-key delete is empty
])
def test_not_duplicate_keys(success) -> None:
    validate_txn(txn_req([], success))


def test_puts_in_success_and_failure_may_share_keys() -> None:
    validate_txn(txn_req([], [put_req("a")], [put_req("a")]))
