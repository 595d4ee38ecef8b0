"""The in-memory multi-version keyspace with etcd's revision rules.

Layout (chosen for the hot path, see docs/mvcc.md):

* ``_index``: key -> list of *generations*; a generation is the list of records of one life of
  the key (create ... last put [, tombstone]). The last generation is empty while the key is
  deleted. Reading the current value is two list lookups.
* ``_keys``: the sorted set of every key in ``_index``, for range scans.
* ``_revs``: main revision -> the records written at it (sub-revision order): history for watch
  catch-up, compaction and hashing without scanning the whole keyspace.

Records are never mutated after creation, so they are shared freely between these structures.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_right
from collections.abc import Iterable
from typing import Any, NamedTuple

import attrs

from securekv.proto import kv_pb2
from securekv.rpctypes import ERR_COMPACTED, ERR_FUTURE_REV, err

from .keys import FROM_KEY, in_range
from .sortedkeys import SortedKeys

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event
PUT = kv_pb2.Event.PUT
DELETE = kv_pb2.Event.DELETE

#: Bytes charged per stored record on top of key and value (index, row and page overhead).
ROW_OVERHEAD = 64


class Rec:
    """One stored revision of one key. ``version == 0`` marks a tombstone."""

    __slots__ = ("key", "create", "mod", "sub", "version", "value", "lease")

    def __init__(self, key: bytes, create: int, mod: int, sub: int, version: int, value: bytes, lease: int) -> None:
        self.key = key
        self.create = create
        self.mod = mod
        self.sub = sub
        self.version = version
        self.value = value
        self.lease = lease

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
        return (
            f"Rec({self.key!r}, create={self.create}, mod={self.mod}.{self.sub}, "
            f"ver={self.version}, value={self.value!r}, lease={self.lease})"
        )


def _mod(rec: Rec) -> int:
    return rec.mod


class RevisionRow(NamedTuple):
    """One row of the backend's revision table (same fields as ``securekv.storage.Revision``).

    ``value`` is the marshalled ``mvccpb.KeyValue``; for a tombstone it holds only the key and
    the deletion revision.
    """

    main: int
    sub: int
    key: bytes
    value: bytes
    tombstone: bool


@attrs.frozen
class KVWriteBatch:
    """What one applied entry changed in the keyspace, for the storage backend."""

    revision: int
    puts: tuple[RevisionRow, ...] = ()
    deletes: tuple[tuple[int, int], ...] = ()
    compact_revision: int | None = None


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


def _at(gens: list[list[Rec]], rev: int) -> Rec | None:
    """The key's live record at ``rev`` (None if absent/deleted then)."""
    for g in reversed(gens):
        if not g or g[0].mod > rev:
            continue
        r = g[-1] if g[-1].mod <= rev else g[bisect_right(g, rev, key=_mod) - 1]
        return None if r.version == 0 else r
    return None


