"""Watch hub behaviour, as etcd 3.4's watch server shows it to clients."""

from __future__ import annotations

import pytest
from watch_support import Harness, create, events_of, expected_events

from securekv.errors import UsageError
from securekv.proto import kv_pb2, rpc_pb2
from securekv.rpctypes import WATCH_DUPLICATE_ID_REASON
from securekv.watch import EMPTY_RANGE_REASON, HubConfig

NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
NODELETE = rpc_pb2.WatchCreateRequest.NODELETE
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE


def summary(resp: rpc_pb2.WatchResponse) -> dict:
    """Fields that differ from the default, like etcd's JSON output."""
    out: dict = {}
    if resp.header.revision:
        out["rev"] = resp.header.revision
    for name in ("watch_id", "created", "canceled", "compact_revision", "cancel_reason", "fragment"):
        value = getattr(resp, name)
        if value:
            out[name] = value
    if resp.events:
        out["events"] = [(e.type, e.kv.key) for e in resp.events]
    return out


# -- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, expected",
    [
        ([0, 0, 0], [0, 1, 2]),
        ([7, 0, 0], [7, 0, 1]),
        ([0, 1, 0], [0, 1, 2]),
        ([1, 0, 0, 0], [1, 0, 2, 3]),
        ([0, 5, 5], [0, 5, -1]),
        ([3, 3, 0], [3, -1, 0]),
    ],
)
def test_watch_ids(requested: list[int], expected: list[int]) -> None:
    h = Harness()
    stream = h.hub.open_stream()
    for wid in requested:
        create(stream, b"k", watch_id=wid)
    responses = h.drain(stream)
    assert [r.watch_id for r in responses] == expected
    assert all(r.created for r in responses)
    for r in responses:
        if r.watch_id == -1:
            assert r.canceled and r.cancel_reason == WATCH_DUPLICATE_ID_REASON
        else:
            assert not r.canceled and r.cancel_reason == ""


def test_ids_are_per_stream() -> None:
    h = Harness()
    a, b = h.hub.open_stream(), h.hub.open_stream()
    assert a.id != b.id
    create(a, b"x")
    create(b, b"x")
    assert [r.watch_id for r in h.drain(a)] == [0]
    assert [r.watch_id for r in h.drain(b)] == [0]


def test_auto_id_skips_ids_in_use_and_does_not_reuse_canceled_ones() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"k")          # 0
    s.cancel(0)
    create(s, b"k")          # 1, not 0 again
    create(s, b"k", watch_id=2)
    create(s, b"k")          # 3
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 1, "created": True},
        {"rev": 1, "canceled": True},
        {"rev": 1, "watch_id": 1, "created": True},
        {"rev": 1, "watch_id": 2, "created": True},
        {"rev": 1, "watch_id": 3, "created": True},
    ]


# -- create / start revision -----------------------------------------------------------------


def test_created_comes_first_then_history_in_revision_order() -> None:
    h = Harness()
    for i in range(3):
        h.put(b"a", b"%d" % i)  # revs 2, 3, 4
    s = h.hub.open_stream()
    create(s, b"a", start_revision=3)
    got = [summary(r) for r in h.drain(s)]
    assert got == [
        {"rev": 4, "created": True},
        {"rev": 3, "events": [(PUT, b"a")]},
        {"rev": 4, "events": [(PUT, b"a")]},
    ]


def test_start_revision_zero_means_current_plus_one() -> None:
    h = Harness()
    h.put(b"a")
    s = h.hub.open_stream()
    create(s, b"a")
    h.put(b"a", b"new")
    responses = h.drain(s)
    assert [summary(r) for r in responses] == [{"rev": 2, "created": True}, {"rev": 3, "events": [(PUT, b"a")]}]
    assert responses[1].events[0].kv.value == b"new"


def test_future_start_revision_waits() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"a", start_revision=4)
    h.put(b"a", b"2")
    h.put(b"a", b"3")
    h.put(b"a", b"4")
    h.put(b"a", b"5")
    got = h.drain(s)
    assert [r.header.revision for r in got] == [1, 4, 5]
    assert [r.events[0].kv.value for r in got[1:]] == [b"4", b"5"]


