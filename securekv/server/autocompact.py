"""``--auto-compaction-mode`` / ``--auto-compaction-retention``: when to compact (pure).

etcd 3.4's two compactors, as a state machine fed with (now, current revision) — no clock,
no thread — so the rules are unit-tested without waiting hours:

* ``periodic`` (retention P): a revision is sampled every ``min(P, 1h) / 10``; the last
  ``P / sample`` samples are kept, so the oldest is the revision of P ago. Nothing is compacted
  during the first P after start; then every ``min(P, 1h)`` the store is compacted to the
  oldest sample (the revision of P ago). A failed compaction is retried at the next sample.
* ``revision`` (retention R): every 5 minutes, compact to ``current - R`` if that moved.

Only the leader's compactor acts (the server calls ``tick`` on the leader only); the
compaction itself is an ordinary proposal, so every member applies it at the same index.
"""

from __future__ import annotations

import attrs

HOUR = 3600.0
REVISION_INTERVAL = 300.0


@attrs.define
class AutoCompactor:
    mode: str  # "periodic" | "revision"
    retention: float  # seconds (periodic) or revisions (revision)
    started: float = 0.0
    _samples: list[int] = attrs.field(factory=list)
    _last_sample: float | None = None
    _last_compact: float | None = None
    _compacted_to: int = 0

    @property
    def interval(self) -> float:
        """How often ``tick`` should be called."""
        if self.mode == "revision":
            return REVISION_INTERVAL
        return min(self.retention, HOUR) / 10

    def tick(self, now: float, revision: int) -> int | None:
        """The revision to compact to now, or None."""
        if self.retention <= 0:
            return None
        if self.mode == "revision":
            target = revision - int(self.retention)
            if target <= 0 or target <= self._compacted_to:
                return None
            return target
        step = self.interval
        if self._last_sample is None or now - self._last_sample >= step * 0.999:
            self._samples.append(revision)
            self._last_sample = now
            keep = max(int(round(self.retention / step)), 1)
            del self._samples[:-keep - 1]
        if now - self.started < self.retention:
            return None
        period = min(self.retention, HOUR)
        if self._last_compact is not None and now - self._last_compact < period * 0.999:
            return None
        target = self._samples[0]
        if target <= self._compacted_to or target <= 0:
            return None
        return target

    def done(self, now: float, revision: int) -> None:
        """The compaction to ``revision`` was applied (or was already behind the store's)."""
        self._compacted_to = max(self._compacted_to, revision)
        self._last_compact = now


__all__ = ["AutoCompactor"]
