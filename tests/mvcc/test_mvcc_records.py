"""The store over a RecordReader the way the server drives it: rows reach the reader only when a
lagging "committer" writes them (until then the store serves them from its pending map), and
the persisted key index is written in chunks while writes go on, then a restart rebuilds the
store from those chunks plus the rows after the checkpoint began. Checked against the same
dict-per-revision model as test_mvcc_model, after every step."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mvcc_support import Node, cmp, del_req, put_req, range_req, txn_req
from securekv.apply import Applier
from securekv.mvcc import MemoryRecords, MVCCStore, validate_txn
from securekv.mvcc.keyindex import ChunkError, decode_chunk, encode_chunk
from securekv.rpctypes import EtcdError
from test_mvcc_model import RANGES, KEYS, VALUES, Model, _check, _req

keys = st.sampled_from(KEYS)
ranges = st.sampled_from(RANGES)
values = st.sampled_from(VALUES)
write_ops = st.one_of(st.tuples(st.just("put"), keys, values), st.tuples(st.just("del"), ranges))
steps = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("del"), ranges),
    st.tuples(st.just("txn"), keys, values, st.lists(write_ops, max_size=3), st.lists(write_ops, max_size=3)),
    st.tuples(st.just("compact"), st.integers(min_value=-2, max_value=3)),
    st.tuples(st.just("commit"), st.integers(min_value=0, max_value=3)),
    st.tuples(st.just("chunk"), st.integers(min_value=1, max_value=3)),
    st.tuples(st.just("restart")),
)


class LaggingNode(Node):
    """A member whose backend (MemoryRecords) is written behind apply, like the node's committer."""

    def __init__(self) -> None:
        super().__init__(quota_bytes=-1)
        self.records = MemoryRecords()
        self.store = MVCCStore(self.records, auto_commit=False, value_cache_bytes=64)  # tiny cache
        self.applier = Applier(self.store, self.lessor, quota_bytes=-1)
        self.queue: list[Any] = []  # (batch, revision) not yet committed
        self.dropped: dict[int, tuple[bytes, ...]] = {}  # persisted dropped-key records
        self.ckpt: dict[str, Any] | None = None  # checkpoint being written
        self.done: dict[str, Any] | None = None  # last complete checkpoint

    def apply(self, req: Any) -> Any:
        r = super().apply(req)
        if r.kv is not None:
            self.queue.append((r.kv, self.store.current_revision))
        return r

    def commit(self, n: int) -> None:
        for _ in range(min(n, len(self.queue))):
            batch, rev = self.queue.pop(0)
            self.records.apply(batch)
            if batch.index_dropped:
                self.dropped[batch.compact_revision] = batch.index_dropped
            self.store.release(rev)

    def chunk(self, max_keys: int) -> None:
        """One step of a checkpoint (the server sends these through the same commit queue)."""
        if self.ckpt is None:
            self.ckpt = {"start": self.store.current_revision, "compact": self.store.compact_revision,
                         "chunks": [], "cursor": None}
        c = self.ckpt
        blob, c["cursor"] = self.store.index_chunk(c["cursor"], max_keys)
        c["chunks"].append(blob)
        if c["cursor"] is None:
            self.done, self.ckpt = c, None

    def restart(self) -> None:
        self.commit(len(self.queue))
        if self.done is None:
            store = MVCCStore.restore(self.records.rows(), compact_revision=self.store.compact_revision,
                                      records=self.records)
        else:
            c = self.done
            store = MVCCStore.load(
                self.records, chunks=c["chunks"], start_revision=c["start"], checkpoint_compact=c["compact"],
                dropped=[(rev, keys) for rev, keys in self.dropped.items() if rev > c["start"]],
                tail=[row for row in self.records.rows() if row.main > c["start"]],
                compact_revision=self.store.compact_revision, value_cache_bytes=64)
        assert store.current_revision == self.store.current_revision
        assert store.size_bytes == self.store.size_bytes
        assert store.hash_kv() == self.store.hash_kv()
        self.store = store
        self.applier.store = store
        self.ckpt = None  # a restart abandons a checkpoint in progress


