"""The deterministic applier: replay/skip rules, determinism across members, leases, alarms and
the quota (NOSPACE) rules, all driven with real InternalRaftRequest entries."""

from __future__ import annotations

import pytest

from mvcc_support import IRR, Node, cmp, del_req, entry, put_req, range_req, txn_req
from securekv.apply import Applier
from securekv.lease import Lessor, LeaseRow
from securekv.mvcc import MVCCStore
from securekv.proto import kv_pb2, rpc_pb2

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
NOSPACE = rpc_pb2.AlarmType.Value("NOSPACE")
CORRUPT = rpc_pb2.AlarmType.Value("CORRUPT")
NONE = rpc_pb2.AlarmType.Value("NONE")
GET, ACTIVATE, DEACTIVATE = rpc_pb2.AlarmRequest.GET, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.AlarmRequest.DEACTIVATE


def _alarm(action: int, alarm: int = NONE, member: int = 0) -> rpc_pb2.AlarmRequest:
    return rpc_pb2.AlarmRequest(action=action, alarm=alarm, memberID=member)


# A log exercising every request kind, including requests that fail.
LOG = [
    rpc_pb2.LeaseGrantRequest(ID=0x10, TTL=30),
    rpc_pb2.LeaseGrantRequest(ID=0x20, TTL=1),
    put_req("a", "1", lease=0x10),
    put_req("b", "2", lease=0x10),
    put_req("c", "3", lease=0x20),
    put_req("x", "0", lease=0x99),  # unknown lease: error
    txn_req([cmp("value", "a", "=", "1")], [put_req("d", "4"), del_req("c"), txn_req([], [range_req("a")])],
            [put_req("never", "1")]),
    rpc_pb2.LeaseCheckpointRequest(checkpoints=[rpc_pb2.LeaseCheckpoint(ID=0x10, remaining_TTL=12)]),
    del_req("a", "b", prev_kv=True),
    rpc_pb2.CompactionRequest(revision=4),
    rpc_pb2.CompactionRequest(revision=3),  # compacted: error
    rpc_pb2.LeaseRevokeRequest(ID=0x10),
    rpc_pb2.LeaseRevokeRequest(ID=0x10),  # gone: error
    _alarm(ACTIVATE, CORRUPT, 7),
    put_req("e", "5"),  # refused: corrupt
    _alarm(DEACTIVATE, CORRUPT, 7),
    rpc_pb2.LeaseGrantRequest(ID=0x20, TTL=5),  # exists: error
    put_req("e", "5"),
]


def _run(log) -> tuple[Node, list]:
    n = Node()
    out = []
    for req in log:
        r = n.apply(req)
        out.append((r.index, r.revision, r.response.SerializeToString(deterministic=True) if r.response else None,
                    r.error, [e.SerializeToString(deterministic=True) for e in r.events], r.kv, r.lease_puts,
                    r.lease_deletes, r.alarms and [a.SerializeToString() for a in r.alarms]))
    return n, out


def test_same_entries_give_the_same_state_on_two_members() -> None:
    n1, out1 = _run(LOG)
    n2, out2 = _run(LOG)
    assert out1 == out2
    assert n1.store.hash_kv() == n2.store.hash_kv()
    assert n1.store.current_revision == n2.store.current_revision
    assert n1.lessor.rows() == n2.lessor.rows()
    assert n1.applier.alarms.list() == n2.applier.alarms.list()
    errors = [r.error.message for r in n1.results if r.error]
    assert errors == [
        "etcdserver: requested lease not found",
        "etcdserver: mvcc: required revision has been compacted",
        "etcdserver: requested lease not found",
        "etcdserver: corrupt cluster",
        "etcdserver: lease already exists",
    ]
    assert n1.keys() == [b"d", b"e"]
    assert n1.applier.applied_index == len(LOG)


def test_the_lessor_clock_does_not_change_replicated_state() -> None:
    a, b = Node(), Node()
    for i, req in enumerate(LOG, 1):
        ra = a.applier.apply(i, entry(req), now=0.0)
        rb = b.applier.apply(i, entry(req), now=1000.0 + i)
        assert (ra.response, ra.error, ra.revision, ra.lease_puts) == (rb.response, rb.error, rb.revision, rb.lease_puts)
    assert a.store.hash_kv() == b.store.hash_kv() and a.lessor.rows() == b.lessor.rows()


def test_replayed_entries_are_skipped() -> None:
    n = Node()
    n.put("a", "1")
    r = n.applier.apply(1, entry(put_req("a", "again")))
    assert r.skipped and r.response is None and r.kv is None and r.revision == 2
    assert n.value("a") == b"1"
    # an applier restarted at consistent index 5 skips 1..5 and applies 6
    store = MVCCStore()
    ap = Applier(store, Lessor(min_ttl=1), applied_index=5)
    for i in range(1, 6):
        assert ap.apply(i, entry(put_req("k", str(i)))).skipped
    assert store.current_revision == 1
    r = ap.apply(6, entry(put_req("k", "6")))
    assert not r.skipped and r.revision == 2 and ap.applied_index == 6


