"""Keyspace scale in the server: the store reads values and history from the backend, start-up
rebuilds the key index from its persisted checkpoint, response caps, index metrics."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import trio

from securekv.config import resolve
from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.server.node import Node
from securekv.server.persist import to_write_batches
from securekv.server.run import _State
from server_harness import clean_stderr

IRR = raft_internal_pb2.InternalRaftRequest


class _Hub:
    def notify(self, revision, events) -> None:
        pass

    def compact(self, revision) -> None:
        pass


def _state(tmp_path: Path) -> _State:
    return _State(resolve({"data_dir": str(tmp_path / "d")}, {}), 1, 2, lambda: 0.0)


def _snapshot(store) -> list:
    """Everything readable: every revision's full range, the history with prev_kv, the hash."""
    out = []
    for rev in range(max(store.compact_revision, 1), store.current_revision + 1):
        resp = store.range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
        out.append([(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs])
    start = max(store.compact_revision, 1)
    out.append([e.SerializeToString() for e in store.events_between(start, store.current_revision, b"\0", b"\0", True)])
    out.append(store.hash_kv())
    return out


async def test_index_checkpoints_ride_in_apply_batches_and_restart_uses_them(tmp_path: Path) -> None:
    """With a tiny checkpoint interval, chunks are written while writes go on; a restart after
    a crash (no final checkpoint) loads the last complete checkpoint and replays the tail."""
    state = _state(tmp_path)
    state.checkpointer.min_interval = 7
    state.checkpointer.chunk_keys = 3
    node = Node(wal=state.wal, backend=state.backend, applier=state.applier, hub=_Hub(), term=state.term,
                member_id=1, max_request_bytes=1 << 20, to_write_batch=to_write_batches)
    node.checkpointer = state.checkpointer
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.propose(IRR(lease_grant=rpc_pb2.LeaseGrantRequest(ID=77, TTL=600)))
        for i in range(60):
            key = b"k%02d" % (i % 17)
            if i % 11 == 5:
                await node.propose(IRR(delete_range=rpc_pb2.DeleteRangeRequest(key=key)))
            else:
                await node.propose(IRR(put=rpc_pb2.PutRequest(key=key, value=b"v%d" % i, lease=77 if i % 7 == 0 else 0)))
            if i == 30:
                await node.propose(IRR(compaction=rpc_pb2.CompactionRequest(revision=state.store.current_revision - 5)))
        await node.wait_committed(node.applier.applied_index)
        nursery.cancel_scope.cancel()
    assert state.checkpointer.completed >= 3
    before = _snapshot(state.store)
    leased = sorted(state.store.leased_keys())
    state.close()  # like a crash: no final checkpoint
    again = _state(tmp_path)
    try:
        assert again.store.dropped_records is not None
        assert _snapshot(again.store) == before
        assert sorted(again.store.leased_keys()) == leased
        assert sorted(again.lessor.time_to_live(77, 0.0)[2]) == sorted(k for k, _ in leased)
        # the checkpoint was used: the index came from chunks, not from every row
        head = again.checkpointer.head
        assert head is not None and head.start > 2
    finally:
        again.close()


def _big_values(member, n: int = 40, size: int = 2000) -> None:
    for i in range(0, n, 20):
        ops = "".join(f"put big{j:03d} {'x' * size}\n" for j in range(i, min(n, i + 20)))
        member.ctl("txn", stdin="\n" + ops + "\n\n")


def test_response_cap_and_lease_list_cap(make_member) -> None:
    m = make_member(extra=["--max-response-bytes", "30000"])
    _big_values(m)
    bad = m.ctl("get", "big", "--prefix", check=False)
    assert bad.returncode != 0
    assert "grpc: trying to send message larger than max (" in clean_stderr(bad.stderr)
    assert " vs. 30000)" in clean_stderr(bad.stderr)
    # the same keys without values, or a limited page, fit
    assert len(m.ctl("get", "big", "--prefix", "--keys-only").stdout.split()) == 40
    assert len(m.ctl("get", "big", "--prefix", "--limit", "5").stdout.splitlines()) == 10
    m.stop()
    m.extra = ["--max-response-bytes", "50"]  # a LeaseGrant answer (39 bytes) fits, 3 listed leases do not
    m.start()
    for i in range(3):
        m.ctl("lease", "grant", "100")
    bad = m.ctl("lease", "list", check=False)
    assert "grpc: trying to send message larger than max (" in clean_stderr(bad.stderr)
    assert " vs. 50)" in clean_stderr(bad.stderr)


def test_restart_loads_the_index_checkpoint_written_at_shutdown(make_member) -> None:
    m = make_member()
    _big_values(m, n=60, size=10)
    m.ctl("put", "big007", "again")
    m.ctl("del", "big008")
    rev = json.loads(m.ctl("get", "big", "-w", "json").stdout)["header"]["revision"]
    m.ctl("compaction", str(rev - 1))
    lease = m.ctl("lease", "grant", "600").stdout.split()[1]
    m.ctl("put", "leased", "v", "--lease", lease)

    def dump() -> list:
        out = json.loads(m.ctl("get", "", "--prefix", "-w", "json").stdout)
        return [(base64.b64decode(kv["key"]), kv.get("value"), kv["create_revision"], kv["mod_revision"],
                 kv["version"], kv.get("lease")) for kv in out["kvs"]]

    before = dump()
    m.stop()  # graceful: the whole index is checkpointed
    assert "key index checkpoint at revision" in m.output()
    m.start()
    assert dump() == before
    assert "(checkpoint + tail)" in m.output().rsplit("key index loaded", 1)[1].splitlines()[0]
    assert m.ctl("lease", "timetolive", lease, "--keys").stdout.strip().endswith("attached keys([leased])")
    assert m.ctl("get", "big007", "--rev", str(rev - 1), "--print-value-only").stdout == "again\n"
    # kill -9 afterwards: the checkpoint written at the last stop plus the tail
    m.ctl("put", "after", "kill")
    m.kill()
    m.start()
    assert m.ctl("get", "after", "--print-value-only").stdout == "kill\n"
    assert [kv for kv in dump() if kv[0] != b"after"] == before


def test_index_metrics(make_member) -> None:
    m = make_member()
    for i in range(5):
        m.ctl("put", f"m{i}", "v")
    m.ctl("get", "m", "--prefix")
    text = urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("securekv_mvcc_")}
    assert values["securekv_mvcc_index_keys"] == 5 and values["securekv_mvcc_index_live_keys"] == 5
    assert values["securekv_mvcc_index_revisions"] == 5 and values["securekv_mvcc_index_bytes"] > 0
    assert values["securekv_mvcc_value_cache_hits_total"] >= 5
    assert "securekv_mvcc_value_cache_misses_total" in values


