"""A tiny in-memory event log standing in for the MVCC store, and a harness around the hub.

The store is deliberately naive (a list of events); it is not the thing under test.
"""

from __future__ import annotations

from typing import Iterable

from securekv.proto import kv_pb2, rpc_pb2
from securekv.rpctypes import ERR_COMPACTED, err
from securekv.watch import HubConfig, WatchHub, WatchStream


def in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    if not range_end:
        return key == start
    if range_end == b"\0":
        return key >= start
    return start <= key < range_end


class Store:
    """Revisions start at 1 (empty store); each write is one revision."""

    def __init__(self) -> None:
        self.revision = 1
        self.compacted = 0
        self.live: dict[bytes, kv_pb2.KeyValue] = {}
        self.events: list[kv_pb2.Event] = []
        self.history_calls: list[tuple[int, int]] = []

    def txn(self, ops: Iterable[tuple[str, bytes, bytes]]) -> tuple[int, list[kv_pb2.Event]]:
        """ops: ("put", key, value) or ("del", key, b""). Returns (revision, events)."""
        rev = self.revision + 1
        evs = []
        for op, key, value in ops:
            prev = self.live.get(key)
            if op == "put":
                kv = kv_pb2.KeyValue(
                    key=key, value=value, mod_revision=rev,
                    create_revision=prev.create_revision if prev else rev,
                    version=prev.version + 1 if prev else 1,
                )
                self.live[key] = kv
                ev = kv_pb2.Event(type=kv_pb2.Event.PUT, kv=kv)
            else:
                if prev is None:
                    continue
                del self.live[key]
                ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=key, mod_revision=rev))
            if prev is not None:
                ev.prev_kv.CopyFrom(prev)
            evs.append(ev)
        if not evs:
            return self.revision, []
        self.revision = rev
        self.events.extend(evs)
        return rev, evs

    def history(self, start: int, end: int, key: bytes, range_end: bytes, prev_kv: bool) -> list[kv_pb2.Event]:
        self.history_calls.append((start, end))
        if start < self.compacted:
            raise err(ERR_COMPACTED)
        assert key, "hub must normalise the empty key"
        out = []
        for ev in self.events:
            if start <= ev.kv.mod_revision <= end and in_range(ev.kv.key, key, range_end):
                copy = kv_pb2.Event()
                copy.CopyFrom(ev)
                if not prev_kv:
                    copy.ClearField("prev_kv")
                out.append(copy)
        return out


class Harness:
    def __init__(self, config: HubConfig | None = None, compact: int = 0) -> None:
        self.store = Store()
        self.wakeups: list[int] = []
        self.hub = WatchHub(self.store.history, revision=self.store.revision, compact_revision=compact,
                            wakeup=self.wakeups.append, config=config)

    def put(self, key: bytes, value: bytes = b"v") -> int:
        return self.txn([("put", key, value)])

    def delete(self, key: bytes) -> int:
        return self.txn([("del", key, b"")])

    def txn(self, ops: list[tuple[str, bytes, bytes]]) -> int:
        rev, evs = self.store.txn(ops)
        if evs:
            self.hub.notify(rev, evs)
        return rev

    def compact(self, rev: int) -> None:
        self.hub.compact(rev)
        self.store.compacted = rev

    def drain(self, stream: WatchStream, batch: int = 1000, rounds: int = 100_000) -> list[rpc_pb2.WatchResponse]:
        """Read until the stream has nothing left (re-polling after wakeups, as the server does)."""
        out: list[rpc_pb2.WatchResponse] = []
        for _ in range(rounds):
            self.wakeups.clear()
            got = stream.next_responses(batch)
            out.extend(got)
            if not got and stream.id not in self.wakeups:
                return out
        raise AssertionError("stream never drained")


def create(stream: WatchStream, key: bytes = b"", range_end: bytes = b"", **kw: object) -> None:
    stream.create(rpc_pb2.WatchCreateRequest(key=key, range_end=range_end, **kw))


def ev_tuple(ev: kv_pb2.Event) -> tuple:
    return (ev.type, ev.kv.key, ev.kv.mod_revision, ev.kv.value,
            ev.prev_kv.value if ev.HasField("prev_kv") else None)


def expected_events(store: Store, key: bytes, range_end: bytes, start: int, *, noput: bool = False,
                    nodelete: bool = False, prev_kv: bool = False) -> list[tuple]:
    key = key or b"\0"
    out = []
    for ev in store.events:
        if ev.kv.mod_revision < start or not in_range(ev.kv.key, key, range_end):
            continue
        if (noput and ev.type == kv_pb2.Event.PUT) or (nodelete and ev.type == kv_pb2.Event.DELETE):
            continue
        t = ev_tuple(ev)
        if not prev_kv:
            t = t[:4] + (None,)
        out.append(t)
    return out


def events_of(responses: list[rpc_pb2.WatchResponse], watch_id: int) -> list[tuple]:
    return [ev_tuple(e) for r in responses if r.watch_id == watch_id for e in r.events]