@settings(max_examples=300, deadline=None)
@given(st.lists(steps, max_size=18))
def test_lagging_backend_and_checkpoints_match_model(ops: list) -> None:
    node, model = LaggingNode(), Model()
    for o in ops:
        kind = o[0]
        if kind in ("put", "del"):
            assert node.apply(_req(o)).error is None
            model.write([o])
        elif kind == "txn":
            _, k, v, then, else_ = o
            req = txn_req([cmp("value", k, "=", v)], [_req(x) for x in then], [_req(x) for x in else_])
            try:
                validate_txn(req)
            except EtcdError:
                continue
            holds = model.snapshots[-1].get(k, (None,))[0] == v
            r = node.apply(req)
            assert r.error is None and r.response.succeeded is holds
            model.write(then if holds else else_)
        elif kind == "compact":
            rev = model.rev + o[1]
            if model.compacted < rev <= model.rev:
                assert node.compact(rev).error is None
                model.compacted = rev
        elif kind == "commit":
            node.commit(o[1])
        elif kind == "chunk":
            node.chunk(o[1])
        else:
            node.restart()
        _check(node, model)
        # prev_kv in history (read from pending rows or the backend) matches the model
        start = max(model.compacted, 1)
        for ev in node.store.events_between(start, model.rev, b"\0", b"\0", prev_kv=True):
            rev = ev.kv.mod_revision
            if rev - 1 < max(model.compacted, 1):
                continue
            before = model.snapshots[rev - 1].get(ev.kv.key)
            assert (ev.prev_kv.value, ev.prev_kv.mod_revision) == ((before[0], before[2]) if before else (b"", 0))
    node.restart()
    _check(node, model)


def test_values_are_read_only_when_returned() -> None:
    """keys_only and count_only ranges load no value; a limited range loads only its page."""

    class Counting(MemoryRecords):
        loads = 0

        def get_many(self, refs):  # type: ignore[no-untyped-def]
            Counting.loads += len(refs)
            return super().get_many(refs)

    records = Counting()
    n = Node()
    n.store = store = MVCCStore(records, auto_commit=True, value_cache_bytes=0)
    n.applier = Applier(store, n.lessor)
    for i in range(50):
        n.put(f"k{i:02}", f"v{i}")
    Counting.loads = 0
    assert len(n.get("k", "l", keys_only=True).kvs) == 50
    assert n.get("k", "l", count_only=True).count == 50
    assert Counting.loads == 0
    resp = n.get("k", "l", limit=5)
    assert [kv.value for kv in resp.kvs] == [f"v{i}".encode() for i in range(5)] and resp.more
    assert Counting.loads == 5


def test_response_size_cap() -> None:
    n = Node()
    for i in range(20):
        n.put(f"k{i:02}", "v" * 100)
    req = range_req("k", "l")
    assert len(n.store.range(req, max_bytes=20 * 200).kvs) == 20
    try:
        n.store.range(req, max_bytes=1000)
    except EtcdError as e:
        assert e.code == "RESOURCE_EXHAUSTED" and "grpc: trying to send message larger than max (" in e.message
        assert e.message.endswith(" vs. 1000)")
    else:
        raise AssertionError("cap not enforced")
    # keys_only is charged without the values
    assert len(n.store.range(range_req("k", "l", keys_only=True), max_bytes=20 * 60).kvs) == 20


def test_chunk_round_trip_and_damage() -> None:
    from array import array

    items = [(b"a", 5, 0), (b"bb", 7 | (300 << 64), 0x1234), (b"c", array("q", [2, 1, 0, 8, 3 << 32, 13, 1]), 0)]
    keys, entries, leases = decode_chunk(encode_chunk(items))
    assert keys == [b"a", b"bb", b"c"] and entries == [e for _, e, _ in items] and leases == {b"bb": 0x1234}
    assert decode_chunk(encode_chunk([])) == ([], [], {})
    blob = encode_chunk(items)
    for bad in (blob[:-1], b"XXXX" + blob[4:], blob + b"\0", b""):
        try:
            decode_chunk(bad)
        except ChunkError:
            continue
        raise AssertionError(f"damaged chunk accepted: {bad!r}")


def test_restore_without_records_of_a_compacted_tombstone() -> None:
    """A key deleted and compacted away before the checkpoint began leaves nothing behind."""
    node = LaggingNode()
    node.put("a", "1")
    node.delete("a")
    node.put("b", "2")
    node.chunk(10)
    node.compact(node.store.current_revision)
    node.put("a", "3")
    node.restart()
    assert node.value("a") == b"3" and node.get("a").kvs[0].version == 1
    assert node.get("a").kvs[0].create_revision == node.store.current_revision


def test_checkpoint_interval_and_chunks_follow_the_index_size() -> None:
    """Keys with long histories make a big index: checkpoints come less often (their cost per
    write stays bounded) and chunks are cut by bytes, not only by key count."""
    from securekv.mvcc.checkpoint import BYTES_PER_REVISION, IndexCheckpointer

    store = MVCCStore()
    for i in range(20_000):
        tw = store.write()
        tw.put(b"k%d" % (i % 4), b"v", 0)
        tw.end()
    ck = IndexCheckpointer(store, chunk_keys=1000)
    assert ck.interval() >= (20_000 - 4) * 16 // BYTES_PER_REVISION
    chunks = []
    cursor = None
    while True:
        blob, cursor = store.index_chunk(cursor, 1000, max_bytes=100_000)
        chunks.append(blob)
        if cursor is None:
            break
    assert len(chunks) == 4  # each key's 5,000 records (80 KB) fill a chunk of their own
    keys = [k for blob in chunks for k in decode_chunk(blob)[0]]
    assert keys == [b"k0", b"k1", b"k2", b"k3"]
