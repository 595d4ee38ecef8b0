"""The watch hub: every watch stream's watchers, fan-out, history catch-up and progress.

Pure: the MVCC store hands in events (``notify``) and a history reader; the server pulls ready
responses with ``WatchStream.next_responses`` when the injected ``wakeup`` says there are some.
Memory per stream is bounded by its outbox: a watcher that does not fit stops buffering
("unsynced") and later re-reads what it missed from history, as etcd's unsynced watchers do.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Protocol, Sequence

import attrs

from securekv.errors import UsageError
from securekv.proto import kv_pb2, rpc_pb2
from securekv.rpctypes import ERR_COMPACTED, WATCH_DUPLICATE_ID_REASON, EtcdError

EMPTY_RANGE_REASON = "mvcc: watcher range is empty"
INVALID_WATCH_ID = -1
_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE


class HistorySource(Protocol):
    """Events with ``start_rev <= mod_revision <= end_rev`` in the watcher's range, in order.

    ``range_end``: ``b""`` = only ``key``; ``b"\\0"`` = every key ``>= key``; else ``[key, range_end)``.
    """

    def __call__(
        self, start_rev: int, end_rev: int, key: bytes, range_end: bytes, prev_kv: bool
    ) -> Iterable[kv_pb2.Event]: ...


@attrs.frozen(kw_only=True)
class HubConfig:
    """Bounds and periods; see docs/lease-watch.md."""

    max_pending_responses: int = 256
    max_pending_bytes: int = 4 << 20
    max_response_bytes: int = 1_572_864
    catchup_revisions: int = 128
    catchup_calls_per_fill: int = 16
    progress_interval: float = 600.0
    max_pending_control: int = 1024

    def __attrs_post_init__(self) -> None:
        for name in ("max_pending_responses", "max_pending_bytes", "max_response_bytes",
                     "catchup_revisions", "catchup_calls_per_fill", "max_pending_control"):
            if getattr(self, name) < 1:
                raise ValueError(f"watch hub config: {name} must be >= 1")
        if self.progress_interval <= 0:
            raise ValueError("watch hub config: progress_interval must be > 0")


@attrs.frozen
class StreamStatistics:
    watchers: int
    unsynced: int
    pending_responses: int
    pending_bytes: int
    pending_control: int


@attrs.frozen
class HubStatistics:
    streams: int
    watchers: int
    unsynced: int
    pending_responses: int
    pending_bytes: int


class _Watcher:
    __slots__ = ("id", "stream", "key", "range_end", "no_put", "no_delete", "prev_kv",
                 "progress_notify", "fragment", "synced", "next_rev", "progress_due")

    def __init__(self, stream: WatchStream, watch_id: int, req: rpc_pb2.WatchCreateRequest,
                 key: bytes, range_end: bytes) -> None:
        self.id = watch_id
        self.stream = stream
        self.key = key
        self.range_end = range_end
        self.no_put = _NOPUT in req.filters
        self.no_delete = _NODELETE in req.filters
        self.prev_kv = req.prev_kv
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        # synced: every matching event up to hub.revision is queued; next_rev is then only a
        # lower bound (a future start revision). Unsynced: next_rev is the first revision whose
        # events have not been queued yet.
        self.synced = True
        self.next_rev = 0
        self.progress_due = True  # no events sent since the last progress tick

    def matches(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if self.range_end == b"\0":
            return key >= self.key
        return self.key <= key < self.range_end

    def wants(self, event: kv_pb2.Event) -> bool:
        return not ((self.no_put and event.type == _PUT) or (self.no_delete and event.type == _DELETE))


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _event_field_size(event: kv_pb2.Event) -> int:
    """Bytes one event adds to a WatchResponse (field 11: one tag byte, length, payload)."""
    size = event.ByteSize()
    return 1 + _varint_len(size) + size


def _response_size(watch_id: int, revision: int, fragment: bool, event_bytes: int) -> int:
    """Exact ``WatchResponse.ByteSize()`` of an event response, without building it."""
    header = 1 + _varint_len(revision) if revision else 0
    size = 1 + _varint_len(header) + header + event_bytes
    if watch_id:
        size += 1 + _varint_len(watch_id & 0xFFFFFFFFFFFFFFFF)
    if fragment:
        size += 2
    return size


class _Lazy:
    """An event response kept as references until it is sent: notify stays cheap."""

    __slots__ = ("watch_id", "revision", "fragment", "events")

    def __init__(self, watch_id: int, revision: int, fragment: bool, events: list[kv_pb2.Event]) -> None:
        self.watch_id = watch_id
        self.revision = revision
        self.fragment = fragment
        self.events = events

    def build(self) -> rpc_pb2.WatchResponse:
        resp = rpc_pb2.WatchResponse(watch_id=self.watch_id, fragment=self.fragment)
        resp.header.revision = self.revision
        resp.events.extend(self.events)
        return resp


def _strip_prev(event: kv_pb2.Event) -> kv_pb2.Event:
    if not event.HasField("prev_kv"):
        return event
    bare = kv_pb2.Event()
    bare.CopyFrom(event)
    bare.ClearField("prev_kv")
    return bare


class WatchStream:
    """One client Watch RPC: its watchers and its bounded outbox of responses."""

    def __init__(self, hub: WatchHub, stream_id: int) -> None:
        self.id = stream_id
        self._hub = hub
        self._cfg = hub.config
        self._watchers: dict[int, _Watcher] = {}
        self._unsynced: dict[_Watcher, None] = {}
        self._next_id = 0
        # (response or lazy response, serialized size, counts against the event bound)
        self._outbox: deque[tuple[rpc_pb2.WatchResponse | _Lazy, int, bool]] = deque()
        self._event_count = 0
        self._event_bytes = 0
        self._control_count = 0
        self._progress_pending = False
        self._closed = False

    # -- requests ---------------------------------------------------------------------------

    def handle(self, request: rpc_pb2.WatchRequest) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            self.create(request.create_request)
        elif kind == "cancel_request":
            self.cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            self.request_progress()
        # anything else is ignored, as etcd does

    def create(self, req: rpc_pb2.WatchCreateRequest) -> None:
        self._check_open()
        hub = self._hub
        key = req.key or b"\0"
        range_end = req.range_end
        if range_end and range_end != b"\0" and key >= range_end:
            self._reject(EMPTY_RANGE_REASON)
            return
        if req.watch_id == 0:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif req.watch_id in self._watchers:
            self._reject(WATCH_DUPLICATE_ID_REASON)
            return
        else:
            watch_id = req.watch_id

        created = rpc_pb2.WatchResponse(watch_id=watch_id, created=True)
        created.header.revision = hub.revision
        self._push_control(created)

        start = req.start_revision or hub.revision + 1
        if start <= hub.revision and start < hub.compact_revision:
            self._push_control(self._compacted_response(watch_id))
            self._after_change()
            return
        watcher = _Watcher(self, watch_id, req, key, range_end)
        if start > hub.revision:
            watcher.next_rev = start
        else:
            watcher.synced = False
            watcher.next_rev = max(start, 1)
            self._unsynced[watcher] = None
        self._watchers[watch_id] = watcher
        hub._index(watcher)
        self._fill()
        self._after_change()

    def reject_create(self, cancel_reason: str) -> None:
        """Answer a create the server refused (e.g. permission denied), in request order."""
        self._check_open()
        self._reject(cancel_reason)

    def watch_ranges(self) -> list[tuple[int, bytes, bytes]]:
        """(watch id, key, range_end) of every watcher: for re-checking them after an auth change."""
        return [(w.id, w.key, w.range_end) for w in self._watchers.values()]

    def revoke(self, watch_id: int, cancel_reason: str) -> None:
        """Cancel a watcher the server no longer allows (its permission was revoked): queued,
        unsent events of it are dropped, then ``canceled`` with the reason is sent."""
        self._check_open()
        watcher = self._watchers.get(watch_id)
        if watcher is None:
            return
        self._remove(watcher)
        kept: deque[tuple[rpc_pb2.WatchResponse | _Lazy, int, bool]] = deque()
        for item in self._outbox:
            resp, size, counted = item
            if counted and resp.watch_id == watch_id:
                self._event_count -= 1
                self._event_bytes -= size
                continue
            kept.append(item)
        self._outbox = kept
        resp = rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True, cancel_reason=cancel_reason)
        resp.header.revision = self._hub.revision
        self._push_control(resp)
        self._maybe_send_progress()
        self._after_change()

    def cancel(self, watch_id: int) -> None:
        self._check_open()
        watcher = self._watchers.get(watch_id)
        if watcher is None:
            return
        self._remove(watcher)
        resp = rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True)
        resp.header.revision = self._hub.revision
        self._push_control(resp)
        self._maybe_send_progress()
        self._after_change()

    def request_progress(self) -> None:
        self._check_open()
        self._progress_pending = True
        self._maybe_send_progress()
        self._after_change()

    # -- output -----------------------------------------------------------------------------

    def next_responses(self, max_n: int) -> list[rpc_pb2.WatchResponse]:
        """Up to ``max_n`` responses to send now, oldest first; never blocks."""
        if self._closed:
            return []
        self._fill()
        out: list[rpc_pb2.WatchResponse] = []
        while self._outbox and len(out) < max_n:
            resp, size, counted = self._outbox.popleft()
            if counted:
                self._event_count -= 1
                self._event_bytes -= size
            else:
                self._control_count -= 1
            out.append(resp.build() if isinstance(resp, _Lazy) else resp)
        self._fill()
        if not out and (self._outbox or self._unsynced):
            self._hub._wakeup(self.id)  # catch-up work left: poll again
        return out

    def has_pending(self) -> bool:
        return bool(self._outbox)

    @property
    def accepting(self) -> bool:
        """False while the client leaves control responses unread: stop reading its requests."""
        return self._control_count <= self._cfg.max_pending_control

    def close(self) -> None:
        if self._closed:
            return
        for watcher in list(self._watchers.values()):
            self._remove(watcher)
        self._outbox.clear()
        self._event_count = self._event_bytes = self._control_count = 0
        self._closed = True
        self._hub._streams.pop(self.id, None)

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(len(self._watchers), len(self._unsynced), len(self._outbox),
                                self._event_bytes, self._control_count)

    # -- hub callbacks ------------------------------------------------------------------------

    def _offer(self, watcher: _Watcher, revision: int, events: list[kv_pb2.Event], sizes: list[int]) -> bool:
        """Queue one revision's events for a watcher if the outbox has room.

        ``sizes[i]`` is ``_event_field_size(events[i])``, computed once per event by the caller.
        """
        event_bytes = sum(sizes)
        total = _response_size(watcher.id, revision, False, event_bytes)
        if watcher.fragment and len(events) >= 2 and total >= self._cfg.max_response_bytes:
            responses = self._fragments(watcher, revision, events, sizes)
            total = sum(size for _, size in responses)
        else:
            responses = [(_Lazy(watcher.id, revision, False, events), total)]
        if self._event_count and (
            self._event_count + len(responses) > self._cfg.max_pending_responses
            or self._event_bytes + total > self._cfg.max_pending_bytes
        ):
            return False
        for resp, size in responses:
            self._outbox.append((resp, size, True))
        self._event_count += len(responses)
        self._event_bytes += total
        watcher.progress_due = False
        return True

    def _fall_behind(self, watcher: _Watcher, revision: int) -> None:
        watcher.synced = False
        watcher.next_rev = revision
        self._unsynced[watcher] = None

    def _resync_from(self, revision: int) -> None:
        """The hub's revision jumps to ``revision`` without events: re-read the gap from history."""
        first_missing = self._hub.revision + 1  # still the old revision here
        for watcher in self._watchers.values():
            start = max(watcher.next_rev, first_missing)
            if watcher.synced and start <= revision:
                self._fall_behind(watcher, start)

    def _tick_progress(self) -> bool:
        sent = False
        revision = self._hub.revision
        for watcher in self._watchers.values():
            if not watcher.progress_notify:
                continue
            if watcher.progress_due and watcher.synced and self._has_room():
                resp = rpc_pb2.WatchResponse(watch_id=watcher.id)
                resp.header.revision = revision
                size = resp.ByteSize()
                self._outbox.append((resp, size, True))
                self._event_count += 1
                self._event_bytes += size
                sent = True
            watcher.progress_due = True
        return sent

    def _after_change(self) -> None:
        if self._outbox or self._unsynced:
            self._hub._wakeup(self.id)

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"watch stream {self.id} is closed")

    def _reject(self, reason: str) -> None:
        resp = rpc_pb2.WatchResponse(watch_id=INVALID_WATCH_ID, created=True, canceled=True,
                                     cancel_reason=reason)
        resp.header.revision = self._hub.revision
        self._push_control(resp)
        self._after_change()

    def _compacted_response(self, watch_id: int, compact_revision: int = 0) -> rpc_pb2.WatchResponse:
        # etcd leaves the header revision 0 on this one.
        return rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True,
                                     compact_revision=max(compact_revision, self._hub.compact_revision))

    def _push_control(self, resp: rpc_pb2.WatchResponse) -> None:
        self._outbox.append((resp, resp.ByteSize(), False))
        self._control_count += 1

    def _has_room(self) -> bool:
        return self._event_count == 0 or (
            self._event_count < self._cfg.max_pending_responses
            and self._event_bytes < self._cfg.max_pending_bytes
        )

    def _remove(self, watcher: _Watcher) -> None:
        del self._watchers[watcher.id]
        self._unsynced.pop(watcher, None)
        self._hub._unindex(watcher)

    def _maybe_send_progress(self) -> None:
        if self._progress_pending and not self._unsynced:
            self._progress_pending = False
            resp = rpc_pb2.WatchResponse(watch_id=INVALID_WATCH_ID)
            resp.header.revision = self._hub.revision
            self._push_control(resp)

    def _fragments(
        self, watcher: _Watcher, revision: int, events: list[kv_pb2.Event], sizes: list[int]
    ) -> list[tuple[_Lazy, int]]:
        """Split like etcd: fill each piece up to the limit, at least one event per piece."""
        limit = self._cfg.max_response_bytes
        base = _response_size(watcher.id, revision, True, 0)
        pieces: list[tuple[list[kv_pb2.Event], int]] = []
        current: list[kv_pb2.Event] = []
        current_bytes = 0
        for event, size in zip(events, sizes):
            if current and base + current_bytes + size >= limit:
                pieces.append((current, current_bytes))
                current, current_bytes = [], 0
            current.append(event)
            current_bytes += size
        pieces.append((current, current_bytes))
        out = []
        for i, (piece, piece_bytes) in enumerate(pieces):
            last = i == len(pieces) - 1
            out.append((_Lazy(watcher.id, revision, not last, piece),
                        _response_size(watcher.id, revision, not last, piece_bytes)))
        return out

    def _fill(self) -> None:
        """Catch unsynced watchers up from history while the outbox has room (bounded work)."""
        hub = self._hub
        calls = 0
        while self._unsynced and calls < self._cfg.catchup_calls_per_fill and self._has_room():
            watcher = min(self._unsynced, key=lambda w: (w.next_rev, w.id))
            if watcher.next_rev < hub.compact_revision:
                self._compact_out(watcher)
                continue
            start = watcher.next_rev
            end = min(start + self._cfg.catchup_revisions - 1, hub.revision)
            calls += 1
            try:
                history = list(hub._history(start, end, watcher.key, watcher.range_end, watcher.prev_kv))
            except EtcdError as exc:
                if exc != ERR_COMPACTED:
                    raise
                # The store compacted without telling the hub: still answer "compacted" (a
                # compact_revision of 0 would read as a plain cancel), past the missing revision.
                self._compact_out(watcher, start + 1)
                continue
            if not self._replay(watcher, start, end, history):
                break  # outbox full
            watcher.next_rev = end + 1
            if end >= hub.revision:
                watcher.synced = True
                del self._unsynced[watcher]
        self._maybe_send_progress()

    def _replay(self, watcher: _Watcher, start: int, end: int, history: list[kv_pb2.Event]) -> bool:
        i = 0
        while i < len(history):
            revision = history[i].kv.mod_revision
            j = i
            while j < len(history) and history[j].kv.mod_revision == revision:
                j += 1
            if start <= revision <= end:
                chosen = [e if watcher.prev_kv else _strip_prev(e)
                          for e in history[i:j] if watcher.wants(e)]
                sizes = [_event_field_size(e) for e in chosen]
                if chosen and not self._offer(watcher, revision, chosen, sizes):
                    watcher.next_rev = revision
                    return False
            i = j
        return True

    def _compact_out(self, watcher: _Watcher, compact_revision: int = 0) -> None:
        self._remove(watcher)
        self._push_control(self._compacted_response(watcher.id, compact_revision))


