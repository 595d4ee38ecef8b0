"""Where the store's records live: the ``RecordReader`` it reads on demand, and an in-memory one.

The MVCC store keeps only an index in memory (key -> revisions); every value and every
historical record stays in the backend's revision table and is read through this interface.
It is a Protocol so the store stays sans-IO: the server passes the sqlite backend's reader
(``securekv.storage.backend.BackendReader``), tests and tools pass :class:`MemoryRecords`.

A reader only ever sees rows the node has *committed* to it; rows applied but not yet
committed stay in the store's own "pending" map until the server calls ``store.release``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol


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


class RecordReader(Protocol):
    """Read access to committed revision rows, by primary key (main, sub)."""

    def get_many(self, refs: Sequence[tuple[int, int]]) -> list[bytes | None]:
        """The marshalled KeyValue of each (main, sub), None where no such row exists.

        Callers pass bounded pages (a few hundred refs), never a whole keyspace.
        """
        ...

    def scan(self, start: tuple[int, int], last: int, limit: int) -> list[RevisionRow]:
        """Rows with ``(main, sub) >= start`` and ``main <= last`` in (main, sub) order, at most
        ``limit`` of them (a page; the caller resumes after the last row returned)."""
        ...


class RevPairs(Sequence[tuple[int, int]]):
    """A read-only sequence of (main, sub) pairs packed in one ``array('q')``.

    A compaction may drop millions of rows; as tuples they would cost ~90 bytes each, packed
    they cost 16. Compares equal to any sequence of the same pairs.
    """

    __slots__ = ("_a",)

    def __init__(self, flat: Iterable[int] = ()) -> None:
        self._a = flat if isinstance(flat, array) else array("q", flat)

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, int]]) -> RevPairs:
        a = array("q")
        for m, s in pairs:
            a.append(m)
            a.append(s)
        return cls(a)

    def __len__(self) -> int:
        return len(self._a) >> 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return RevPairs.of(list(self)[i])
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._a[2 * i], self._a[2 * i + 1]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        it = iter(self._a)
        return zip(it, it)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RevPairs):
            return self._a == other._a
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(tuple(x) == y for x, y in zip(other, self))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._a.tobytes())

    def __repr__(self) -> str:
        if len(self) > 8:
            return f"RevPairs({len(self)} pairs: {list(self)[:8]}...)"
        return f"RevPairs({list(self)!r})"


class MemoryRecords:
    """A RecordReader over plain dicts, written with :meth:`apply` (tests, tools, no backend).

    It applies the store's write batches exactly as the sqlite backend does (deletes, then
    puts), so the store behaves the same over either.
    """

    def __init__(self, rows: Iterable[Any] = ()) -> None:
        self._rows: dict[tuple[int, int], RevisionRow] = {}
        self._order: list[tuple[int, int]] = []
        self._sorted = True
        for r in rows:
            self._put(RevisionRow(r.main, r.sub, bytes(r.key), bytes(r.value), bool(r.tombstone)))

    def _put(self, row: RevisionRow) -> None:
        ref = (row.main, row.sub)
        if ref not in self._rows:
            if self._order and ref < self._order[-1]:
                self._sorted = False
            self._order.append(ref)
        self._rows[ref] = row

    def apply(self, batch: Any) -> None:
        """Apply a ``KVWriteBatch``: its deletes, then its puts."""
        for ref in batch.deletes:
            self._rows.pop(tuple(ref), None)
        for row in batch.puts:
            self._put(RevisionRow(*row))

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[RevisionRow]:
        """Every row in (main, sub) order."""
        return [self._rows[ref] for ref in sorted(self._rows)]

    # -- RecordReader ------------------------------------------------------------------------
    def get_many(self, refs: Sequence[tuple[int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for ref in refs:
            row = self._rows.get(ref)
            out.append(None if row is None else row.value)
        return out

    def scan(self, start: tuple[int, int], last: int, limit: int) -> list[RevisionRow]:
        if not self._sorted or len(self._order) > 2 * len(self._rows) + 64:
            self._order = sorted(self._rows)
            self._sorted = True
        out: list[RevisionRow] = []
        order = self._order
        i = bisect_left(order, start)
        while i < len(order) and len(out) < limit:
            ref = order[i]
            if ref[0] > last:
                break
            row = self._rows.get(ref)
            if row is not None:
                out.append(row)
            i += 1
        return out


__all__ = ["MemoryRecords", "RecordReader", "RevPairs", "RevisionRow"]
