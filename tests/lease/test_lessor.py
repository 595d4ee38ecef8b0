"""The lessor: etcd's lease rules with an injected clock."""

from __future__ import annotations

import math
import random

import pytest

from securekv.lease import MAX_LEASE_TTL, Lease, LeaseRow, Lessor, min_lease_ttl, new_lease_id
from securekv.rpctypes import (
    ERR_LEASE_EXIST,
    ERR_LEASE_NOT_FOUND,
    ERR_LEASE_TTL_TOO_LARGE,
    ERR_NOT_LEADER,
    EtcdError,
)


def primary(min_ttl: int = 2) -> Lessor:
    return Lessor(min_ttl, primary=True)


# -- grant -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ttl, granted",
    [(-5, 2), (0, 2), (1, 2), (2, 2), (3, 3), (60, 60), (MAX_LEASE_TTL, MAX_LEASE_TTL)],
)
def test_grant_applies_the_minimum_ttl(ttl: int, granted: int) -> None:
    lessor = primary()
    lease = lessor.grant(7, ttl, now=100.0)
    assert lease == Lease(7, granted, 100.0 + granted, frozenset())


@pytest.mark.parametrize(
    "setup, lease_id, ttl, error",
    [
        ([], 1, MAX_LEASE_TTL + 1, ERR_LEASE_TTL_TOO_LARGE),
        ([1], 1, 10, ERR_LEASE_EXIST),
        ([], 0, 10, ERR_LEASE_NOT_FOUND),
    ],
)
def test_grant_errors(setup: list[int], lease_id: int, ttl: int, error: EtcdError) -> None:
    lessor = primary()
    for i in setup:
        lessor.grant(i, 10, 0.0)
    with pytest.raises(EtcdError) as info:
        lessor.grant(lease_id, ttl, 0.0)
    assert info.value == error
    assert (info.value.code, str(info.value)) == (error.code, error.message)
    assert lessor.leases() == setup


def test_error_strings_are_etcds() -> None:
    assert ERR_LEASE_TTL_TOO_LARGE.message == "etcdserver: too large lease TTL"
    assert ERR_LEASE_EXIST.message == "etcdserver: lease already exists"
    assert ERR_LEASE_NOT_FOUND.message == "etcdserver: requested lease not found"


def test_grant_on_a_follower_has_no_deadline() -> None:
    lessor = Lessor()
    assert lessor.grant(1, 10, 5.0).expiry is None
    assert lessor.expired(1e12) == []


# -- revoke / attach -------------------------------------------------------------------------


def test_revoke_returns_the_keys_to_delete() -> None:
    lessor = primary()
    lessor.grant(1, 10, 0.0)
    for key in (b"b", b"a", b"c"):
        lessor.attach(1, key)
    lessor.detach(1, b"c")
    lessor.detach(1, b"never-attached")
    revoked = lessor.revoke(1)
    assert revoked.keys == frozenset({b"a", b"b"})
    assert 1 not in lessor and lessor.lookup(1) is None and len(lessor) == 0
    with pytest.raises(EtcdError) as info:
        lessor.revoke(1)
    assert info.value == ERR_LEASE_NOT_FOUND


@pytest.mark.parametrize("op", ["attach", "detach"])
def test_attach_detach_unknown_lease(op: str) -> None:
    with pytest.raises(EtcdError) as info:
        getattr(primary(), op)(5, b"k")
    assert info.value == ERR_LEASE_NOT_FOUND


def test_lookup_is_a_snapshot() -> None:
    lessor = primary()
    lessor.grant(1, 10, 0.0)
    snap = lessor.lookup(1)
    lessor.attach(1, b"k")
    assert snap is not None and snap.keys == frozenset()
    assert lessor.lookup(1).keys == frozenset({b"k"})


# -- keepalive / time to live ----------------------------------------------------------------


def test_renew_resets_the_deadline() -> None:
    lessor = primary()
    lessor.grant(1, 10, 0.0)
    assert lessor.renew(1, 8.0) == 10
    assert lessor.expired(17.9) == []
    assert lessor.expired(18.0) == [1]


@pytest.mark.parametrize(
    "setup_ttl, now, expected",
    [
        (None, 1.0, 0),     # unknown lease: TTL 0, no error
        (10, 9.99, 10),     # still alive
        (10, 10.0, 0),      # expired, revoke not applied yet: not resurrected
        (10, 50.0, 0),
    ],
)
def test_renew_table(setup_ttl: int | None, now: float, expected: int) -> None:
    lessor = primary()
    if setup_ttl is not None:
        lessor.grant(1, setup_ttl, 0.0)
    assert lessor.renew(1, now) == expected


def test_renew_needs_the_primary() -> None:
    lessor = Lessor()
    lessor.grant(1, 10, 0.0)
    with pytest.raises(EtcdError) as info:
        lessor.renew(1, 1.0)
    assert info.value == ERR_NOT_LEADER


