"""Seeded random workloads against a model: every watcher sees exactly its ordered events.

Streams are read the way the server reads them (only after a wakeup, re-polling after every
non-empty batch), so a missing wakeup shows up as a stream that never drains.
"""

from __future__ import annotations

import random

import pytest
from watch_support import Harness, ev_tuple, expected_events

from securekv.proto import rpc_pb2
from securekv.watch import HubConfig, WatchStream

KEYS = [b"a", b"a1", b"a2", b"b", b"b1", b"c", b"d"]
RANGES = [(b"a", b""), (b"a", b"b"), (b"b", b"\0"), (b"", b"\0"), (b"a1", b"c"), (b"", b""), (b"d", b"")]


class Reader:
    """The server's send loop, one poll at a time."""

    def __init__(self, h: Harness, stream: WatchStream) -> None:
        self.h = h
        self.stream = stream
        self.ready = False
        self.log: list[rpc_pb2.WatchResponse] = []

    def poll(self, n: int) -> None:
        if stream_woken(self.h, self.stream.id):
            self.ready = True
        if not self.ready:
            return
        self.ready = False
        got = self.stream.next_responses(n)
        self.log.extend(got)
        if got or stream_woken(self.h, self.stream.id):
            self.ready = True


def stream_woken(h: Harness, stream_id: int) -> bool:
    woken = stream_id in h.wakeups
    h.wakeups[:] = [s for s in h.wakeups if s != stream_id]
    return woken


def run_workload(seed: int) -> None:
    rng = random.Random(seed)
    cfg = HubConfig(
        max_pending_responses=rng.randint(1, 6),
        max_pending_bytes=rng.randint(150, 3000),
        max_response_bytes=rng.randint(80, 600),
        catchup_revisions=rng.randint(1, 6),
        catchup_calls_per_fill=rng.randint(1, 3),
    )
    h = Harness(cfg)
    readers = [Reader(h, h.hub.open_stream()) for _ in range(rng.randint(1, 3))]
    # per stream: list of (create request, index in request order); cancels; progress requests
    creates: dict[int, list[rpc_pb2.WatchCreateRequest]] = {r.stream.id: [] for r in readers}
    cancel_rev: dict[tuple[int, int], int] = {}
    progress_requests = {r.stream.id: 0 for r in readers}

    for _ in range(rng.randint(20, 120)):
        reader = rng.choice(readers)
        stream = reader.stream
        roll = rng.random()
        if roll < 0.4:
            ops = []
            for _ in range(rng.randint(1, 4)):
                key = rng.choice(KEYS)
                if rng.random() < 0.7:
                    ops.append(("put", key, b"x" * rng.randint(0, 60)))
                else:
                    ops.append(("del", key, b""))
            if len({k for _, k, _ in ops}) == len(ops):
                h.txn(ops)
        elif roll < 0.55:
            key, range_end = rng.choice(RANGES)
            filters = rng.choice([[], [], [rpc_pb2.WatchCreateRequest.NOPUT], [rpc_pb2.WatchCreateRequest.NODELETE]])
            start = rng.choice([0, 0, rng.randint(1, h.store.revision + 3)])
            req = rpc_pb2.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start, filters=filters,
                prev_kv=rng.random() < 0.5, fragment=rng.random() < 0.5,
                watch_id=rng.choice([0, 0, 0, rng.randint(1, 4)]))
            creates[stream.id].append(req)
            stream.create(req)
        elif roll < 0.6:
            wid = rng.randint(0, 5)
            cancel_rev[(stream.id, wid)] = h.hub.revision
            stream.cancel(wid)
        elif roll < 0.65:
            progress_requests[stream.id] += 1
            stream.request_progress()
        elif roll < 0.68 and h.store.revision > 2:
            h.compact(rng.randint(max(h.hub.compact_revision, 1), h.store.revision))
        else:
            reader.poll(rng.randint(1, 5))
        for r in readers:
            stats = r.stream.statistics()
            assert stats.pending_responses - stats.pending_control <= cfg.max_pending_responses + 4
            assert stats.pending_bytes <= cfg.max_pending_bytes + 1200

    for r in readers:
        for _ in range(100_000):
            if not r.ready and r.stream.id not in h.wakeups:
                break
            r.poll(rng.randint(1, 7))
        stats = r.stream.statistics()
        assert not r.stream.has_pending() and stats.unsynced == 0, f"stream {r.stream.id} never drained"
        check_stream(h, r.log, creates[r.stream.id], progress_requests[r.stream.id])


def merge_fragments(log: list[rpc_pb2.WatchResponse]) -> list[rpc_pb2.WatchResponse]:
    merged: list[rpc_pb2.WatchResponse] = []
    partial: rpc_pb2.WatchResponse | None = None
    for resp in log:
        if partial is not None:
            assert resp.watch_id == partial.watch_id and resp.header.revision == partial.header.revision
            partial.events.extend(resp.events)
            if not resp.fragment:
                merged.append(partial)
                partial = None
            continue
        if resp.fragment:
            partial = rpc_pb2.WatchResponse()
            partial.CopyFrom(resp)
            partial.fragment = False
            continue
        merged.append(resp)
    assert partial is None, "a fragmented response was left unfinished"
    return merged


def check_stream(h: Harness, log: list[rpc_pb2.WatchResponse], reqs: list[rpc_pb2.WatchCreateRequest],
                 progress_requests: int) -> None:
    log = merge_fragments(log)
    pending_creates = list(reqs)
    live: dict[int, dict] = {}
    finished: list[dict] = []
    progress_seen = 0
    for pos, resp in enumerate(log):
        for ev in resp.events:
            assert ev.kv.mod_revision == resp.header.revision, "one revision per response"
        if resp.created:
            req = pending_creates.pop(0)  # answered in request order
            if resp.canceled:
                assert resp.watch_id == -1
                continue
            assert resp.watch_id not in live
            start = req.start_revision or resp.header.revision + 1
            live[resp.watch_id] = {"req": req, "start": start, "events": [], "created_at": pos, "end": None}
        elif resp.canceled:
            w = live.pop(resp.watch_id)
            w["compacted"] = resp.compact_revision
            w["end"] = resp.header.revision
            finished.append(w)
        elif resp.watch_id == -1 and not resp.events:
            progress_seen += 1
            for w in live.values():
                w.setdefault("progress", []).append(resp.header.revision)
        elif resp.events:
            w = live[resp.watch_id]
            assert not w.get("progress") or resp.header.revision > max(w["progress"]), (
                "an event at or below a progress revision arrived after the progress response")
            w["events"].extend(ev_tuple(e) for e in resp.events)
        else:
            assert resp.watch_id in live  # a progress_notify
    assert pending_creates == [], "every create is answered"
    if progress_requests:
        assert progress_seen >= 1
    for w in list(live.values()) + finished:
        req = w["req"]
        want = expected_events(
            h.store, req.key, req.range_end, w["start"],
            noput=rpc_pb2.WatchCreateRequest.NOPUT in req.filters,
            nodelete=rpc_pb2.WatchCreateRequest.NODELETE in req.filters,
            prev_kv=req.prev_kv)
        got = w["events"]
        if w in finished:
            assert got == want[: len(got)], "a canceled watcher saw a prefix of its events"
            if w["compacted"]:
                # the watcher still needed a revision below the compaction point
                next_rev = got[-1][2] + 1 if got else w["start"]
                assert next_rev < w["compacted"]
        else:
            assert got == want


@pytest.mark.parametrize("block", range(8))
def test_random_workloads(block: int) -> None:
    for seed in range(block * 50, block * 50 + 50):
        try:
            run_workload(seed)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
