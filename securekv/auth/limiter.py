"""Rate limiting of failed logins, per user name and per client address (pure; clock passed in).

Each key (a user name, a peer address) has a leaky bucket: a failed login adds one, the level
drains at ``rate`` per second, and at ``burst`` the key is refused without checking the
password (no bcrypt work for an attacker) until the level has drained below it. A success
empties the user's bucket (not the address's: one good password must not unlock guessing
others). etcd has no such limit; a few typos never reach it, a password-guessing loop does.
"""

from __future__ import annotations

import attrs

from securekv.rpctypes import ERR_TOO_MANY_REQUESTS, err

MAX_KEYS = 10_000


@attrs.frozen
class Limit:
    burst: float  # failures tolerated in a row
    rate: float  # failures forgiven per second


USER_LIMIT = Limit(burst=5, rate=0.2)  # 5 quick failures, then one try every 5 s
ADDRESS_LIMIT = Limit(burst=20, rate=1.0)  # 20 quick failures, then one try every second


class _Buckets:
    def __init__(self, limit: Limit, max_keys: int) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (level, as of time)

    def level(self, key: str, now: float) -> float:
        entry = self._levels.get(key)
        if entry is None:
            return 0.0
        level, at = entry
        return max(0.0, level - (now - at) * self.limit.rate)

    def blocked(self, key: str, now: float) -> bool:
        """``burst`` failures in a row have (nearly) filled the bucket: another try must wait."""
        return self.level(key, now) > self.limit.burst - 1

    def fail(self, key: str, now: float) -> None:
        level = self.level(key, now) + 1.0
        self._levels.pop(key, None)  # re-insert: the dict stays ordered by last failure
        if len(self._levels) >= self.max_keys:
            self._evict(now)
        self._levels[key] = (level, now)

    def forget(self, key: str) -> None:
        self._levels.pop(key, None)

    def _evict(self, now: float) -> None:
        for key in [k for k in self._levels if self.level(k, now) <= 0.0]:
            del self._levels[key]
        while len(self._levels) >= self.max_keys:  # all still hot: the least recent goes
            del self._levels[next(iter(self._levels))]

    def __len__(self) -> int:
        return len(self._levels)


class LoginLimiter:
    def __init__(self, user_limit: Limit = USER_LIMIT, address_limit: Limit = ADDRESS_LIMIT,
                 *, max_keys: int = MAX_KEYS) -> None:
        self.users = _Buckets(user_limit, max_keys)
        self.addresses = _Buckets(address_limit, max_keys)

    def check(self, user: str, address: str, now: float) -> None:
        """Raise ``etcdserver: too many requests`` while either key is over its limit."""
        if self.users.blocked(user, now) or (address and self.addresses.blocked(address, now)):
            raise err(ERR_TOO_MANY_REQUESTS)

    def failed(self, user: str, address: str, now: float) -> None:
        self.users.fail(user, now)
        if address:
            self.addresses.fail(address, now)

    def succeeded(self, user: str) -> None:
        self.users.forget(user)


__all__ = ["ADDRESS_LIMIT", "Limit", "LoginLimiter", "USER_LIMIT"]
