"""The multi-version keyspace with etcd's revision rules: an index in memory, records on disk.

Layout (docs/mvcc.md, "Memory layout"):

* ``_index``: key -> compact entry (``keyindex``): where every stored record of the key lives
  (main, sub), tombstones, lease flags and value lengths. Nothing else of a record is in memory.
* ``_keys``: the sorted set of every key in ``_index``, for range scans.
* ``_leases``: key -> lease ID of the key's latest record, for keys whose latest record has one.
* ``_records``: the :class:`RecordReader` holding every *committed* row (the sqlite backend in
  the server, :class:`MemoryRecords` in tests); values and history are read from it on demand.
* ``_pending``: main revision -> rows applied but not yet committed to ``_records`` (the node's
  backend commit runs behind apply); ``release(rev)`` drops them once the backend holds them.
* ``_cache``: the latest value of recently used keys (LRU, bounded in bytes).

Apply stays deterministic: every read sees exactly the applied state (pending rows first, the
reader for the rest), whatever the backend's commit timing.
"""

from __future__ import annotations

import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from securekv.errors import CorruptionError
from securekv.proto import kv_pb2
from securekv.rpctypes import ERR_COMPACTED, ERR_FUTURE_REV, err

from . import keyindex as ki
from .keyindex import HDR, LEASED, MASK64, SHIFT, SUBMASK, TOMB, Entry
from .keys import FROM_KEY, in_range
from .records import MemoryRecords, RecordReader, RevisionRow, RevPairs
from .sortedkeys import SortedKeys

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE

#: Bytes charged per stored record on top of key and value (index, row and page overhead).
ROW_OVERHEAD = 64
#: Default bound of the hot-value cache.
DEFAULT_VALUE_CACHE_BYTES = 32 << 20
#: Rows per backend read (history scans, value loads of large ranges).
PAGE = 512
#: Estimated bytes a cache entry costs besides key and value (dict slot, tuple, int).
_CACHE_OVERHEAD = 160


class Rec:
    """One stored revision of one key. ``version == 0`` marks a tombstone.

    ``value`` (and, for an old record that had a lease, ``lease``) are read from the store's
    records the first time they are asked for: ranges with ``keys_only`` or ``count_only`` never
    load a value.
    """

    __slots__ = ("key", "create", "mod", "sub", "version", "_value", "_lease", "_src", "raw")

    def __init__(self, key: bytes, create: int, mod: int, sub: int, version: int, value: bytes | None,
                 lease: int | None, src: MVCCStore | None = None) -> None:
        self.key = key
        self.create = create
        self.mod = mod
        self.sub = sub
        self.version = version
        self._value = value
        self._lease = lease
        self._src = src
        #: the backend row (marshalled KeyValue) when it was read from there and not parsed yet
        self.raw: bytes | None = None

    def _parse(self) -> None:
        kv = KeyValue.FromString(self.raw)
        self._value = kv.value
        if self._lease is None:
            self._lease = kv.lease

    def _fill(self, slot: str) -> None:
        """Read the row from the backend if it is not here, then parse it unless ``slot`` got set."""
        if self.raw is None:
            assert self._src is not None
            self._src._load(self)
        if getattr(self, slot) is None:
            self._parse()

    @property
    def value(self) -> bytes:
        if self._value is None:
            if self.version == 0:
                return b""
            self._fill("_value")
        return self._value  # type: ignore[return-value]

    @property
    def lease(self) -> int:
        if self._lease is None:
            if self.version == 0:
                return 0
            self._fill("_lease")
        return self._lease  # type: ignore[return-value]

    @property
    def loaded(self) -> bool:
        return self._value is not None or self.raw is not None or self.version == 0

    @property
    def tombstone(self) -> bool:
        return self.version == 0

    def to_pb(self, keys_only: bool = False) -> kv_pb2.KeyValue:
        if self.version == 0:
            # etcd's DELETE event kv: only the key and the deletion revision.
            return KeyValue(key=self.key, mod_revision=self.mod)
        return KeyValue(
            key=self.key,
            create_revision=self.create,
            mod_revision=self.mod,
            version=self.version,
            value=b"" if keys_only else self.value,
            lease=self.lease,
        )

    def __repr__(self) -> str:
        value = self._value if self._value is not None else "<not loaded>"
        return (f"Rec({self.key!r}, create={self.create}, mod={self.mod}.{self.sub}, "
                f"ver={self.version}, value={value!r}, lease={self._lease})")


@attrs.frozen
class KVWriteBatch:
    """What one applied entry changed in the keyspace, for the storage backend.

    ``deletes`` are the (main, sub) rows a compaction drops (a packed sequence: a compaction
    may drop millions). ``index_dropped`` names the keys whose whole history up to the
    compaction revision went with it; the persisted key index needs them (``checkpoint``).
    """

    revision: int
    puts: tuple[RevisionRow, ...] = ()
    deletes: Sequence[tuple[int, int]] = ()
    compact_revision: int | None = None
    index_dropped: tuple[bytes, ...] = ()