@pytest.mark.parametrize(
    "now, remaining",
    [(100.0, 10), (100.001, 9), (100.5, 9), (101.0, 9), (105.999, 4), (109.999, 0), (110.0, 0), (200.0, 0)],
)
def test_time_to_live_floors(now: float, remaining: int) -> None:
    lessor = primary()
    lessor.grant(3, 10, 100.0)
    lessor.attach(3, b"z")
    lessor.attach(3, b"a")
    assert lessor.time_to_live(3, now) == (remaining, 10, [b"a", b"z"])


def test_time_to_live_of_unknown_lease() -> None:
    assert primary().time_to_live(9, 0.0) == (-1, 0, [])


def test_time_to_live_on_a_follower_reports_the_granted_ttl() -> None:
    lessor = Lessor()
    lessor.grant(1, 30, 0.0)
    assert lessor.time_to_live(1, 1e6) == (30, 30, [])


def test_leases_lists_every_id() -> None:
    lessor = Lessor()
    for i in (5, 1, 3):
        lessor.grant(i, 10, 0.0)
    assert lessor.leases() == [1, 3, 5]


# -- expiry ----------------------------------------------------------------------------------


def test_expired_earliest_first_with_limit() -> None:
    lessor = primary()
    for lease_id, ttl in [(1, 30), (2, 10), (3, 20), (4, 10), (5, 40)]:
        lessor.grant(lease_id, ttl, 0.0)
    assert lessor.expired(9.9) == []
    assert lessor.expired(25.0, limit=2) == [2, 4]
    assert lessor.expired(25.0, limit=2) == [3]
    assert lessor.expired(25.0) == []


def test_expired_leases_are_reported_again_only_after_the_retry_interval() -> None:
    lessor = Lessor(primary=True, revoke_retry=3.0)
    lessor.grant(1, 5, 0.0)
    assert lessor.expired(5.0) == [1]
    assert lessor.expired(7.9) == []      # revoke in flight
    assert lessor.expired(8.0) == [1]     # the proposal got lost: propose again
    lessor.revoke(1)
    assert lessor.expired(100.0) == []


def test_revoked_and_renewed_leases_are_not_reported() -> None:
    lessor = primary()
    lessor.grant(1, 5, 0.0)
    lessor.grant(2, 5, 0.0)
    lessor.revoke(1)
    lessor.renew(2, 4.0)
    assert lessor.expired(6.0) == []
    assert lessor.expired(9.0) == [2]


def test_promote_extends_every_deadline() -> None:
    lessor = primary()
    lessor.grant(1, 5, 0.0)
    lessor.grant(2, 60, 0.0)
    lessor.demote()
    assert not lessor.is_primary and lessor.expired(1000.0) == []
    assert lessor.lookup(1).expiry is None
    lessor.promote(50.0)  # a new leader: nothing expires early
    assert lessor.is_primary
    assert lessor.expired(54.9) == []
    assert lessor.expired(55.0) == [1]
    assert lessor.time_to_live(2, 50.0) == (60, 60, [])


def test_promote_with_extend_and_checkpoint() -> None:
    lessor = Lessor()
    lessor.grant(1, 100, 0.0)
    lessor.grant(2, 100, 0.0)
    lessor.checkpoint(1, 30)
    lessor.checkpoint(99, 30)  # unknown: ignored
    lessor.promote(10.0, extend=1.0)
    assert lessor.lookup(1).expiry == 41.0
    assert lessor.lookup(2).expiry == 111.0
    lessor.renew(1, 20.0)  # a keepalive forgets the checkpoint
    assert lessor.rows() == [LeaseRow(1, 100, 0), LeaseRow(2, 100, 0)]


@pytest.mark.parametrize("leases, spread", [(999, False), (2000, True)])
def test_promote_spreads_a_pile_up_of_deadlines(leases: int, spread: bool) -> None:
    lessor = Lessor(revoke_rate=1000)
    for i in range(1, leases + 1):
        lessor.grant(i, 10, 0.0)
    lessor.promote(100.0)
    deadlines = sorted(lessor.lookup(i).expiry for i in range(1, leases + 1))
    assert deadlines[0] == 110.0
    if not spread:
        assert deadlines[-1] == 110.0
        return
    # etcd: at most 3/4 of the revoke rate per second, the rest pushed back, none earlier
    per_second: dict[int, int] = {}
    for d in deadlines:
        per_second[math.floor(d)] = per_second.get(math.floor(d), 0) + 1
    assert max(per_second.values()) <= 750
    assert deadlines[-1] < 113.0
    assert lessor.expired(109.99, limit=5000) == []
    assert len(lessor.expired(113.0, limit=5000)) == leases