def test_quota_follows_the_backend_file_and_raises_nospace_with_auth_on(make_member) -> None:
    """The front end compares the backend *file* with the quota (etcd's quotaKVServer) and
    proposes NOSPACE as the member itself, which the applier accepts with auth enabled. The
    quota is set between the logical size and the file size, so only the file check can refuse."""
    m = make_member()
    m.ctl("user", "add", "root:root-pw-1")
    m.ctl("auth", "enable")  # the client certificate's CN is root
    value = "x" * 20000
    for i in range(5):
        m.ctl("put", f"q{i}", value)
    m.stop()
    file_size = (m.data_dir / "member" / "db.sqlite").stat().st_size
    logical = 5 * (2 + 20000 + 64)
    quota = file_size + 10000  # a 20 KB put fits the logical size, not the file
    assert logical + 20000 + 256 < quota
    m.extra = ["--quota-backend-bytes", str(quota)]
    m.start()
    r = m.ctl("put", "q5", value, check=False)
    assert "etcdserver: mvcc: database space exceeded" in clean_stderr(r.stderr)
    # The member's own proposal is applied a moment after the refusal; each etcdctl call takes
    # far longer than that, so the first or second look normally sees it.
    for _ in range(20):
        if "alarm:NOSPACE" in m.ctl("alarm", "list").stdout:
            break
    else:
        raise AssertionError("NOSPACE was not raised")
    assert m.ctl("get", "q0", "--print-value-only").stdout == value + "\n"  # reads still work