def test_created_responses_keep_request_order_even_with_history_in_between() -> None:
    h = Harness()
    h.put(b"a")
    h.put(b"b")
    s = h.hub.open_stream()
    create(s, b"a", start_revision=1)
    create(s, b"b", start_revision=1)
    got = [summary(r) for r in h.drain(s)]
    created = [i for i, r in enumerate(got) if r.get("created")]
    assert [got[i].get("watch_id", 0) for i in created] == [0, 1]
    first_event = {r.get("watch_id", 0): i for i, r in reversed(list(enumerate(got))) if "events" in r}
    assert first_event[0] > created[0] and first_event[1] > created[1]


@pytest.mark.parametrize(
    "key, range_end, puts, seen",
    [
        (b"", b"", [b"\0", b"a"], [b"\0"]),                       # empty key means "\0"
        (b"", b"\0", [b"a", b"z", b"\xff"], [b"a", b"z", b"\xff"]),  # everything
        (b"b", b"\0", [b"a", b"b", b"c"], [b"b", b"c"]),            # from key
        (b"a", b"c", [b"a", b"ab", b"b", b"c", b"ca"], [b"a", b"ab", b"b"]),
        (b"foo", b"fop", [b"fo", b"foo", b"foo/x", b"fop"], [b"foo", b"foo/x"]),  # prefix
        (b"k", b"", [b"k", b"k1", b"j"], [b"k"]),
    ],
)
def test_key_ranges(key: bytes, range_end: bytes, puts: list[bytes], seen: list[bytes]) -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, key, range_end)
    for k in puts:
        h.put(k)
    assert [e.kv.key for r in h.drain(s) for e in r.events] == seen


@pytest.mark.parametrize("key, range_end", [(b"b", b"a"), (b"a", b"a")])
def test_empty_range_is_refused(key: bytes, range_end: bytes) -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, key, range_end)
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 1, "watch_id": -1, "created": True, "canceled": True, "cancel_reason": EMPTY_RANGE_REASON}
    ]
    assert h.hub.statistics().watchers == 0


def test_reject_create_keeps_request_order() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"a")
    reason = "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    s.reject_create(reason)
    create(s, b"b")
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 1, "created": True},
        {"rev": 1, "watch_id": -1, "created": True, "canceled": True, "cancel_reason": reason},
        {"rev": 1, "watch_id": 1, "created": True},
    ]


# -- events ----------------------------------------------------------------------------------


def test_events_of_one_revision_travel_together() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"a", b"z")
    h.put(b"b", b"old")
    rev = h.txn([("put", b"a", b"1"), ("del", b"b", b""), ("put", b"c", b"3"), ("put", b"zz", b"out")])
    got = h.drain(s)
    assert [summary(r) for r in got[1:]] == [
        {"rev": 2, "events": [(PUT, b"b")]},
        {"rev": rev, "events": [(PUT, b"a"), (DELETE, b"b"), (PUT, b"c")]},
    ]
    deletion = got[2].events[1]
    assert (deletion.kv.mod_revision, deletion.kv.create_revision, deletion.kv.version, deletion.kv.value) == (
        rev, 0, 0, b"")


@pytest.mark.parametrize(
    "filters, expected",
    [
        ([], [(PUT, b"k"), (PUT, b"k"), (DELETE, b"k")]),
        ([NOPUT], [(DELETE, b"k")]),
        ([NODELETE], [(PUT, b"k"), (PUT, b"k")]),
        ([NOPUT, NODELETE], []),
    ],
)
@pytest.mark.parametrize("replay", [False, True])
def test_filters(filters: list[int], expected: list, replay: bool) -> None:
    h = Harness()
    s = h.hub.open_stream()
    if not replay:
        create(s, b"k", filters=filters)
    h.put(b"k")
    h.put(b"k")
    h.delete(b"k")
    if replay:
        create(s, b"k", filters=filters, start_revision=1)
    got = h.drain(s)
    assert got[0].created
    assert [(e.type, e.kv.key) for r in got[1:] for e in r.events] == expected
    assert all(r.events for r in got[1:]), "a fully filtered revision sends nothing"