@attrs.frozen
class Change:
    """One record written by a write transaction and the key's live record before it."""

    rec: Rec
    prev: Rec | None

    def event(self) -> kv_pb2.Event:
        rec = self.rec
        ev = Event(type=DELETE if rec.version == 0 else PUT, kv=rec.to_pb())
        if self.prev is not None:
            ev.prev_kv.CopyFrom(self.prev.to_pb())
        return ev


def _row(rec: Rec) -> RevisionRow:
    return RevisionRow(rec.mod, rec.sub, rec.key, rec.to_pb().SerializeToString(), rec.version == 0)


class ValueCache:
    """The latest value of recently used keys: key -> (main revision, value), LRU by bytes."""

    __slots__ = ("_d", "capacity", "bytes", "hits", "misses")

    def __init__(self, capacity: int) -> None:
        self._d: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self.capacity = capacity
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: bytes, main: int) -> bytes | None:
        item = self._d.get(key)
        if item is None or item[0] != main:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: bytes, main: int, value: bytes) -> None:
        d = self._d
        old = d.pop(key, None)
        if old is not None:
            self.bytes -= len(key) + len(old[1]) + _CACHE_OVERHEAD
        cost = len(key) + len(value) + _CACHE_OVERHEAD
        if cost > self.capacity:
            return
        d[key] = (main, value)
        self.bytes += cost
        while self.bytes > self.capacity:
            k, (_, v) = d.popitem(last=False)
            self.bytes -= len(k) + len(v) + _CACHE_OVERHEAD

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0


@attrs.frozen
class IndexStats:
    """Size of the in-memory index and of the value cache (for metrics)."""

    keys: int
    live_keys: int
    revisions: int
    index_bytes: int
    pending_revisions: int
    cache_entries: int
    cache_bytes: int
    cache_hits: int
    cache_misses: int


