"""The fault suite's checks on hand-made histories: each must accept the good and name the bad."""

from __future__ import annotations

from securekv.testing.history_checks import (
    Event,
    EventKind,
    KVKind,
    KVOp,
    LeaseCall,
    LeaseLog,
    WatchSegment,
    check_kv,
    check_leases,
    check_watch,
    replay,
)

K = b"/kv/k0"
PUT, DEL = EventKind.PUT, EventKind.DELETE


def put(client: int, value: bytes, call: int, ret: int | None, revision: int = 0) -> KVOp:
    return KVOp(client, KVKind.PUT, K, call, ret, value=value, revision=revision)


def get(client: int, value: bytes | None, call: int, ret: int) -> KVOp:
    return KVOp(client, KVKind.GET, K, call, ret, value=value)


def test_kv_accepts_a_linearizable_history_with_pending_ops() -> None:
    ref = [Event(2, K, PUT, b"a"), Event(3, K, PUT, b"b"), Event(4, K, DEL)]
    ops = [
        put(0, b"a", 0, 10, revision=2),
        put(1, b"b", 5, None),  # pending, and it did take effect (rev 3)
        get(2, b"b", 20, 30),
        KVOp(0, KVKind.DELETE, K, 31, 40, revision=4, deleted=1),
        put(1, b"never", 41, None),  # pending without effect: dropped
        KVOp(2, KVKind.CAS, K, 50, 60, value=b"c", expected=b"zz", ok=False),
        get(2, None, 61, 70),
    ]
    report = check_kv(ops, ref, prefix=b"/kv/")
    assert report.result.ok, report.result.explain()
    assert report.violations == 0 and report.lost == () and report.dropped_pending == 1


def test_kv_finds_a_stale_read() -> None:
    ref = [Event(2, K, PUT, b"a"), Event(3, K, PUT, b"b")]
    ops = [put(0, b"a", 0, 10, 2), put(0, b"b", 11, 20, 3), get(1, b"a", 21, 30)]
    report = check_kv(ops, ref)
    assert report.violations == 1
    assert "cannot place" in report.result.explain()


def test_kv_finds_a_lost_write_and_a_value_nobody_wrote() -> None:
    ref = [Event(2, K, PUT, b"a"), Event(3, K, PUT, b"ghost")]
    ops = [put(0, b"a", 0, 10, 2), put(0, b"b", 11, 20, 3)]
    report = check_kv(ops, ref, prefix=b"/kv/")
    assert len(report.lost) == 1 and "acknowledged at revision 3" in report.lost[0]
    assert "b'ghost'" in report.lost[0]
    assert len(report.phantoms) == 1 and "no client wrote" in report.phantoms[0]


def test_kv_successful_cas_and_delete_must_be_in_the_history() -> None:
    ref = [Event(2, K, PUT, b"a")]
    ops = [put(0, b"a", 0, 10, 2),
           KVOp(1, KVKind.CAS, K, 11, 20, value=b"c", expected=b"a", ok=True, revision=3),
           KVOp(1, KVKind.DELETE, K, 21, 30, revision=4, deleted=1)]
    report = check_kv(ops, ref)
    assert len(report.lost) == 2


def seg(member: str, start: int, revs: list[int], confirmed: int) -> WatchSegment:
    return WatchSegment(member, start, tuple(Event(r, K, PUT, f"v{r}".encode()) for r in revs), confirmed)


REF = [Event(r, K, PUT, f"v{r}".encode()) for r in range(2, 9)] + [Event(9, b"/other", PUT, b"x")]


def test_watch_complete_across_reconnects() -> None:
    report = check_watch("w", [seg("m1", 1, [2, 3, 4], 4), seg("m2", 5, [5, 6, 7, 8], 9)], REF, b"/kv/")
    assert report.gaps == () and report.errors == () and report.expected == 7 and report.delivered == 7


def test_watch_gap_duplicate_and_order() -> None:
    gap = check_watch("w", [seg("m1", 1, [2, 3], 3), seg("m2", 5, [5, 6], 6)], REF, b"/kv/")
    assert gap.gaps == ("rev 4 PUT b'/kv/k0'=b'v4' never delivered",)
    dup = check_watch("w", [seg("m1", 1, [2, 3], 3), seg("m2", 3, [3, 4], 4)], REF, b"/kv/")
    assert any("delivered twice" in e for e in dup.errors)
    order = check_watch("w", [seg("m1", 1, [2, 4, 3], 4)], REF, b"/kv/")
    assert any("out of order" in e for e in order.errors)
    early = check_watch("w", [seg("m1", 5, [4, 5], 5)], REF, b"/kv/")
    assert any("before the stream's start revision" in e for e in early.errors)


def test_watch_wrong_value_is_an_error_not_a_gap() -> None:
    bad = WatchSegment("m1", 2, (Event(2, K, PUT, b"other"),), 2)
    report = check_watch("w", [bad], REF, b"/kv/")
    assert report.gaps == () and "the final history has" in report.errors[0]


def test_leases() -> None:
    revoked = LeaseLog(0x10, 3, 0, keepalives=(LeaseCall(5, 6, 3), LeaseCall(21, 22, 0), LeaseCall(23, 24, 3, "m2")),
                       revoked=20)
    fine = LeaseLog(0x11, 3, 0, keepalives=(LeaseCall(5, 6, 3),), abandoned=6)
    report = check_leases([revoked, fine], [(b"/lease/10/0", 0x10), (b"/lease/11/0", 0x11), (b"/lease/x", 0)],
                          {0x10: -1, 0x11: -1}, expiry_deadline_passed=[0x11])
    assert report.errors == (
        "lease 10: a keep-alive invoked after its revoke was acknowledged renewed it (TTL 3, via m2)",
        "key b'/lease/10/0' survived the revoke of its lease 10",
        "key b'/lease/11/0' survived the expiry of its lease 11",
    )
    alive = check_leases([fine], [], {0x11: 2}, expiry_deadline_passed=[0x11])
    assert alive.errors == ("lease 11 is still alive (TTL 2) long after its last renewal",)
    assert check_leases([fine], [], {0x11: -1}, [0x11]).errors == ()


def test_replay() -> None:
    ref = [Event(2, K, PUT, b"a"), Event(3, b"/kv/k1", PUT, b"b"), Event(4, K, DEL), Event(5, b"/x", PUT, b"c")]
    assert replay(ref, b"/kv/") == {b"/kv/k1": b"b"}