@pytest.mark.parametrize("replay", [False, True])
def test_prev_kv_only_when_asked(replay: bool) -> None:
    h = Harness()
    s = h.hub.open_stream()
    if not replay:
        create(s, b"k", prev_kv=True)
        create(s, b"k")
    h.put(b"k", b"one")
    h.put(b"k", b"two")
    h.delete(b"k")
    if replay:
        create(s, b"k", prev_kv=True, start_revision=2)
        create(s, b"k", start_revision=2)
    got = h.drain(s)
    with_prev = [(e.type, e.prev_kv.value if e.HasField("prev_kv") else None) for r in got if r.watch_id == 0
                 for e in r.events]
    without = [e.HasField("prev_kv") for r in got if r.watch_id == 1 for e in r.events]
    assert with_prev == [(PUT, None), (PUT, b"one"), (DELETE, b"two")]
    assert without == [False, False, False]


def test_fragment_splits_large_responses_only_when_asked() -> None:
    cfg = HubConfig(max_response_bytes=300, max_pending_bytes=1 << 20)
    h = Harness(cfg)
    s = h.hub.open_stream()
    create(s, b"a", b"b", fragment=True)
    create(s, b"a", b"b")
    rev = h.txn([("put", b"a%03d" % i, b"x" * (i * 7 % 60)) for i in range(20)])
    got = h.drain(s)
    frag = [r for r in got if r.watch_id == 0 and not r.created]
    whole = [r for r in got if r.watch_id == 1 and not r.created]
    assert len(whole) == 1 and len(whole[0].events) == 20 and not whole[0].fragment
    assert len(frag) > 2
    assert [r.fragment for r in frag] == [True] * (len(frag) - 1) + [False]
    assert all(r.header.revision == rev for r in frag)
    assert all(r.ByteSize() < 300 or len(r.events) == 1 for r in frag)
    for piece, following in zip(frag, frag[1:]):  # greedy: the next event would not have fitted
        size = following.events[0].ByteSize()
        assert piece.ByteSize() + 1 + (1 if size < 128 else 2) + size >= 300
    merged = [e.kv.key for r in frag for e in r.events]
    assert merged == [b"a%03d" % i for i in range(20)]


def test_fragment_keeps_a_single_huge_event_whole() -> None:
    h = Harness(HubConfig(max_response_bytes=100))
    s = h.hub.open_stream()
    create(s, b"a", fragment=True)
    h.put(b"a", b"x" * 1000)
    got = h.drain(s)
    assert len(got) == 2 and not got[1].fragment and len(got[1].events[0].kv.value) == 1000


# -- compaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("start, compacted", [(2, True), (4, True), (5, False), (6, False)])
def test_compacted_start_revision(start: int, compacted: bool) -> None:
    h = Harness()
    for _ in range(5):
        h.put(b"k")  # revs 2..6
    h.compact(5)
    s = h.hub.open_stream()
    create(s, b"k", start_revision=start)
    got = [summary(r) for r in h.drain(s)]
    assert got[0] == {"rev": 6, "created": True}
    if compacted:
        # a separate response, header revision 0 as etcd sends it
        assert got[1:] == [{"canceled": True, "compact_revision": 5}]
        assert h.hub.statistics().watchers == 0
    else:
        assert [g["rev"] for g in got[1:]] == list(range(start, 7))


def test_compaction_overtakes_an_unsynced_watcher() -> None:
    cfg = HubConfig(max_pending_responses=2)
    h = Harness(cfg)
    s = h.hub.open_stream()
    create(s, b"k")
    for _ in range(6):
        h.put(b"k")  # revs 2..7; only the first two fit
    assert s.statistics().unsynced == 1
    h.compact(6)
    got = [summary(r) for r in h.drain(s)]
    assert got == [
        {"rev": 1, "created": True},
        {"rev": 2, "events": [(PUT, b"k")]},
        {"rev": 3, "events": [(PUT, b"k")]},
        {"canceled": True, "compact_revision": 6},
    ]


def test_compacted_error_from_history_cancels_the_watcher() -> None:
    h = Harness()
    for _ in range(3):
        h.put(b"k")
    h.store.compacted = 3  # the store forgot history without telling the hub
    s = h.hub.open_stream()
    create(s, b"k", start_revision=2)
    got = [summary(r) for r in h.drain(s)]
    assert got[0]["created"]
    assert got[1:] == [{"canceled": True, "compact_revision": 3}]


# -- cancel / close --------------------------------------------------------------------------


