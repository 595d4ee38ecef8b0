"""A sorted set of byte keys for range scans.

A two-level list (like sortedcontainers' SortedList, without the dependency): inserting a new key
moves at most one short sub-list instead of the whole key array, so adding keys stays cheap as
the store grows, while lookups are two ``bisect`` calls.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator

_LOAD = 512


class SortedKeys:
    __slots__ = ("_lists", "_maxes", "_len")

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        ordered = sorted(set(keys))
        self._lists: list[list[bytes]] = [ordered[i : i + _LOAD] for i in range(0, len(ordered), _LOAD)]
        self._maxes: list[bytes] = [chunk[-1] for chunk in self._lists]
        self._len = len(ordered)

    @classmethod
    def from_sorted(cls, keys: list[bytes]) -> SortedKeys:
        """Build from keys already strictly ascending (a persisted index): no sort, no set."""
        self = cls()
        self._lists = [keys[i : i + _LOAD] for i in range(0, len(keys), _LOAD)]
        self._maxes = [chunk[-1] for chunk in self._lists]
        self._len = len(keys)
        return self

    def mean_key_length(self) -> int:
        """Average key length, sampled from the first key of each sub-list (for size estimates)."""
        lists = self._lists
        if not lists:
            return 0
        step = max(1, len(lists) // 1000)
        sample = [lists[i][0] for i in range(0, len(lists), step)]
        return sum(map(len, sample)) // len(sample)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._lists:
            yield from chunk

    def __contains__(self, key: bytes) -> bool:
        i = bisect_left(self._maxes, key)
        if i == len(self._maxes):
            return False
        chunk = self._lists[i]
        j = bisect_left(chunk, key)
        return chunk[j] == key

    def add(self, key: bytes) -> None:
        """Insert ``key``; the caller guarantees it is not present."""
        maxes = self._maxes
        if not maxes:
            self._lists.append([key])
            maxes.append(key)
            self._len = 1
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            self._lists[i].append(key)
            maxes[i] = key
        else:
            insort(self._lists[i], key)
        self._len += 1
        chunk = self._lists[i]
        if len(chunk) > 2 * _LOAD:
            half = chunk[_LOAD:]
            del chunk[_LOAD:]
            self._lists.insert(i + 1, half)
            maxes[i] = chunk[-1]
            maxes.insert(i + 1, half[-1])

    def remove(self, key: bytes) -> None:
        """Remove ``key``; the caller guarantees it is present."""
        i = bisect_left(self._maxes, key)
        chunk = self._lists[i]
        j = bisect_left(chunk, key)
        del chunk[j]
        self._len -= 1
        if not chunk:
            del self._lists[i]
            del self._maxes[i]
        elif j == len(chunk):
            self._maxes[i] = chunk[-1]

    def irange(self, start: bytes, end: bytes | None) -> Iterator[bytes]:
        """Keys ``start <= k < end`` (``end`` None: no upper bound), ascending."""
        maxes = self._maxes
        i = bisect_left(maxes, start)
        if i == len(maxes):
            return
        lists = self._lists
        chunk = lists[i]
        j = bisect_left(chunk, start)
        if end is None:
            yield from chunk[j:] if j else chunk
            for chunk in lists[i + 1 :]:
                yield from chunk
            return
        n = len(lists)
        while True:
            if chunk[-1] < end:
                yield from chunk[j:] if j else chunk
            else:
                for k in chunk[j:] if j else chunk:
                    if k >= end:
                        return
                    yield k
                return
            i += 1
            if i == n:
                return
            chunk = lists[i]
            j = 0