def test_an_empty_entry_only_moves_the_index() -> None:
    n = Node()
    n.put("a", "1")
    r = n.applier.apply(2, IRR())
    assert r.error is None and r.response is None and r.kv is None and r.revision == 2
    assert n.applier.applied_index == 2 and n.store.current_revision == 2


def test_auth_enable_without_root_is_refused_like_etcd() -> None:
    n = Node()
    r = n.applier.apply(1, IRR(auth_enable=rpc_pb2.AuthEnableRequest()))
    assert r.error.message == "etcdserver: root user does not exist"
    assert n.applier.applied_index == 1 and not n.applier.auth.state.enabled and not r.auth_rows


# ------------------------------------------------------------------------------ leases
def test_lease_grant_and_checkpoint_rows() -> None:
    n = Node()
    r = n.apply(rpc_pb2.LeaseGrantRequest(ID=0x42, TTL=100))
    assert (r.response.ID, r.response.TTL, r.response.header.revision) == (0x42, 100, 1)
    assert r.lease_puts == (LeaseRow(0x42, 100, 0),) and r.kv is None
    r = n.apply(rpc_pb2.LeaseCheckpointRequest(checkpoints=[rpc_pb2.LeaseCheckpoint(ID=0x42, remaining_TTL=40)]))
    assert r.lease_puts == (LeaseRow(0x42, 100, 40),)
    assert n.apply(rpc_pb2.LeaseGrantRequest(ID=0x42, TTL=5)).error.message == "etcdserver: lease already exists"
    assert n.store.current_revision == 1  # leases do not create revisions


def test_lease_revoke_deletes_attached_keys_in_one_revision() -> None:
    n = Node()
    n.grant(0x1)
    n.grant(0x2)
    n.put("k/b", "1", lease=0x1)
    n.put("k/a", "2", lease=0x1)
    n.put("k/c", "3", lease=0x1)
    n.put("k/c", "3")              # re-put without a lease: detached
    n.put("k/d", "4", lease=0x1)
    n.put("k/d", "4", lease=0x2)   # moved to another lease
    n.txn([], [put_req("k/e", "5", lease=0x1)])
    n.put("k/f", "6", lease=0x1)
    n.delete("k/f")                # deleted: detached
    assert n.lessor.lookup(0x1).keys == {b"k/a", b"k/b", b"k/e"}
    rev = n.store.current_revision
    r = n.revoke(0x1)
    assert r.revision == rev + 1 == n.store.current_revision
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in r.events] == [
        (DELETE, b"k/a", rev + 1), (DELETE, b"k/b", rev + 1), (DELETE, b"k/e", rev + 1)]
    assert [(row.main, row.sub, row.tombstone) for row in r.kv.puts] == [(rev + 1, i, True) for i in range(3)]
    assert r.lease_deletes == (0x1,) and r.response.header.revision == rev + 1
    assert n.keys("k/", prefix=True) == [b"k/c", b"k/d"]
    assert 0x1 not in n.lessor
    e = n.apply(rpc_pb2.LeaseRevokeRequest(ID=0x1)).error
    assert e.code == "NOT_FOUND" and e.message == "etcdserver: requested lease not found"


def test_revoking_a_lease_without_keys_makes_no_revision() -> None:
    n = Node()
    n.grant(0x5)
    r = n.revoke(0x5)
    assert r.kv is None and r.events == () and r.revision == 1 and r.lease_deletes == (0x5,)


def test_restore_lease_attachments() -> None:
    n = Node()
    n.grant(0x1)
    n.put("a", "1", lease=0x1)
    n.put("b", "2")
    store = MVCCStore.restore([row for r in n.results if r.kv for row in r.kv.puts])
    lessor = Lessor(min_ttl=1)
    lessor.restore(n.lessor.rows(), now=0.0)
    ap = Applier(store, lessor, applied_index=n.index)
    ap.restore_lease_attachments()
    assert lessor.lookup(0x1).keys == {b"a"}
    r = ap.apply(n.index + 1, entry(rpc_pb2.LeaseRevokeRequest(ID=0x1)))
    assert [e.kv.key for e in r.events] == [b"a"]