def test_cancel() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"k")
    h.put(b"k")
    s.handle(rpc_pb2.WatchRequest(cancel_request=rpc_pb2.WatchCancelRequest(watch_id=0)))
    h.put(b"k")
    s.cancel(42)  # unknown: etcd sends nothing
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 1, "created": True},
        {"rev": 2, "events": [(PUT, b"k")]},
        {"rev": 2, "canceled": True},
    ]
    assert h.hub.statistics().watchers == 0


def test_close_stream_drops_everything() -> None:
    h = Harness()
    s = h.hub.open_stream()
    for _ in range(3):
        create(s, b"k")
    h.put(b"k")
    s.close()
    assert h.hub.statistics() == h.hub.statistics().__class__(0, 0, 0, 0, 0)
    assert h.hub.stream(s.id) is None
    assert s.next_responses(10) == []
    with pytest.raises(UsageError):
        create(s, b"k")
    h.put(b"k")  # no watcher left to notify


def test_wakeup_only_for_streams_with_news() -> None:
    h = Harness()
    a, b = h.hub.open_stream(), h.hub.open_stream()
    create(a, b"a")
    create(b, b"b")
    h.drain(a)
    h.drain(b)
    h.wakeups.clear()
    h.put(b"a")
    assert h.wakeups == [a.id]
    h.wakeups.clear()
    h.put(b"zzz")
    assert h.wakeups == []


def test_notify_rejects_old_revisions_and_recovers_from_gaps() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"k")
    h.put(b"k")
    with pytest.raises(UsageError):
        h.hub.notify(2, [])
    # The applier skipped notifying revision 3: the watcher re-reads it from history.
    rev3, _ = h.store.txn([("put", b"k", b"3")])
    rev4, evs4 = h.store.txn([("put", b"k", b"4")])
    h.hub.notify(rev4, evs4)
    got = h.drain(s)
    assert [r.events[0].kv.value for r in got[1:]] == [b"v", b"3", b"4"]
    assert [r.header.revision for r in got[1:]] == [2, rev3, rev4]


def test_advance_replays_the_gap_from_history() -> None:
    h = Harness()
    s = h.hub.open_stream()
    create(s, b"k")
    create(s, b"k", start_revision=4)
    for i in range(4):
        h.store.txn([("put", b"k", b"%d" % i)])  # revs 2..5 without notify
    h.hub.advance(h.store.revision)
    got = h.drain(s)
    assert [r.header.revision for r in got if r.watch_id == 0 and r.events] == [2, 3, 4, 5]
    assert [r.header.revision for r in got if r.watch_id == 1 and r.events] == [4, 5]


# -- progress --------------------------------------------------------------------------------


def test_progress_request_when_synced() -> None:
    h = Harness()
    s = h.hub.open_stream()
    s.request_progress()  # no watchers: answered at once
    create(s, b"k")
    h.put(b"other")
    s.handle(rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 1, "watch_id": -1},
        {"rev": 1, "created": True},
        {"rev": 2, "watch_id": -1},
    ]


def test_progress_request_waits_until_every_watcher_is_synced() -> None:
    h = Harness(HubConfig(max_pending_responses=2, catchup_revisions=2))
    for i in range(10):
        h.put(b"k", b"%d" % i)  # revs 2..11
    s = h.hub.open_stream()
    create(s, b"k", start_revision=2)
    create(s, b"other")
    s.request_progress()
    s.request_progress()  # coalesces with the first
    got = h.drain(s, batch=1)
    progress = [i for i, r in enumerate(got) if r.watch_id == -1]
    assert len(progress) == 1
    p = progress[0]
    assert got[p].header.revision == 11
    assert max(i for i, r in enumerate(got) if r.events) < p, "progress must follow every event"
    assert len([r for r in got if r.events]) == 10


def test_progress_notify_ticks() -> None:
    h = Harness(HubConfig(progress_interval=10.0))
    s = h.hub.open_stream()
    create(s, b"a", progress_notify=True)
    create(s, b"b", progress_notify=True)
    create(s, b"c")
    h.drain(s)
    h.hub.tick_progress(0.0)   # arms the timer
    h.hub.tick_progress(9.9)
    assert h.drain(s) == []
    h.put(b"a")
    h.hub.tick_progress(10.0)
    # "a" just sent an event: its progress is elided; "b" was idle.
    assert [summary(r) for r in h.drain(s)] == [
        {"rev": 2, "events": [(PUT, b"a")]},
        {"rev": 2, "watch_id": 1},
    ]
    h.hub.tick_progress(15.0)
    assert h.drain(s) == []
    h.hub.tick_progress(20.0)
    assert [summary(r) for r in h.drain(s)] == [{"rev": 2}, {"rev": 2, "watch_id": 1}]