class WatchHub:
    """All watch streams of one member, fed by the applier after each revision."""

    def __init__(
        self,
        history: HistorySource,
        *,
        revision: int,
        compact_revision: int = 0,
        wakeup: Callable[[int], None] = lambda stream_id: None,
        config: HubConfig | None = None,
    ) -> None:
        self._history = history
        self._revision = revision
        self._compact_revision = compact_revision
        self._wakeup = wakeup
        self.config = config or HubConfig()
        self._streams: dict[int, WatchStream] = {}
        self._next_stream_id = 1
        self._key_watchers: dict[bytes, dict[_Watcher, None]] = {}
        self._range_watchers: dict[_Watcher, None] = {}
        self._next_progress: float | None = None

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    def open_stream(self) -> WatchStream:
        stream = WatchStream(self, self._next_stream_id)
        self._streams[stream.id] = stream
        self._next_stream_id += 1
        return stream

    def stream(self, stream_id: int) -> WatchStream | None:
        return self._streams.get(stream_id)

    def notify(self, revision: int, events: Sequence[kv_pb2.Event]) -> None:
        """Fan one applied revision's events out to the synced watchers that match."""
        if revision <= self._revision:
            raise UsageError(f"watch notify: revision {revision} is not after {self._revision}")
        if revision > self._revision + 1:
            self.advance(revision - 1)
        self._revision = revision
        if not self._key_watchers and not self._range_watchers:
            return
        matched: dict[_Watcher, list[int]] = {}
        for i, event in enumerate(events):
            key = event.kv.key
            for watcher in self._key_watchers.get(key, ()):
                if watcher.synced:
                    matched.setdefault(watcher, []).append(i)
            for watcher in self._range_watchers:
                if watcher.synced and watcher.matches(key):
                    matched.setdefault(watcher, []).append(i)
        bare: dict[int, kv_pb2.Event] = {}
        size_full: dict[int, int] = {}
        size_bare: dict[int, int] = {}
        touched: dict[WatchStream, None] = {}
        for watcher, indexes in matched.items():
            if revision < watcher.next_rev:
                continue  # waiting for a future start revision
            chosen = []
            sizes = []
            for i in indexes:
                event = events[i]
                if not watcher.wants(event):
                    continue
                if watcher.prev_kv:
                    size = size_full.get(i)
                    if size is None:
                        size = size_full[i] = _event_field_size(event)
                else:
                    if i not in bare:
                        bare[i] = _strip_prev(event)
                        size_bare[i] = _event_field_size(bare[i])
                    event = bare[i]
                    size = size_bare[i]
                chosen.append(event)
                sizes.append(size)
            if not chosen:
                continue
            stream = watcher.stream
            if not stream._offer(watcher, revision, chosen, sizes):
                stream._fall_behind(watcher, revision)
            touched[stream] = None
        for stream in touched:
            self._wakeup(stream.id)

    def advance(self, revision: int) -> None:
        """The store moved to ``revision`` without per-revision events (e.g. snapshot restore)."""
        if revision <= self._revision:
            return
        for stream in self._streams.values():
            stream._resync_from(revision)
        self._revision = revision
        for stream in list(self._streams.values()):
            if stream._unsynced:
                stream._fill()
                stream._after_change()

    def compact(self, revision: int) -> None:
        """History below ``revision`` is about to go; unsynced watchers behind it get canceled."""
        if revision > self._compact_revision:
            self._compact_revision = revision

    def tick_progress(self, now: float) -> None:
        """Periodic progress for progress_notify watchers; call as often as convenient."""
        if self._next_progress is None:
            self._next_progress = now + self.config.progress_interval
            return
        if now < self._next_progress:
            return
        self._next_progress = now + self.config.progress_interval
        for stream in list(self._streams.values()):
            if stream._tick_progress():
                self._wakeup(stream.id)

    def statistics(self) -> HubStatistics:
        stats = [s.statistics() for s in self._streams.values()]
        return HubStatistics(
            streams=len(stats),
            watchers=sum(s.watchers for s in stats),
            unsynced=sum(s.unsynced for s in stats),
            pending_responses=sum(s.pending_responses for s in stats),
            pending_bytes=sum(s.pending_bytes for s in stats),
        )

    # -- watcher index ------------------------------------------------------------------------

    def _index(self, watcher: _Watcher) -> None:
        if watcher.range_end:
            self._range_watchers[watcher] = None
        else:
            self._key_watchers.setdefault(watcher.key, {})[watcher] = None

    def _unindex(self, watcher: _Watcher) -> None:
        if watcher.range_end:
            self._range_watchers.pop(watcher, None)
            return
        group = self._key_watchers.get(watcher.key)
        if group is not None:
            group.pop(watcher, None)
            if not group:
                del self._key_watchers[watcher.key]