class MVCCStore:
    """etcd 3.4 MVCC semantics: a compact index in memory, records read through ``records``.

    ``MVCCStore()`` keeps its records in a :class:`MemoryRecords` and commits every write to it
    at once (tests, tools). The server passes the backend's reader and ``auto_commit=False``:
    rows then stay pending until :meth:`release` says the backend holds them.
    """

    def __init__(self, records: RecordReader | None = None, *, auto_commit: bool | None = None,
                 value_cache_bytes: int = DEFAULT_VALUE_CACHE_BYTES) -> None:
        self._records: RecordReader = records if records is not None else MemoryRecords()
        self._auto = (records is None) if auto_commit is None else auto_commit
        if self._auto and not isinstance(self._records, MemoryRecords):
            raise ValueError("auto_commit needs MemoryRecords (a backend is written by the server)")
        self._rev = 1  # an empty store is at revision 1
        self._top = 1  # highest revision holding records (rev+1 inside a write txn)
        self._compact = -1  # etcd's compactMainRev before any compaction
        self._index: dict[bytes, Entry] = {}
        self._keys = SortedKeys()
        self._leases: dict[bytes, int] = {}
        self._size = 0
        self._live = 0
        self._nrecs = 0
        self._pending: dict[int, list[RevisionRow]] = {}
        self._released = 1  # every row with main <= this is in _records
        self._cache = ValueCache(value_cache_bytes)
        self._txn: WriteTxn | None = None
        #: compaction revisions whose dropped-key record is persisted (see checkpoint.py)
        self.dropped_records: list[int] = []

    # ------------------------------------------------------------------ properties
    @property
    def current_revision(self) -> int:
        return self._rev

    @property
    def compact_revision(self) -> int:
        return self._compact

    @property
    def size_bytes(self) -> int:
        """Deterministic logical size: key + value + overhead of every stored record."""
        return self._size

    @property
    def records(self) -> RecordReader:
        return self._records

    def __len__(self) -> int:
        return self._live

    @property
    def index_keys(self) -> int:
        """Keys in the index (live ones and deleted ones whose history is not compacted yet)."""
        return len(self._index)

    @property
    def index_records(self) -> int:
        """Records (revisions of keys) the index describes."""
        return self._nrecs

    def stats(self) -> IndexStats:
        """Index and cache figures. ``index_bytes`` is an estimate of the index's heap use."""
        n = len(self._index)
        # Per key: dict slot (~41), bytes object header (33) + the key, sorted-list slot (~9),
        # entry (a 40-byte int); 16 bytes per further record; ~100 per leased key.
        est = n * (41 + 33 + 9 + 40) + n * self._keys.mean_key_length() \
            + max(0, self._nrecs - n) * 16 + len(self._leases) * 100
        c = self._cache
        return IndexStats(n, self._live, self._nrecs, est, len(self._pending), len(c), c.bytes, c.hits, c.misses)

    # ------------------------------------------------------------------ records
    def release(self, revision: int) -> None:
        """The backend now holds every row with main <= ``revision``: drop them from memory."""
        if revision <= self._released:
            return
        pending = self._pending
        if pending:
            if len(pending) <= revision - self._released:
                for main in [m for m in pending if m <= revision]:
                    del pending[main]
            else:
                for main in range(self._released + 1, revision + 1):
                    pending.pop(main, None)
        self._released = min(revision, self._rev)

    def _commit(self, batch: KVWriteBatch) -> None:
        if self._auto:
            self._records.apply(batch)  # type: ignore[attr-defined]
            self._released = self._rev
        elif batch.puts:
            self._pending[batch.revision] = list(batch.puts)

    def _pending_row(self, main: int, sub: int) -> RevisionRow | None:
        for row in self._pending.get(main, ()):
            if row.sub == sub:
                return row
        return None

    def _load(self, rec: Rec) -> None:
        """Fill a record's value and lease (one record; ranges use :meth:`fill_values`)."""
        if rec._lease is not None:
            v = self._cache.get(rec.key, rec.mod)
            if v is not None:
                rec._value = v
                return
        self._fill_from_rows([rec], False)

    def fill_values(self, recs: Sequence[Rec], cache: bool = True) -> None:
        """Load the values of ``recs`` (cache, pending rows, then the backend in pages).

        ``cache``: keep the values loaded from the backend in the hot-value cache (callers
        scanning many keys pass False, so one large range does not evict the hot set)."""
        missing = []
        if self._cache.capacity:
            cache_get = self._cache.get
            for rec in recs:
                if rec._value is not None or rec.raw is not None or rec.version == 0:
                    continue
                if rec._lease is not None:
                    v = cache_get(rec.key, rec.mod)
                    if v is not None:
                        rec._value = v
                        continue
                missing.append(rec)
        else:
            missing = [rec for rec in recs if rec._value is None and rec.raw is None and rec.version != 0]
        if missing:
            self._fill_from_rows(missing, cache)

    def _fill_from_rows(self, recs: list[Rec], cache: bool) -> None:
        released = self._released
        txn = self._txn
        from_reader = []
        for rec in recs:
            if txn is not None and rec.mod == txn.begin + 1:
                rec._value = txn.recs[rec.sub].value  # written by the open transaction
                if rec._lease is None:
                    rec._lease = txn.recs[rec.sub].lease
            elif rec.mod > released:
                row = self._pending_row(rec.mod, rec.sub)
                if row is None:
                    raise CorruptionError(f"mvcc: record {rec.mod}.{rec.sub} of key {rec.key!r} is missing")
                rec.raw = row.value
            else:
                from_reader.append(rec)
        get_many = self._records.get_many
        for i in range(0, len(from_reader), PAGE):
            page = from_reader[i : i + PAGE]
            values = get_many([(r.mod, r.sub) for r in page])
            for rec, data in zip(page, values):
                if data is None:
                    raise CorruptionError(f"mvcc: record {rec.mod}.{rec.sub} of key {rec.key!r} is missing "
                                          "from the backend")
                rec.raw = data  # parsed only if someone asks for the value (a range copies it as is)
            if cache:
                for rec in page:
                    if self._is_latest(rec.key, rec.mod):
                        self._cache.put(rec.key, rec.mod, rec.value)

    def _is_latest(self, key: bytes, main: int) -> bool:
        e = self._index.get(key)
        return e is not None and ki.last_main(e) == main

    def _rows_between(self, first: int, last: int) -> Iterator[RevisionRow]:
        """Every stored row with first <= main <= last, in (main, sub) order, page by page."""
        released = self._released
        if first <= released:
            pos = (first, 0)
            upto = min(last, released)
            scan = self._records.scan
            while True:
                page = scan(pos, upto, PAGE)
                yield from page
                if len(page) < PAGE:
                    break
                pos = (page[-1].main, page[-1].sub + 1)
        pending = self._pending
        if pending:
            for main in range(max(first, released + 1), last + 1):
                rows = pending.get(main)
                if rows:
                    yield from rows

    def _holds(self, key: bytes, main: int, sub: int) -> bool:
        """Whether the index still has ``key``'s record at (main, sub) (rows at or below the
        compact revision may wait in the backend for the compaction's commit)."""
        e = self._index.get(key)
        if e is None:
            return False
        if type(e) is int:
            return e & MASK64 == main and sub == 0
        i = ki.find(e, main)
        while i >= 0 and e[HDR + 2 * i] >> 2 == main:
            if e[HDR + 2 * i + 1] & SUBMASK == sub:
                return True
            i -= 1  # etcd's from-key delete quirk: one txn may put and delete one key
        return False

    # ------------------------------------------------------------------ reads
    def _latest(self, key: bytes, e: Entry) -> Rec | None:
        if type(e) is int:
            m = e & MASK64
            return Rec(key, m, m, 0, 1, None, self._leases.get(key, 0), self)
        r = e[-2]
        if r & TOMB:
            return None
        n = (len(e) - HDR) >> 1
        g = e[2]
        if g == 0:
            create, version = e[0], e[1] + n - 1
        else:
            create, version = e[HDR + 2 * g] >> 2, n - g
        return Rec(key, create, r >> 2, e[-1] & SUBMASK, version, None, self._leases.get(key, 0), self)

    def _at(self, key: bytes, e: Entry, rev: int) -> Rec | None:
        """The key's live record at ``rev``."""
        if type(e) is int:
            m = e & MASK64
            return Rec(key, m, m, 0, 1, None, self._leases.get(key, 0), self) if m <= rev else None
        i = ki.find(e, rev)
        if i < 0:
            return None
        r = e[HDR + 2 * i]
        if r & TOMB:
            return None
        n = (len(e) - HDR) >> 1
        if i == n - 1:
            return self._latest(key, e)
        create, version = ki.meta(e, i)
        return Rec(key, create, r >> 2, e[HDR + 2 * i + 1] & SUBMASK, version, None,
                   None if r & LEASED else 0, self)

    def get(self, key: bytes, rev: int = 0) -> Rec | None:
        """The live record of ``key`` at ``rev`` (0 = latest), without revision checks."""
        e = self._index.get(key)
        if e is None:
            return None
        if rev <= 0 or rev >= self._top:
            return self._latest(key, e)
        return self._at(key, e, rev)

    def scan(self, key: bytes, range_end: bytes, rev: int, limit: int = 0, count_only: bool = False) -> tuple[list[Rec], int]:
        """Live records in the range at ``rev`` (ascending by key) and their total count.

        At most ``limit`` records are returned (0 = all); the count is always the full count.
        """
        index = self._index
        latest = rev >= self._top
        if not range_end:
            e = index.get(key)
            if e is None:
                return [], 0
            r = self._latest(key, e) if latest else self._at(key, e, rev)
            if r is None:
                return [], 0
            return ([] if count_only else [r]), 1
        end = None if range_end == FROM_KEY else range_end
        recs: list[Rec] = []
        want = 0 if count_only else (limit if limit > 0 else -1)
        count = 0
        if latest:
            leases = self._leases
            append = recs.append
            for k in self._keys.irange(key, end):
                e = index[k]
                if type(e) is int:
                    count += 1
                    if want < 0 or len(recs) < want:
                        m = e & MASK64
                        append(Rec(k, m, m, 0, 1, None, leases.get(k, 0) if leases else 0, self))
                    continue
                r = e[-2]
                if r & TOMB:
                    continue
                count += 1
                if want < 0 or len(recs) < want:  # _latest(), inlined: this loop is the hot path
                    n = (len(e) - HDR) >> 1
                    g = e[2]
                    if g == 0:
                        create, version = e[0], e[1] + n - 1
                    else:
                        create, version = e[HDR + 2 * g] >> 2, n - g
                    append(Rec(k, create, r >> 2, e[-1] & SUBMASK, version, None,
                               leases.get(k, 0) if leases else 0, self))
            return recs, count
        for k in self._keys.irange(key, end):
            r = self._at(k, index[k], rev)
            if r is None:
                continue
            count += 1
            if want < 0 or len(recs) < want:
                recs.append(r)
        return recs, count

    def range_keys(self, key: bytes, range_end: bytes, rev: int, limit: int = 0, count_only: bool = False) -> tuple[list[Rec], int, int]:
        """etcd's ``rangeKeys``: checks the revision, returns (records, count, current revision)."""
        return self._range_keys(key, range_end, rev, self._rev, limit, count_only)

    def _range_keys(self, key: bytes, range_end: bytes, rev: int, cur: int, limit: int, count_only: bool) -> tuple[list[Rec], int, int]:
        if rev > cur:
            raise err(ERR_FUTURE_REV)
        if rev <= 0:
            rev = cur
        if rev < self._compact:
            raise err(ERR_COMPACTED)
        recs, count = self.scan(key, range_end, rev, limit, count_only)
        return recs, count, cur

    def range(self, req: Any, max_bytes: int = 0) -> Any:
        """Serve a RangeRequest at the current revision (header.revision set); ``max_bytes`` > 0
        refuses a larger response (RESOURCE_EXHAUSTED) before building it."""
        from .kv import ResponseBudget, range_response

        return range_response(self, req, ResponseBudget(max_bytes) if max_bytes > 0 else None)

    def txn_readonly(self, req: Any, max_bytes: int = 0) -> Any:
        """Serve a read-only TxnRequest (``is_txn_readonly``) without a log entry (``max_bytes``
        as for :meth:`range`, for all its ranges together)."""
        from .kv import ResponseBudget, txn_readonly

        return txn_readonly(self, req, ResponseBudget(max_bytes) if max_bytes > 0 else None)

    def leased_keys(self) -> Iterable[tuple[bytes, int]]:
        """(key, lease) of every live key whose latest record has a lease."""
        return list(self._leases.items())

    def live_items(self) -> Iterator[Rec]:
        """Every live record at the current revision, ascending by key (values load lazily)."""
        index = self._index
        for k in self._keys:
            r = self._latest(k, index[k])
            if r is not None:
                yield r

    # ------------------------------------------------------------------ writes
    def write(self) -> WriteTxn:
        """Start the one write transaction of the next revision."""
        if self._txn is not None:
            raise RuntimeError("a write transaction is already open")
        self._txn = WriteTxn(self)
        return self._txn

    def compact(self, rev: int) -> KVWriteBatch:
        """Drop history below ``rev``, keeping each key's latest live record at or below it."""
        if rev <= self._compact:
            raise err(ERR_COMPACTED)
        if rev > self._rev:
            raise err(ERR_FUTURE_REV)
        removed, dropped = self._compact_index(rev)
        self._compact = rev
        batch = KVWriteBatch(revision=self._rev, deletes=removed, compact_revision=rev,
                             index_dropped=tuple(dropped))
        if dropped:
            self.dropped_records.append(rev)
        self._commit(batch)
        return batch

    def _compact_index(self, rev: int) -> tuple[RevPairs, list[bytes]]:
        """etcd's keyIndex.compact on every key: the (main, sub) removed, keys whose history up
        to ``rev`` went entirely. Keys with a single record never change (it is live and the
        latest), so only multi-record entries are visited."""
        index = self._index
        rm_main = array("q")
        rm_sub = array("q")
        dropped: list[bytes] = []
        updates: list[tuple[bytes, Entry | None]] = []
        size = 0
        for key, e in index.items():
            if type(e) is int or e[HDR] >> 2 > rev:
                continue
            i = ki.find(e, rev)
            r = e[HDR + 2 * i]
            n = (len(e) - HDR) >> 1
            new: Entry | None
            if r & TOMB:
                cut = i + 1
                dropped.append(key)
                if cut == n:
                    new = None
                else:
                    new = array("q", (e[HDR + 2 * cut] >> 2, 1, e[2] - cut))
                    new.extend(e[HDR + 2 * cut :])
            else:
                if i == 0:
                    continue
                create, version = ki.meta(e, i)
                cut = i
                new = array("q", (create, version, max(e[2] - cut, 0)))
                new.extend(e[HDR + 2 * cut :])
            klen = len(key) + ROW_OVERHEAD
            for j in range(HDR, HDR + 2 * cut, 2):
                s = e[j + 1]
                rm_main.append(e[j] >> 2)
                rm_sub.append(s & SUBMASK)
                size += klen + (s >> 32)
            if new is not None and len(new) == HDR + 2:
                r0, s0 = new[HDR], new[HDR + 1]
                if not r0 & TOMB and s0 & SUBMASK == 0 and new[0] == r0 >> 2 and new[1] == 1:
                    new = (r0 >> 2) | ((s0 >> 32) << SHIFT)
            updates.append((key, new))
        for key, new in updates:
            if new is None:
                del index[key]
                self._keys.remove(key)
                self._cache_drop(key)
            else:
                index[key] = new
        self._size -= size
        self._nrecs -= len(rm_main)
        return RevPairs(_sorted_pairs(rm_main, rm_sub)), dropped

    def _cache_drop(self, key: bytes) -> None:
        c = self._cache
        item = c._d.pop(key, None)
        if item is not None:
            c.bytes -= len(key) + len(item[1]) + _CACHE_OVERHEAD

    # ------------------------------------------------------------------ history
    def events_between(self, start_rev: int, end_rev: int, key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> list[kv_pb2.Event]:
        """Events with ``start_rev <= mod_revision <= end_rev`` in the range (the watch history),
        read from the backend (and rows not yet committed to it)."""
        if start_rev < self._compact:
            raise err(ERR_COMPACTED)
        start_rev = max(start_rev, 1)
        end_rev = min(end_rev, self._rev)
        out: list[kv_pb2.Event] = []
        if start_rev > end_rev:
            return out
        single = not range_end
        compact = self._compact
        prevs: list[tuple[kv_pb2.Event, Rec]] = []
        for row in self._rows_between(start_rev, end_rev):
            k = row.key
            if (k != key) if single else not in_range(k, key, range_end):
                continue
            main = row.main
            if main <= compact and not self._holds(k, main, row.sub):
                continue  # dropped by a compaction the backend has not committed yet
            if row.tombstone:
                ev = Event(type=DELETE, kv=KeyValue(key=k, mod_revision=main))
            else:
                ev = Event(type=PUT)
                ev.kv.MergeFromString(row.value)
            if prev_kv and main - 1 >= compact:
                e = self._index.get(k)
                p = self._at(k, e, main - 1) if e is not None else None
                if p is not None:
                    prevs.append((ev, p))
            out.append(ev)
        if prevs:
            self.fill_values([p for _, p in prevs], cache=False)
            for ev, p in prevs:
                ev.prev_kv.CopyFrom(p.to_pb())
        return out

    def hash_kv(self, rev: int = 0) -> tuple[int, int]:
        """CRC32 over every stored record with main revision <= rev, in revision order."""
        if 0 < rev <= self._compact:
            raise err(ERR_COMPACTED)
        if rev > self._rev:
            raise err(ERR_FUTURE_REV)
        if rev <= 0:
            rev = self._rev
        h = zlib.crc32(b"key")
        crc = zlib.crc32
        sep = b"_"
        compact = self._compact
        for row in self._rows_between(1, rev):
            if row.main <= compact and not self._holds(row.key, row.main, row.sub):
                continue
            h = crc(row.main.to_bytes(8, "big") + sep + row.sub.to_bytes(8, "big")
                    + (b"t" if row.tombstone else b""), h)
            h = crc(row.value, h)
        return h & 0xFFFFFFFF, self._compact

    # ------------------------------------------------------------------ restore
    @classmethod
    def restore(cls, rows: Iterable[Any], compact_revision: int = -1, current_revision: int = 0, *,
                records: RecordReader | None = None,
                value_cache_bytes: int = DEFAULT_VALUE_CACHE_BYTES) -> MVCCStore:
        """Rebuild a store from backend rows (objects with main, sub, key, value, tombstone).

        Without ``records`` the rows are also kept in a MemoryRecords (any order); with it
        (the backend they came from) they must come in (main, sub) order and only the index is
        built.
        """
        if records is None:
            mem = MemoryRecords(rows)
            s = cls(mem, value_cache_bytes=value_cache_bytes)
            ordered: Iterable[Any] = mem.rows()
        else:
            s = cls(records, auto_commit=False, value_cache_bytes=value_cache_bytes)
            ordered = rows
        s._finish_load(ordered, compact_revision, max(current_revision, 0), check_compaction=True)
        return s

    @classmethod
    def load(cls, records: RecordReader, *, chunks: Iterable[bytes], start_revision: int,
             checkpoint_compact: int, dropped: Iterable[tuple[int, Iterable[bytes]]],
             tail: Iterable[Any], compact_revision: int = -1,
             value_cache_bytes: int = DEFAULT_VALUE_CACHE_BYTES) -> MVCCStore:
        """Rebuild from a persisted index checkpoint (docs/mvcc.md, "Start-up").

        ``chunks`` are one checkpoint's chunks in order, begun at ``start_revision`` when the
        store's compact revision was ``checkpoint_compact``; ``dropped`` the persisted
        (compaction revision, keys) records after ``start_revision``; ``tail`` every row with
        main > ``start_revision`` in (main, sub) order. Raises ``keyindex.ChunkError`` if a
        chunk is damaged (the caller then restores from all rows instead).
        """
        s = cls(records, auto_commit=False, value_cache_bytes=value_cache_bytes)
        index = s._index
        keys: list[bytes] = []
        for blob in chunks:
            ks, entries, leases = ki.decode_chunk(blob)
            if ks and keys and ks[0] <= keys[-1]:
                raise ki.ChunkError("index chunks out of key order")
            index.update(zip(ks, entries))
            keys.extend(ks)
            s._leases.update(leases)
        if len(index) != len(keys):
            raise ki.ChunkError("index chunks repeat a key")
        s._keys = SortedKeys.from_sorted(keys)
        del keys
        size = live = nrecs = 0
        for k, e in index.items():
            if type(e) is int:
                size += len(k) + ROW_OVERHEAD + (e >> SHIFT)
                live += 1
                nrecs += 1
            else:
                n = (len(e) - HDR) >> 1
                size += n * (len(k) + ROW_OVERHEAD) + ki.value_bytes(e)
                nrecs += n
                if not e[-2] & TOMB:
                    live += 1
        s._size, s._live, s._nrecs = size, live, nrecs
        for rev, dropped_keys in sorted(dropped, key=lambda x: x[0]):
            if rev > start_revision:
                s._drop_through(rev, dropped_keys)
            s.dropped_records.append(rev)
        s._rev = max(start_revision, 1)
        s._finish_load(tail, compact_revision, start_revision,
                       check_compaction=compact_revision > checkpoint_compact)
        return s

    def _drop_through(self, rev: int, keys: Iterable[bytes]) -> None:
        """A compaction at ``rev`` removed these keys' whole history up to it (their rows are
        gone from the backend, so the tail replay cannot show the tombstone)."""
        index = self._index
        for key in keys:
            e = index.get(key)
            if e is None:
                continue
            n = ki.count(e)
            if type(e) is int:
                cut = 1 if (e & MASK64) <= rev else 0
            else:
                cut = ki.find(e, rev) + 1
            if cut == 0:
                continue
            latest_live = type(e) is int or not e[-2] & TOMB
            self._size -= self._entry_size(key, e)
            self._nrecs -= n
            if cut == n:
                del index[key]
                self._keys.remove(key)
                self._leases.pop(key, None)
                if latest_live:
                    self._live -= 1
                continue
            assert type(e) is not int
            new = array("q", (e[HDR + 2 * cut] >> 2, 1, max(e[2] - cut, 0)))
            new.extend(e[HDR + 2 * cut :])
            index[key] = new
            self._size += self._entry_size(key, new)
            self._nrecs += n - cut

    def _next_meta(self, key: bytes, e: Entry, main: int) -> tuple[int, int]:
        """(create, version) the key's next put at ``main`` gets, given its entry."""
        if type(e) is int:
            return e & MASK64, 2
        if e[-2] & TOMB:
            return main, 1
        rec = self._latest(key, e)
        assert rec is not None
        return rec.create, rec.version + 1

    @staticmethod
    def _entry_size(key: bytes, e: Entry) -> int:
        return ki.count(e) * (len(key) + ROW_OVERHEAD) + ki.value_bytes(e)

    def _finish_load(self, rows: Iterable[Any], compact_revision: int, current_revision: int,
                     check_compaction: bool) -> None:
        top = self._replay(rows)
        self._compact = compact_revision
        if check_compaction and compact_revision > 0:
            self._compact_index(compact_revision)
        self._rev = self._top = self._released = max(top, current_revision, compact_revision, self._rev, 1)

    def _replay(self, rows: Iterable[Any]) -> int:
        """Apply backend rows (ascending) to the index; rows it already holds are skipped, so a
        checkpoint taken while writes went on replays cleanly. Returns the highest main seen."""
        index = self._index
        keys = self._keys
        leases = self._leases
        top = 0
        for row in rows:
            main, sub = row.main, row.sub
            key = bytes(row.key)
            top = main
            e = index.get(key)
            if e is not None and ki.last_ref(e) >= (main, sub):
                continue
            klen = len(key) + ROW_OVERHEAD
            if row.tombstone:
                if e is None:
                    continue  # nothing of the key left to end (its put was compacted)
                if type(e) is int:
                    m = e & MASK64
                    e = array("q", (m, 1, 2, ki.rword(m, key in leases, False), (e >> SHIFT) << 32,
                                    ki.rword(main, False, True), sub))
                    index[key] = e
                elif not e[-2] & TOMB:
                    e.append(ki.rword(main, False, True))
                    e.append(sub)
                    e[2] = (len(e) - HDR) >> 1
                else:
                    continue  # already deleted
                leases.pop(key, None)
                self._live -= 1
                self._size += klen
                self._nrecs += 1
                continue
            kv = KeyValue.FromString(row.value)
            vlen = len(kv.value)
            lease = kv.lease
            known = e is not None
            if known and (kv.create_revision, kv.version) != self._next_meta(key, e, main):  # type: ignore[arg-type]
                # The row's own create/version disagree with the entry: rows between them were
                # compacted away (a checkpoint older than the compaction). Every older record
                # of the key went with them, so the row starts the entry afresh.
                self._size -= self._entry_size(key, e)  # type: ignore[arg-type]
                self._nrecs -= ki.count(e)  # type: ignore[arg-type]
                if type(e) is int or not e[-2] & TOMB:  # type: ignore[index]
                    self._live -= 1
                e = None
            if e is None:
                if sub == 0 and kv.create_revision == main and kv.version == 1:
                    index[key] = main | (vlen << SHIFT) if vlen else main
                else:
                    index[key] = array("q", (kv.create_revision, kv.version, 0,
                                             ki.rword(main, bool(lease), False), ki.sword(vlen, sub)))
                if not known:
                    keys.add(key)
                self._live += 1
            else:
                if type(e) is int:
                    m = e & MASK64
                    e = array("q", (m, 1, 0, ki.rword(m, key in leases, False), (e >> SHIFT) << 32))
                    index[key] = e
                if e[-2] & TOMB:
                    e[2] = (len(e) - HDR) >> 1
                    self._live += 1
                e.append(ki.rword(main, bool(lease), False))
                e.append(ki.sword(vlen, sub))
            if lease:
                leases[key] = lease
            else:
                leases.pop(key, None)
            self._size += klen + vlen
            self._nrecs += 1
        return top

    # ------------------------------------------------------------------ checkpoints
    def index_chunk(self, after: bytes | None, max_keys: int, max_bytes: int = 1 << 21) -> tuple[bytes, bytes | None]:
        """Serialise the entries of the keys after ``after`` (None: from the first key), up to
        ``max_keys`` keys or about ``max_bytes`` (keys with long histories make big entries).
        Returns the chunk and the last key in it, or None as the last key when no key follows
        (the checkpoint is complete)."""
        index = self._index
        leases = self._leases
        items: list[tuple[bytes, Entry, int]] = []
        it = self._keys.irange(after, None) if after is not None else iter(self._keys)
        more = False
        size = 0
        for k in it:
            if after is not None and k <= after:
                continue
            e = index[k]
            cost = len(k) + (21 if type(e) is int else 13 + 8 * len(e))
            if len(items) >= max_keys or (items and size + cost > max_bytes):
                more = True
                break
            size += cost
            items.append((k, e, leases.get(k, 0)))
        blob = ki.encode_chunk(items)
        return blob, (items[-1][0] if more else None)


def _sorted_pairs(mains: array, subs: array, bucket: int = 1 << 17) -> array:
    """(main, sub) pairs sorted, flattened into one array('q'). Sorted bucket by bucket of main
    revisions, so a compaction dropping millions of rows never holds them as Python objects."""
    n = len(mains)
    out = array("q")
    if n == 0:
        return out
    lo, hi = min(mains), max(mains)
    buckets = max(1, min(n // bucket + 1, hi - lo + 1))
    width = (hi - lo) // buckets + 1
    parts: list[tuple[array, array]] = [(array("q"), array("q")) for _ in range(buckets)]
    for m, sub in zip(mains, subs):
        pm, ps = parts[(m - lo) // width]
        pm.append(m)
        ps.append(sub)
    del mains, subs
    for pm, ps in parts:
        for m, sub in sorted(zip(pm, ps)):
            out.append(m)
            out.append(sub)
    return out


class WriteTxn:
    """All changes of one revision. Reads inside see the transaction's own writes."""

    __slots__ = ("_s", "begin", "recs", "changes")

    def __init__(self, store: MVCCStore) -> None:
        self._s = store
        self.begin = store._rev
        self.recs: list[Rec] = []
        self.changes: list[Change] = []

    @property
    def store(self) -> MVCCStore:
        return self._s

    @property
    def read_rev(self) -> int:
        """Revision this transaction reads at (etcd: begin, or begin+1 once it wrote)."""
        return self.begin + 1 if self.recs else self.begin

    def range_keys(self, key: bytes, range_end: bytes, rev: int, limit: int = 0, count_only: bool = False) -> tuple[list[Rec], int, int]:
        return self._s._range_keys(key, range_end, rev, self.read_rev, limit, count_only)

    def fill_values(self, recs: Sequence[Rec], cache: bool = True) -> None:
        self._s.fill_values(recs, cache)

    def get(self, key: bytes) -> Rec | None:
        return self._s.get(key)

    def put(self, key: bytes, value: bytes, lease: int) -> Change:
        s = self._s
        rev = self.begin + 1
        s._top = rev
        sub = len(self.recs)
        vlen = len(value)
        index = s._index
        e = index.get(key)
        leases = s._leases
        old_lease = leases.get(key, 0)
        if e is None:
            prev = None
            create, version = rev, 1
            index[key] = (rev | (vlen << SHIFT) if vlen else rev) if sub == 0 else \
                array("q", (rev, 1, 0, ki.rword(rev, bool(lease), False), ki.sword(vlen, sub)))
            s._keys.add(key)
            s._live += 1
        else:
            if type(e) is int:
                m = e & MASK64
                prev = Rec(key, m, m, 0, 1, s._cache.get(key, m), old_lease, s)
                e = array("q", (m, 1, 0, ki.rword(m, bool(old_lease), False), (e >> SHIFT) << 32))
                index[key] = e
            elif e[-2] & TOMB:
                prev = None
                e[2] = (len(e) - HDR) >> 1
                s._live += 1
            else:
                prev = s._latest(key, e)
                assert prev is not None
                prev._value = s._cache.get(key, prev.mod)
            if prev is None:
                create, version = rev, 1
            else:
                create, version = prev.create, prev.version + 1
            e.append(ki.rword(rev, bool(lease), False))
            e.append(ki.sword(vlen, sub))
        if lease:
            leases[key] = lease
        elif old_lease:
            del leases[key]
        rec = Rec(key, create, rev, sub, version, value, lease, s)
        self.recs.append(rec)
        s._cache.put(key, rev, value)
        s._size += len(key) + vlen + ROW_OVERHEAD
        s._nrecs += 1
        ch = Change(rec, prev)
        self.changes.append(ch)
        return ch

    def delete_range(self, key: bytes, range_end: bytes) -> list[Change]:
        s = self._s
        recs, _ = s.scan(key, range_end, self.read_rev)
        if not recs:
            return []
        rev = self.begin + 1
        s._top = rev
        out = []
        index = s._index
        cache_get = s._cache.get
        for prev in recs:
            k = prev.key
            sub = len(self.recs)
            if prev._value is None:
                prev._value = cache_get(k, prev.mod)
            e = index[k]
            if type(e) is int:
                m = e & MASK64
                index[k] = array("q", (m, 1, 2, ki.rword(m, bool(prev._lease), False), (e >> SHIFT) << 32,
                                       ki.rword(rev, False, True), sub))
            else:
                e.append(ki.rword(rev, False, True))
                e.append(sub)
                e[2] = (len(e) - HDR) >> 1
            s._leases.pop(k, None)
            tomb = Rec(k, 0, rev, sub, 0, b"", 0, s)
            self.recs.append(tomb)
            s._size += len(k) + ROW_OVERHEAD
            s._nrecs += 1
            s._live -= 1
            ch = Change(tomb, prev)
            self.changes.append(ch)
            out.append(ch)
        return out

    @property
    def revision(self) -> int:
        """Revision the store will be at after ``end()``."""
        return self.begin + 1 if self.recs else self.begin

    def end(self) -> KVWriteBatch | None:
        """Commit: bump the revision if anything changed; the backend rows, or None."""
        s = self._s
        s._txn = None
        if not self.recs:
            return None
        rev = self.begin + 1
        s._rev = s._top = rev
        batch = KVWriteBatch(revision=rev, puts=tuple(_row(r) for r in self.recs))
        s._commit(batch)
        return batch


__all__ = ["Change", "DEFAULT_VALUE_CACHE_BYTES", "IndexStats", "KVWriteBatch", "MVCCStore", "Rec",
           "RevisionRow", "ValueCache", "WriteTxn"]