# ------------------------------------------------------------------------------ alarms and quota
def test_alarm_requests() -> None:
    n = Node()
    r = n.apply(_alarm(ACTIVATE, NONE, 3))  # etcd crashes on this; we ignore it
    assert r.error is None and not r.response.alarms and r.alarms is None and len(n.applier.alarms) == 0
    r = n.apply(_alarm(ACTIVATE, NOSPACE, 3))
    assert [(a.memberID, a.alarm) for a in r.response.alarms] == [(3, NOSPACE)] and r.alarms is not None
    r = n.apply(_alarm(ACTIVATE, NOSPACE, 3))  # already active: answered, not changed
    assert len(r.response.alarms) == 1 and r.alarms is None
    n.apply(_alarm(ACTIVATE, CORRUPT, 1))
    assert [(a.memberID, a.alarm) for a in n.ok(_alarm(GET)).alarms] == [(3, NOSPACE), (1, CORRUPT)]
    assert [a.memberID for a in n.ok(_alarm(GET, CORRUPT)).alarms] == [1]
    r = n.apply(_alarm(DEACTIVATE, CORRUPT, 2))  # not active for member 2
    assert not r.response.alarms and r.alarms is None
    r = n.apply(_alarm(DEACTIVATE, CORRUPT, 1))
    assert [(a.memberID, a.alarm) for a in r.alarms] == [(3, NOSPACE)]
    n.applier.restore_alarms([(9, CORRUPT)])
    assert n.applier.alarms.corrupt and not n.applier.alarms.nospace


def test_corrupt_alarm_refuses_everything() -> None:
    n = Node()
    n.put("a", "1")
    n.grant(0x1)
    n.apply(_alarm(ACTIVATE, CORRUPT, 1))
    for req in (put_req("a", "2"), del_req("a"), txn_req([], [del_req("a")]), range_req("a"),
                rpc_pb2.CompactionRequest(revision=2), rpc_pb2.LeaseRevokeRequest(ID=0x1),
                rpc_pb2.LeaseGrantRequest(ID=0x2, TTL=5)):
        e = n.fails(req)
        assert (e.code, e.message) == ("DATA_LOSS", "etcdserver: corrupt cluster")


def _fill(n: Node) -> int:
    """Put 100-byte values until the quota refuses one; returns how many fitted."""
    for i in range(100):
        r = n.apply(put_req(f"k{i:02}", "v" * 100))
        if r.error is not None:
            return i
    raise AssertionError("quota never hit")


def test_nospace_alarm_behaviour() -> None:
    n = Node(quota_bytes=2000)
    assert n.applier.quota_ok(put_req("k", "v" * 100))
    fitted = _fill(n)
    assert fitted == 10  # 10 * (3 + 100 + 64) logical bytes + the 11th put's cost 359 >= 2000
    last = n.results[-1]
    assert (last.error.code, last.error.message) == ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
    assert last.kv is None and [(a.memberID, a.alarm) for a in last.alarms] == [(0x1234, NOSPACE)]
    assert n.applier.alarms.nospace and len(n.store) == 10
    # now every request that could add data is refused, even a tiny one ...
    assert not n.applier.quota_ok(put_req("t", ""))
    for req in (put_req("t", ""), txn_req([], [del_req("k00")], [put_req("t", "")]),
                rpc_pb2.LeaseGrantRequest(ID=0x9, TTL=5)):
        assert n.fails(req).message == "etcdserver: mvcc: database space exceeded"
    # ... while reads, deletes, delete-only txns, compaction and revokes go through
    assert n.get("k00").count == 1
    assert n.txn([], [del_req("k00")]).responses[0].response_delete_range.deleted == 1
    assert n.delete("k0", prefix=True).deleted == 9
    assert n.compact(n.store.current_revision).error is None
    assert n.applier.quota_ok(range_req("k"))
    # freed space is not enough: the alarm stays until disarmed
    assert n.fails(put_req("t", "")).message == "etcdserver: mvcc: database space exceeded"
    n.ok(_alarm(DEACTIVATE, NOSPACE, 0x1234))
    assert not n.applier.alarms.nospace and n.applier.quota_ok(put_req("t", ""))
    n.put("t", "fits again")


def test_quota_sizes() -> None:
    unlimited = Node(quota_bytes=-1)
    for i in range(30):
        unlimited.put(f"k{i}", "v" * 1000)
    default = Node(quota_bytes=0)  # etcd's 2 GiB default
    assert default.applier.quota_ok(put_req("k", "v" * 1_000_000))
    small = Node(quota_bytes=300)
    assert not small.applier.quota_ok(put_req("k", "v" * 50))  # 256 + 1 + 50 >= 300
    assert small.applier.quota_ok(del_req("k")) and small.applier.quota_ok(txn_req([], [del_req("k")]))
    # a txn costs its larger branch's puts
    assert not small.applier.quota_ok(txn_req([], [put_req("k", "")], [put_req("k", "v" * 50)]))