class MVCCStore:
    """etcd 3.4 MVCC semantics over plain Python structures (no I/O, single-threaded)."""

    def __init__(self) -> None:
        self._rev = 1  # an empty store is at revision 1
        self._top = 1  # highest revision holding records (rev+1 inside a write txn)
        self._compact = -1  # etcd's compactMainRev before any compaction
        self._index: dict[bytes, list[list[Rec]]] = {}
        self._keys = SortedKeys()
        self._revs: dict[int, list[Rec]] = {}
        self._size = 0
        self._live = 0
        self._txn: WriteTxn | None = None

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

    def __len__(self) -> int:
        return self._live

    # ------------------------------------------------------------------ reads
    def get(self, key: bytes, rev: int = 0) -> Rec | None:
        """The live record of ``key`` at ``rev`` (0 = latest), without revision checks."""
        gens = self._index.get(key)
        if gens is None:
            return None
        if rev <= 0 or rev >= self._top:
            g = gens[-1]
            return g[-1] if g else None
        return _at(gens, rev)

    def scan(self, key: bytes, range_end: bytes, rev: int, limit: int = 0, count_only: bool = False) -> tuple[list[Rec], int]:
        """Live records in the range at ``rev`` (ascending by key) and their total count.

        At most ``limit`` records are returned (0 = all); the count is always the full count.
        """
        index = self._index
        latest = rev >= self._top
        if not range_end:
            gens = index.get(key)
            if gens is None:
                return [], 0
            if latest:
                g = gens[-1]
                r = g[-1] if g else None
            else:
                r = _at(gens, rev)
            if r is None:
                return [], 0
            return ([] if count_only else [r]), 1
        end = None if range_end == FROM_KEY else range_end
        recs: list[Rec] = []
        count = 0
        want = 0 if count_only else (limit if limit > 0 else -1)
        for k in self._keys.irange(key, end):
            gens = index[k]
            if latest:
                g = gens[-1]
                if not g:
                    continue
                r = g[-1]
            else:
                r = _at(gens, rev)
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

    def live_items(self) -> Iterable[Rec]:
        """Every live record at the current revision, ascending by key."""
        index = self._index
        for k in self._keys:
            g = index[k][-1]
            if g:
                yield g[-1]

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
        old = self._compact
        touched: dict[bytes, None] = {}
        revs = self._revs
        for main in range(max(old + 1, 1), rev + 1):
            for r in revs.get(main, ()):
                touched[r.key] = None
        removed: list[Rec] = []
        index = self._index
        for key in touched:
            gens = index[key]
            new: list[list[Rec]] = []
            for g in gens:
                if not g:
                    new.append(g)
                    continue
                if g[-1].mod <= rev:
                    if g[-1].version == 0:
                        removed.extend(g)  # a life that ended at or before rev: gone entirely
                    else:
                        removed.extend(g[:-1])
                        new.append(g[-1:])
                    continue
                j = bisect_right(g, rev, key=_mod)
                if j > 1:
                    removed.extend(g[: j - 1])
                    g = g[j - 1 :]
                new.append(g)
            if len(new) == 1 and not new[0]:
                del index[key]
                self._keys.remove(key)
            else:
                index[key] = new
        by_main: dict[int, set[int]] = {}
        size = 0
        for r in removed:
            by_main.setdefault(r.mod, set()).add(r.sub)
            size += len(r.key) + len(r.value) + ROW_OVERHEAD
        for main, subs in by_main.items():
            kept = [r for r in revs[main] if r.sub not in subs]
            if kept:
                revs[main] = kept
            else:
                del revs[main]
        self._size -= size
        self._compact = rev
        deletes = tuple(sorted((r.mod, r.sub) for r in removed))
        return KVWriteBatch(revision=self._rev, deletes=deletes, compact_revision=rev)

    # ------------------------------------------------------------------ history
    def events_between(self, start_rev: int, end_rev: int, key: bytes, range_end: bytes = b"", prev_kv: bool = False) -> list[kv_pb2.Event]:
        """Events with ``start_rev <= mod_revision <= end_rev`` in the range (the watch history)."""
        if start_rev < self._compact:
            raise err(ERR_COMPACTED)
        start_rev = max(start_rev, 1)
        end_rev = min(end_rev, self._rev)
        out: list[kv_pb2.Event] = []
        revs = self._revs
        single = not range_end
        for main in range(start_rev, end_rev + 1):
            for r in revs.get(main, ()):
                k = r.key
                if (k != key) if single else not in_range(k, key, range_end):
                    continue
                ev = Event(type=DELETE if r.version == 0 else PUT, kv=r.to_pb())
                if prev_kv and r.mod - 1 >= self._compact:
                    p = self._prev(r)
                    if p is not None:
                        ev.prev_kv.CopyFrom(p.to_pb())
                out.append(ev)
        return out

    def _prev(self, rec: Rec) -> Rec | None:
        """The key's live record just before ``rec`` was written."""
        gens = self._index.get(rec.key)
        if gens is None:
            return None
        pos = (rec.mod, rec.sub)
        for g in reversed(gens):
            if not g or (g[0].mod, g[0].sub) > pos:
                continue
            i = bisect_right(g, rec.mod, key=_mod) - 1
            while i >= 0 and g[i] is not rec:
                i -= 1
            if i < 0:
                return None
            if i == 0:
                return None  # a create (the previous life ended with a tombstone)
            p = g[i - 1]
            return None if p.version == 0 else p
        return None

    def hash_kv(self, rev: int = 0) -> tuple[int, int]:
        """CRC32 over every stored record with main revision <= rev, in revision order."""
        if 0 < rev <= self._compact:
            raise err(ERR_COMPACTED)
        if rev > self._rev:
            raise err(ERR_FUTURE_REV)
        if rev <= 0:
            rev = self._rev
        h = zlib.crc32(b"key")
        pack = _REVKEY.pack
        sep = b"_"
        revs = self._revs
        for main in sorted(m for m in revs if m <= rev):
            for r in revs[main]:
                h = zlib.crc32(pack(r.mod, sep, r.sub) + (b"t" if r.version == 0 else b""), h)
                h = zlib.crc32(r.to_pb().SerializeToString(deterministic=True), h)
        return h & 0xFFFFFFFF, self._compact

    # ------------------------------------------------------------------ restore
    @classmethod
    def restore(cls, rows: Iterable[Any], compact_revision: int = -1, current_revision: int = 0) -> MVCCStore:
        """Rebuild a store from backend rows (objects with main, sub, key, value, tombstone)."""
        s = cls()
        decoded: list[Rec] = []
        for row in rows:
            kv = KeyValue.FromString(row.value)
            key = bytes(row.key)
            if row.tombstone:
                decoded.append(Rec(key, 0, row.main, row.sub, 0, b"", 0))
            else:
                decoded.append(Rec(key, kv.create_revision, row.main, row.sub, kv.version, kv.value, kv.lease))
        decoded.sort(key=lambda r: (r.mod, r.sub))
        index = s._index
        revs = s._revs
        size = 0
        for r in decoded:
            gens = index.get(r.key)
            if gens is None:
                gens = index[r.key] = [[]]
            gens[-1].append(r)
            if r.version == 0:
                gens.append([])
            revs.setdefault(r.mod, []).append(r)
            size += len(r.key) + len(r.value) + ROW_OVERHEAD
        s._keys = SortedKeys(index)
        s._size = size
        s._live = sum(1 for gens in index.values() if gens[-1])
        top = decoded[-1].mod if decoded else 1
        s._compact = compact_revision
        s._rev = s._top = max(top, current_revision, compact_revision, 1)
        return s


