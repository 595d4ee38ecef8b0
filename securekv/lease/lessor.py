"""The lessor: lease bookkeeping with an injected clock.

Every member applies grants and revokes from the log; only the primary (the Raft leader) runs
expiry clocks and proposes revokes for what ``expired()`` reports. The lessor itself never
deletes a lease on its own, so all members stay identical.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable, Iterable, Protocol

import attrs

from securekv.rpctypes import (
    ERR_LEASE_EXIST,
    ERR_LEASE_NOT_FOUND,
    ERR_LEASE_TTL_TOO_LARGE,
    ERR_NOT_LEADER,
    err,
)

MAX_LEASE_TTL = 9_000_000_000
_INT63 = (1 << 63) - 1


class Rng(Protocol):
    """The slice of ``random.Random`` used to pick lease ids."""

    def getrandbits(self, k: int) -> int: ...


def new_lease_id(rng: Rng, exists: Callable[[int], bool] | None = None) -> int:
    """A positive int63 lease id; retried while ``exists(id)`` (bounded: collisions are rare)."""
    for _ in range(64):
        candidate = rng.getrandbits(63) & _INT63
        if candidate != 0 and (exists is None or not exists(candidate)):
            return candidate
    raise RuntimeError("new_lease_id: rng keeps producing taken ids")


def min_lease_ttl(heartbeat_ms: int, election_ms: int) -> int:
    """etcd's minimum TTL: 1.5 election timeouts measured in whole heartbeat ticks, rounded up."""
    election_ticks = max(1, election_ms // max(1, heartbeat_ms))
    millis = (3 * election_ticks // 2) * heartbeat_ms
    return max(1, math.ceil(millis / 1000))


@attrs.frozen
class Lease:
    """A snapshot of one lease; ``expiry`` is None while the lessor is not primary."""

    id: int
    ttl: int
    expiry: float | None
    keys: frozenset[bytes]


@attrs.frozen
class LeaseRow:
    """The persisted form (etcd's leasepb.Lease)."""

    id: int
    ttl: int
    remaining_ttl: int = 0


@attrs.define
class _State:
    id: int
    ttl: int
    expiry: float | None = None
    remaining_ttl: int = 0
    keys: set[bytes] = attrs.field(factory=set)

    def snapshot(self) -> Lease:
        return Lease(self.id, self.ttl, self.expiry, frozenset(self.keys))


class Lessor:
    """Leases, their attached keys and (when primary) their expiry deadlines."""

    def __init__(
        self, min_ttl: int = 2, *, primary: bool = False, revoke_retry: float = 3.0, revoke_rate: int = 1000
    ) -> None:
        if min_ttl < 1:
            raise ValueError(f"lessor: min_ttl must be >= 1, got {min_ttl}")
        if revoke_rate < 4:
            raise ValueError(f"lessor: revoke_rate must be >= 4, got {revoke_rate}")
        self._min_ttl = min_ttl
        self._revoke_rate = revoke_rate
        self._primary = primary
        self._revoke_retry = revoke_retry
        self._leases: dict[int, _State] = {}
        # (deadline, id); an entry is live only if the lease exists and its current deadline
        # (``_deadline``) equals the entry's — everything else is discarded lazily.
        self._heap: list[tuple[float, int]] = []
        self._deadline: dict[int, float] = {}
        # Bumped whenever leases go away (revoke, restore): lets a caller cache "none of these
        # leases went away" (the server's per-identity lease cap). Not state: never persisted.
        self.removals = 0

    # -- properties ---------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        return self._primary

    @property
    def min_ttl(self) -> int:
        return self._min_ttl

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    # -- log-applied operations (every member) ------------------------------------------------

    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        if lease_id == 0:
            raise err(ERR_LEASE_NOT_FOUND)
        if ttl > MAX_LEASE_TTL:
            raise err(ERR_LEASE_TTL_TOO_LARGE)
        if lease_id in self._leases:
            raise err(ERR_LEASE_EXIST)
        state = _State(lease_id, max(ttl, self._min_ttl))
        self._leases[lease_id] = state
        if self._primary:
            self._arm(state, now + state.ttl)
        return state.snapshot()

    def revoke(self, lease_id: int) -> Lease:
        state = self._leases.pop(lease_id, None)
        if state is None:
            raise err(ERR_LEASE_NOT_FOUND)
        self.removals += 1
        self._deadline.pop(lease_id, None)
        self._maybe_compact_heap()
        return state.snapshot()

    def attach(self, lease_id: int, key: bytes) -> None:
        self._get(lease_id).keys.add(bytes(key))

    def detach(self, lease_id: int, key: bytes) -> None:
        self._get(lease_id).keys.discard(bytes(key))

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None:
        """Record a leader's view of the remaining TTL so a new leader does not reset it."""
        state = self._leases.get(lease_id)
        if state is not None:
            state.remaining_ttl = max(0, remaining_ttl)

    # -- primary-only clock operations --------------------------------------------------------

    def renew(self, lease_id: int, now: float) -> int:
        if not self._primary:
            raise err(ERR_NOT_LEADER)
        state = self._leases.get(lease_id)
        if state is None:
            return 0
        if state.expiry is not None and state.expiry <= now:
            return 0  # expired: its revoke is on the way, a keepalive must not resurrect it
        state.remaining_ttl = 0
        self._arm(state, now + state.ttl)
        return state.ttl

    def expired(self, now: float, limit: int = 1000) -> list[int]:
        if not self._primary or limit <= 0:
            return []
        found: list[int] = []
        while self._heap and len(found) < limit:
            deadline, lease_id = self._heap[0]
            if self._deadline.get(lease_id) != deadline:
                heapq.heappop(self._heap)  # stale entry: lease revoked or re-armed since
                continue
            if deadline > now:
                break
            heapq.heappop(self._heap)
            found.append(lease_id)
            # Re-check later: if the revoke proposal gets lost, it is proposed again.
            self._deadline[lease_id] = retry = now + self._revoke_retry
            heapq.heappush(self._heap, (retry, lease_id))
        return found

    def promote(self, now: float, extend: float = 0.0) -> None:
        self._primary = True
        self._heap.clear()
        self._deadline.clear()
        for state in self._leases.values():
            self._arm(state, now + extend + (state.remaining_ttl or state.ttl))
        if len(self._leases) >= self._revoke_rate:
            self._spread(now, extend)

    def _spread(self, now: float, extend: float) -> None:
        """After a leader change many leases can share a deadline; push some back (as etcd does)
        so no one-second window holds more than 3/4 of the revoke rate."""
        target = 3 * self._revoke_rate // 4
        states = sorted(self._leases.values(), key=lambda st: (st.expiry, st.id))
        base = states[0].expiry - now  # type: ignore[operator]
        window_end = base + 1.0
        count = 0
        for state in states:
            remaining = state.expiry - now  # type: ignore[operator]
            if remaining > window_end:
                base, window_end, count = remaining, remaining + 1.0, 1
                continue
            count += 1
            if count <= target:
                continue
            delay = count / target - (remaining - base)
            window_end = base + delay
            self._arm(state, now + delay + extend + (state.remaining_ttl or state.ttl))

    def demote(self) -> None:
        self._primary = False
        self._heap.clear()
        self._deadline.clear()
        for state in self._leases.values():
            state.expiry = None

    # -- queries ------------------------------------------------------------------------------

    def lookup(self, lease_id: int) -> Lease | None:
        state = self._leases.get(lease_id)
        return None if state is None else state.snapshot()

    def time_to_live(self, lease_id: int, now: float) -> tuple[int, int, list[bytes]]:
        state = self._leases.get(lease_id)
        if state is None:
            return -1, 0, []
        if state.expiry is None:
            remaining = state.remaining_ttl or state.ttl
        else:
            remaining = max(0, math.floor(state.expiry - now))
        return remaining, state.ttl, sorted(state.keys)

    def leases(self) -> list[int]:
        return sorted(self._leases)

    # -- persistence --------------------------------------------------------------------------

    def rows(self) -> list[LeaseRow]:
        return [LeaseRow(s.id, s.ttl, s.remaining_ttl) for _, s in sorted(self._leases.items())]

    def restore(self, rows: Iterable[LeaseRow], now: float) -> None:
        self._leases = {r.id: _State(r.id, r.ttl, remaining_ttl=r.remaining_ttl) for r in rows}
        self.removals += 1
        self._heap.clear()
        self._deadline.clear()
        if self._primary:
            self.promote(now)

    # -- internals ----------------------------------------------------------------------------

    def _get(self, lease_id: int) -> _State:
        state = self._leases.get(lease_id)
        if state is None:
            raise err(ERR_LEASE_NOT_FOUND)
        return state

    def _arm(self, state: _State, deadline: float) -> None:
        state.expiry = deadline
        self._deadline[state.id] = deadline
        heapq.heappush(self._heap, (deadline, state.id))
        self._maybe_compact_heap()

    def _maybe_compact_heap(self) -> None:
        """Drop stale entries once they dominate, so renew-heavy loads keep the heap O(leases)."""
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._deadline):
            self._heap = [(d, i) for i, d in self._deadline.items()]
            heapq.heapify(self._heap)