def test_progress_notify_skips_unsynced_watchers() -> None:
    h = Harness(HubConfig(max_pending_responses=1, progress_interval=1.0))
    s = h.hub.open_stream()
    create(s, b"k", progress_notify=True)
    h.hub.tick_progress(0.0)
    for _ in range(3):
        h.put(b"k")
    assert s.statistics().unsynced == 1
    h.hub.tick_progress(1.0)
    got = h.drain(s)
    assert all(r.events or r.created for r in got)


# -- bounded memory --------------------------------------------------------------------------


def test_slow_consumer_is_bounded_and_catches_up_exactly() -> None:
    cfg = HubConfig(max_pending_responses=8, max_pending_bytes=2000, catchup_revisions=5)
    h = Harness(cfg)
    s = h.hub.open_stream()
    create(s, b"k", b"l", prev_kv=True)
    for i in range(500):
        h.put(b"k%d" % (i % 7), b"x" * (i % 50))
        stats = s.statistics()
        assert stats.pending_responses <= 8 + 1  # + the created response
        assert stats.pending_bytes <= 2000
    assert s.statistics().unsynced == 1
    got = h.drain(s, batch=3)
    assert events_of(got, 0) == expected_events(h.store, b"k", b"l", 2, prev_kv=True)
    assert s.statistics().unsynced == 0
    # back in sync: new events flow directly again
    calls = len(h.store.history_calls)
    h.put(b"k1")
    assert len(h.drain(s)) == 1 and len(h.store.history_calls) == calls


def test_history_calls_are_bounded_chunks() -> None:
    h = Harness(HubConfig(catchup_revisions=10, catchup_calls_per_fill=3))
    for _ in range(100):
        h.put(b"noise")
    s = h.hub.open_stream()
    create(s, b"k", start_revision=1)  # nothing matches: catch-up spans several polls
    assert all(end - start < 10 for start, end in h.store.history_calls)
    assert len(h.store.history_calls) == 3
    assert s.statistics().unsynced == 1 and s.id in h.wakeups
    got = h.drain(s)
    assert [r.created for r in got] == [True]
    assert s.statistics().unsynced == 0
    assert h.store.history_calls[-1][1] == h.store.revision


def test_single_response_larger_than_the_byte_bound_still_goes_out() -> None:
    h = Harness(HubConfig(max_pending_bytes=100))
    s = h.hub.open_stream()
    create(s, b"k")
    h.put(b"k", b"x" * 500)
    h.put(b"k", b"y" * 500)
    got = h.drain(s, batch=1)
    assert [len(r.events[0].kv.value) for r in got[1:]] == [500, 500]


def test_accepting_backpressure() -> None:
    h = Harness(HubConfig(max_pending_control=3))
    s = h.hub.open_stream()
    for _ in range(3):
        s.request_progress()
    assert s.accepting
    s.request_progress()
    assert not s.accepting
    s.next_responses(1)
    assert s.accepting


@pytest.mark.parametrize("watch_id", [0, 1, 300, 2**40, -5])
@pytest.mark.parametrize("fragment", [False, True])
def test_pending_bytes_are_the_exact_wire_size(watch_id: int, fragment: bool) -> None:
    h = Harness(HubConfig(max_response_bytes=200, max_pending_bytes=1 << 20, max_pending_responses=1000))
    s = h.hub.open_stream()
    create(s, b"a", b"b", watch_id=watch_id, fragment=fragment, prev_kv=watch_id % 2 == 0)
    h.drain(s)
    for i in range(150):
        h.txn([("put", b"a%d" % j, b"x" * (i * j % 97)) for j in range(i % 5 + 1)])
    pending = s.statistics().pending_bytes
    got = h.drain(s)
    assert len(got) >= 150 and pending == sum(r.ByteSize() for r in got)
    assert any(r.fragment for r in got) == fragment