_REVKEY = struct.Struct(">Q1sQ")  # etcd's 17-byte revision key: main "_" sub


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

    def get(self, key: bytes) -> Rec | None:
        return self._s.get(key)

    def put(self, key: bytes, value: bytes, lease: int) -> Change:
        s = self._s
        rev = self.begin + 1
        s._top = rev
        gens = s._index.get(key)
        if gens is None:
            gens = s._index[key] = [[]]
            s._keys.add(key)
        g = gens[-1]
        if g:
            prev = g[-1]
            rec = Rec(key, prev.create, rev, len(self.recs), prev.version + 1, value, lease)
        else:
            prev = None
            rec = Rec(key, rev, rev, len(self.recs), 1, value, lease)
            s._live += 1
        g.append(rec)
        self.recs.append(rec)
        s._size += len(key) + len(value) + ROW_OVERHEAD
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
        for prev in recs:
            k = prev.key
            tomb = Rec(k, 0, rev, len(self.recs), 0, b"", 0)
            gens = s._index[k]
            gens[-1].append(tomb)
            gens.append([])
            self.recs.append(tomb)
            s._size += len(k) + ROW_OVERHEAD
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
        s._revs[rev] = self.recs
        s._rev = s._top = rev
        return KVWriteBatch(revision=rev, puts=tuple(_row(r) for r in self.recs))
