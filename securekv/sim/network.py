"""The simulated network: per-message drop, duplication, delay (hence reordering), and
partitions as a multiset of blocked directed links (overlapping faults heal independently)."""

from __future__ import annotations

import random
from collections import Counter

import attrs


@attrs.define(slots=True)
class LinkFaults:
    """Probabilities applied to every message while a flaky-network fault is active."""

    drop: float = 0.0
    duplicate: float = 0.0
    long_delay: float = 0.0  # chance a message is held back long enough to be overtaken


class SimNetwork:
    def __init__(self, rng: random.Random, max_delay: int, long_delay: int) -> None:
        self.rng = rng
        self.base_delay = max_delay
        self.max_delay = max_delay
        self.long_delay = long_delay
        self.faults = LinkFaults()
        self._blocked: Counter[tuple[int, int]] = Counter()
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def block(self, links: list[tuple[int, int]]) -> None:
        self._blocked.update(links)

    def unblock(self, links: list[tuple[int, int]]) -> None:
        self._blocked.subtract(links)
        for link in links:
            if self._blocked[link] <= 0:
                del self._blocked[link]

    def clear(self) -> None:
        self._blocked.clear()
        self.faults = LinkFaults()
        self.max_delay = self.base_delay

    def blocked(self, frm: int, to: int) -> bool:
        return (frm, to) in self._blocked

    def schedule(self, may_duplicate: bool = True) -> list[int]:
        """Delays for one sent message: ``[]`` when dropped, two entries when duplicated."""
        self.sent += 1
        f = self.faults
        if f.drop and self.rng.random() < f.drop:
            self.dropped += 1
            return []
        copies = 1
        if f.duplicate and may_duplicate and self.rng.random() < f.duplicate:
            copies = 2
            self.duplicated += 1
        delays = []
        for _ in range(copies):
            delay = self.rng.randint(1, self.max_delay)
            if f.long_delay and self.rng.random() < f.long_delay:
                delay += self.rng.randint(1, self.long_delay)
            delays.append(delay)
        return delays