def test_rows_and_restore_round_trip() -> None:
    lessor = primary()
    lessor.grant(9, 10, 0.0)
    lessor.grant(4, 100, 0.0)
    lessor.checkpoint(4, 50)
    lessor.attach(9, b"k")
    rows = lessor.rows()
    assert rows == [LeaseRow(4, 100, 50), LeaseRow(9, 10, 0)]

    follower = Lessor()
    follower.restore(rows, now=0.0)
    assert follower.leases() == [4, 9] and follower.lookup(9).keys == frozenset()
    leader = Lessor(primary=True)
    leader.restore(rows, now=1000.0)
    assert leader.lookup(4).expiry == 1050.0 and leader.lookup(9).expiry == 1010.0
    assert leader.expired(1010.0) == [9]


# -- ids and minimum TTL ---------------------------------------------------------------------


def test_new_lease_id_is_a_positive_int63_from_the_rng() -> None:
    ids = [new_lease_id(random.Random(seed)) for seed in range(200)]
    assert all(0 < i < 2**63 for i in ids)
    assert new_lease_id(random.Random(1)) == new_lease_id(random.Random(1))
    assert len(set(ids)) == 200


class Scripted:
    def __init__(self, values: list[int]) -> None:
        self.values = values

    def getrandbits(self, k: int) -> int:
        assert k == 63
        return self.values.pop(0)


def test_new_lease_id_skips_zero_and_taken_ids() -> None:
    taken = {5}
    assert new_lease_id(Scripted([0, 5, 6]), exists=taken.__contains__) == 6
    with pytest.raises(RuntimeError):
        new_lease_id(Scripted([5] * 64), exists=taken.__contains__)


@pytest.mark.parametrize(
    "heartbeat_ms, election_ms, expected",
    [(100, 1000, 2), (100, 1500, 3), (50, 500, 1), (500, 5000, 8), (100, 3000, 5), (10, 100, 1)],
)
def test_min_lease_ttl(heartbeat_ms: int, election_ms: int, expected: int) -> None:
    assert min_lease_ttl(heartbeat_ms, election_ms) == expected


@pytest.mark.parametrize("kwargs", [{"min_ttl": 0}, {"revoke_rate": 0}])
def test_constructor_rejects_bad_limits(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Lessor(**kwargs)


# -- model -----------------------------------------------------------------------------------


def run_model(seed: int) -> None:
    """Random operations; expired() must match a brute-force scan of a dict model."""
    rng = random.Random(seed)
    retry = 3.0
    lessor = Lessor(2, primary=True, revoke_retry=retry)
    ttl: dict[int, int] = {}
    deadline: dict[int, float] = {}   # next time expired() may report the lease
    expiry: dict[int, float] = {}     # the lease's real deadline
    is_primary = True
    now = 0.0
    for _ in range(300):
        now += rng.choice([0.0, 0.1, 0.5, 1.0, 2.5])
        op = rng.random()
        lease_id = rng.randint(1, 12)
        if op < 0.3:
            t = rng.randint(0, 8)
            if lease_id in ttl:
                with pytest.raises(EtcdError):
                    lessor.grant(lease_id, t, now)
            else:
                lessor.grant(lease_id, t, now)
                ttl[lease_id] = max(t, 2)
                if is_primary:
                    deadline[lease_id] = expiry[lease_id] = now + ttl[lease_id]
        elif op < 0.4 and lease_id in ttl:
            lessor.revoke(lease_id)
            del ttl[lease_id]
            deadline.pop(lease_id, None)
            expiry.pop(lease_id, None)
        elif op < 0.6 and is_primary:
            got = lessor.renew(lease_id, now)
            if lease_id not in ttl or expiry[lease_id] <= now:
                assert got == 0
            else:
                assert got == ttl[lease_id]
                deadline[lease_id] = expiry[lease_id] = now + ttl[lease_id]
        elif op < 0.85 and is_primary:
            limit = rng.randint(1, 5)
            due = sorted((d, i) for i, d in deadline.items() if d <= now)[:limit]
            assert lessor.expired(now, limit) == [i for _, i in due]
            for _, i in due:
                deadline[i] = now + retry
        elif op < 0.9:
            if is_primary:
                lessor.demote()
                deadline.clear()
                expiry.clear()
            else:
                lessor.promote(now)
                for i, t in ttl.items():
                    deadline[i] = expiry[i] = now + t
            is_primary = not is_primary
        else:
            remaining, granted, _ = lessor.time_to_live(lease_id, now)
            if lease_id not in ttl:
                assert (remaining, granted) == (-1, 0)
            elif is_primary:
                assert (remaining, granted) == (max(0, math.floor(expiry[lease_id] - now)), ttl[lease_id])
        assert lessor.leases() == sorted(ttl)
        assert len(lessor._heap) <= max(64, 2 * len(ttl)) + 1  # lazy deletion stays bounded


@pytest.mark.parametrize("block", range(4))
def test_random_operations_match_the_model(block: int) -> None:
    for seed in range(block * 50, block * 50 + 50):
        try:
            run_model(seed)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc
