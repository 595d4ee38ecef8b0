"""Property test: the store against a trivially correct model (a dict snapshot per revision).

Random puts, range deletes, txns and compactions go through the applier; after each step every
readable revision is compared with the model (values and create/mod/version), compacted and
future revisions must fail with etcd's errors, and the watch history must equal the model's
change log."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mvcc_support import Node, cmp, del_req, put_req, range_req, txn_req
from securekv.mvcc import in_range, validate_txn
from securekv.proto import kv_pb2
from securekv.rpctypes import EtcdError

KEYS = [b"a", b"ab", b"b", b"c\xff", b"d"]
RANGES = [(b"a", b""), (b"a", b"b"), (b"a", b"\0"), (b"b", b"\0"), (b"\0", b"\0"), (b"c", b"d"), (b"d", b"a")]
VALUES = [b"", b"x", b"y"]

keys = st.sampled_from(KEYS)
ranges = st.sampled_from(RANGES)
values = st.sampled_from(VALUES)
write_ops = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("del"), ranges),
)
steps = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("del"), ranges),
    st.tuples(st.just("txn"), keys, values, st.lists(write_ops, max_size=3), st.lists(write_ops, max_size=3)),
    st.tuples(st.just("compact"), st.integers(min_value=-2, max_value=3)),
)


class Model:
    """snapshots[rev] = {key: (value, create, mod, version)}; events[rev] = [(type, key, value)]."""

    def __init__(self) -> None:
        self.snapshots: list[dict] = [{}, {}]  # index = revision; revision 0 unused
        self.events: dict[int, list] = {}
        self.compacted = -1

    @property
    def rev(self) -> int:
        return len(self.snapshots) - 1

    def write(self, ops: list) -> None:
        cur = dict(self.snapshots[-1])
        rev = self.rev + 1
        evs = []
        for o in ops:
            if o[0] == "put":
                _, k, v = o
                old = cur.get(k)
                cur[k] = (v, old[1] if old else rev, rev, old[3] + 1 if old else 1)
                evs.append((kv_pb2.Event.PUT, k, v))
            else:
                _, (k, end) = o
                for key in sorted(x for x in cur if in_range(x, k, end)):
                    del cur[key]
                    evs.append((kv_pb2.Event.DELETE, key, b""))
        if evs:
            self.snapshots.append(cur)
            self.events[rev] = evs


def _req(o):
    return put_req(o[1], o[2]) if o[0] == "put" else del_req(*o[1])


def _check(node: Node, model: Model) -> None:
    store = node.store
    assert store.current_revision == model.rev
    assert store.compact_revision == model.compacted
    assert len(store) == len(model.snapshots[-1])
    for rev in range(1, model.rev + 1):
        for k, end in RANGES:
            req = range_req(k, end, revision=rev)
            if rev < model.compacted:
                try:
                    store.range(req)
                except EtcdError as e:
                    assert e.message.endswith("required revision has been compacted")
                    continue
                raise AssertionError(f"read at compacted revision {rev} succeeded")
            resp = store.range(req)
            snap = model.snapshots[rev]
            want = sorted((key, *meta) for key, meta in snap.items() if in_range(key, k, end))
            got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs]
            assert got == want, (rev, k, end)
            assert resp.count == len(want) and resp.header.revision == model.rev
    try:
        store.range(range_req(b"a", revision=model.rev + 1))
    except EtcdError as e:
        assert e.message.endswith("required revision is a future revision")
    else:
        raise AssertionError("future read succeeded")
    # History is complete after the compact revision (etcd also drops a tombstone *at* it).
    start = max(model.compacted + 1, 1)
    got = [(e.kv.mod_revision, e.type, e.kv.key, e.kv.value) for e in store.events_between(start, model.rev, b"\0", b"\0")]
    want = [(rev, *ev) for rev in range(start, model.rev + 1) for ev in model.events.get(rev, [])]
    assert got == want


@settings(max_examples=250, deadline=None)
@given(st.lists(steps, max_size=14))
def test_store_matches_model(ops: list) -> None:
    node, model = Node(quota_bytes=-1), Model()
    for o in ops:
        kind = o[0]
        if kind in ("put", "del"):
            r = node.apply(_req(o))
            assert r.error is None
            model.write([o])
        elif kind == "txn":
            _, k, v, then, else_ = o
            req = txn_req([cmp("value", k, "=", v)], [_req(x) for x in then], [_req(x) for x in else_])
            try:
                validate_txn(req)
            except EtcdError as e:
                assert "duplicate key" in e.message
                continue  # the API layer refuses it: never proposed
            holds = model.snapshots[-1].get(k, (None,))[0] == v
            r = node.apply(req)
            assert r.error is None and r.response.succeeded is holds
            model.write(then if holds else else_)
        else:
            rev = model.rev + o[1]
            r = node.compact(rev)
            if rev <= model.compacted:
                assert r.error.message.endswith("required revision has been compacted")
            elif rev > model.rev:
                assert r.error.message.endswith("required revision is a future revision")
            else:
                assert r.error is None
                model.compacted = rev
        _check(node, model)
