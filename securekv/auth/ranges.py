"""Key ranges as etcd's permission checks see them, and a union of them that answers
"does this set cover that whole range?".

etcd keeps each user's permissions in an interval tree (``adt.IntervalTree``) of "affine"
byte intervals: a permission with an empty ``range_end`` is the single key, ``range_end ==
b"\\0"`` means "every key from ``key`` on", anything else is ``[key, range_end)``. A request
is allowed when the union of the user's intervals *covers* the request's range (a point
request only needs one interval containing it). Permissions are few and change rarely, so the
union is kept as a sorted list of disjoint intervals and a check is one binary search.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import attrs

# etcd's "open ended" marker for range_end.
FROM_KEY = b"\0"


@attrs.frozen(slots=True)
class KeyRange:
    """``[begin, end)``; ``end is None`` = unbounded. A single key is ``[key, key + b"\\0")``."""

    begin: bytes
    end: bytes | None

    @classmethod
    def of(cls, key: bytes, range_end: bytes = b"") -> KeyRange:
        """The range a request's (key, range_end) names, with etcd's meaning of range_end."""
        key = bytes(key)
        range_end = bytes(range_end)
        if not range_end:
            return cls(key, key + b"\0")
        if range_end == FROM_KEY:
            return cls(key, None)
        if range_end <= key:
            # An empty range reads nothing; still demand the key itself, never nothing.
            return cls(key, key + b"\0")
        return cls(key, range_end)

    @property
    def is_point(self) -> bool:
        return self.end == self.begin + b"\0"

    def describe(self) -> str:
        """For logs and the audit trail: ``key`` or ``[begin, end)``."""
        begin = self.begin.decode("utf-8", "backslashreplace")
        if self.is_point:
            return begin
        end = "<open ended>" if self.end is None else self.end.decode("utf-8", "backslashreplace") + ")"
        return f"[{begin}, {end}"


def _ends_before(a: bytes | None, b: bytes | None) -> bool:
    """a < b where None is +infinity."""
    if a is None:
        return False
    if b is None:
        return True
    return a < b


class RangeSet:
    """An immutable union of key ranges (disjoint, sorted, adjacent ones merged)."""

    __slots__ = ("_begins", "_ends")

    def __init__(self, ranges: Iterable[KeyRange] = ()) -> None:
        merged: list[list] = []
        for r in sorted(ranges, key=lambda r: r.begin):
            if merged:
                last = merged[-1]
                # Overlapping or touching ([a, b) + [b, c)): one interval.
                if last[1] is None or r.begin <= last[1]:
                    if _ends_before(last[1], r.end):
                        last[1] = r.end
                    continue
            merged.append([r.begin, r.end])
        self._begins = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def __bool__(self) -> bool:
        return bool(self._begins)

    def __len__(self) -> int:
        return len(self._begins)

    def covers(self, want: KeyRange) -> bool:
        """Every key of ``want`` lies in the union."""
        i = bisect.bisect_right(self._begins, want.begin) - 1
        if i < 0:
            return False
        end = self._ends[i]
        if end is not None and end <= want.begin:
            return False  # the interval starting at or before begin ends before it
        return not _ends_before(end, want.end)

    def intervals(self) -> list[KeyRange]:
        return [KeyRange(b, e) for b, e in zip(self._begins, self._ends)]


__all__ = ["FROM_KEY", "KeyRange", "RangeSet"]
