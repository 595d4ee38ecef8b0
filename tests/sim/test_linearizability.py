"""The linearizability checker agrees with brute force, and rejects the classic anomalies."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securekv.testing.linearizability import (
    Op,
    OpKind,
    Outcome,
    cas,
    check,
    check_key,
    read,
    step,
    write,
)

# --------------------------------------------------------------------------- brute force oracle


def _precedes(a: Op, b: Op) -> bool:
    return a.ret is not None and a.ret < b.call


def _replays(order: Sequence[Op]) -> bool:
    """Replay ``order`` on a dict of registers; False at the first op whose output disagrees.
    Written out here, not the checker's ``step``, so a wrong model cannot agree with itself."""
    data: dict[object, object] = {}
    for op in order:
        current = data.get(op.key)
        if op.kind is OpKind.WRITE:
            data[op.key] = op.value
        elif op.kind is OpKind.READ:
            if not op.pending and op.output != current:
                return False
        else:
            hit = current == op.expected
            if not op.pending and bool(op.output) is not hit:
                return False
            if hit:
                data[op.key] = op.value
    return True


def brute_force(history: Sequence[Op]) -> bool:
    """Linearizable iff SOME subset of the pending ops plus all completed ops has an order that
    respects real time and replays legally on one register per key. Independent of the checker:
    no per-key split, no memo, no event list, its own register model."""
    done = [op for op in history if not op.pending]
    pending = [op for op in history if op.pending]
    for r in range(len(pending) + 1):
        for chosen in itertools.combinations(pending, r):
            ops = done + list(chosen)
            for order in itertools.permutations(ops):
                if any(_precedes(order[j], order[i])
                       for i in range(len(order)) for j in range(i + 1, len(order))):
                    continue
                if _replays(order):
                    return True
    return False


# --------------------------------------------------------------------------- random histories

VALUES = [None, 1, 2, 3]


def _random_op(rng: random.Random, client: int, key: str, call: int, ret: int | None) -> Op:
    kind = rng.choice(list(OpKind))
    if kind is OpKind.WRITE:
        return write(client, key, rng.choice(VALUES[1:]), call, ret)
    if kind is OpKind.READ:
        return read(client, key, rng.choice(VALUES), call, ret)
    return cas(client, key, rng.choice(VALUES), rng.choice(VALUES[1:]), rng.random() < 0.5, call, ret)


def _interval(rng: random.Random, pending_p: float) -> tuple[int, int | None]:
    call = rng.randrange(0, 16)
    ret = None if rng.random() < pending_p else call + rng.randrange(0, 6)
    return call, ret


def noise_history(rng: random.Random, n: int, keys: Sequence[str]) -> list[Op]:
    """Random ops with random outputs: mostly NOT linearizable."""
    ops = []
    for _ in range(n):
        call, ret = _interval(rng, 0.2)
        ops.append(_random_op(rng, rng.randrange(4), rng.choice(keys), call, ret))
    return ops


def plausible_history(rng: random.Random, n: int, keys: Sequence[str]) -> list[Op]:
    """Ops executed sequentially at random linearization points inside their intervals, so the
    history is linearizable — then sometimes one output is corrupted."""
    points = sorted(rng.sample(range(0, 40), n))
    state: dict[str, object] = {}
    ops = []
    for point in points:
        call = point - rng.randrange(0, 8)
        ret = None if rng.random() < 0.15 else point + rng.randrange(0, 8)
        proto = _random_op(rng, rng.randrange(4), rng.choice(keys), call, ret)
        current = state.get(proto.key)
        if proto.kind is OpKind.READ:
            op = read(proto.client, proto.key, current, call, ret)
        elif proto.kind is OpKind.CAS:
            expected = current if rng.random() < 0.5 else proto.expected
            op = cas(proto.client, proto.key, expected, proto.value, expected == current, call, ret)
        else:
            op = proto
        _, state[op.key] = step(current, op)
        ops.append(op)
    if rng.random() < 0.5:
        i = rng.randrange(n)
        victim = ops[i]
        if victim.kind is OpKind.READ:
            ops[i] = read(victim.client, victim.key, rng.choice(VALUES), victim.call, victim.ret)
        elif victim.kind is OpKind.CAS:
            ops[i] = cas(victim.client, victim.key, victim.expected, victim.value,
                         not victim.output, victim.call, victim.ret)
    rng.shuffle(ops)
    return ops


@pytest.mark.parametrize("generator", [noise_history, plausible_history])
@pytest.mark.parametrize("keys", [("a",), ("a", "b")], ids=["1key", "2keys"])
def test_checker_agrees_with_brute_force(generator, keys) -> None:
    rng = random.Random(f"{generator.__name__}-{len(keys)}")
    verdicts = {True: 0, False: 0}
    for trial in range(700):
        history = generator(rng, rng.randrange(1, 8), keys)
        expected = brute_force(history)
        got = check(history)
        assert got.outcome is (Outcome.OK if expected else Outcome.VIOLATION), (
            f"trial {trial}: brute force says {expected}\n"
            + "\n".join(op.describe() for op in sorted(history, key=lambda o: o.call))
            + "\n" + got.explain()
        )
        verdicts[expected] += 1
    # The comparison means something only if both verdicts occur often.
    assert verdicts[True] > 100 and verdicts[False] > 100, verdicts


# --------------------------------------------------------------------------- known anomalies

REJECT = {
    "stale read after a completed write": [
        write(1, "k", 1, 0, 2), read(2, "k", None, 3, 4)],
    "lost write (read sees the older of two sequential writes)": [
        write(1, "k", 1, 0, 1), write(1, "k", 2, 2, 3), read(2, "k", 1, 4, 5)],
    "non-monotonic reads during a concurrent write": [
        write(1, "k", 1, 0, 10), read(2, "k", 1, 1, 2), read(2, "k", None, 3, 4)],
    "read of a value nobody wrote": [
        write(1, "k", 1, 0, 1), read(2, "k", 7, 2, 3)],
    "two concurrent CAS from the same value both succeed": [
        cas(1, "k", None, 1, True, 0, 5), cas(2, "k", None, 2, True, 0, 5)],
    "CAS succeeds against a value that was overwritten": [
        write(1, "k", 5, 0, 1), cas(2, "k", None, 1, True, 2, 3)],
    "CAS fails although the value matched and nothing ran concurrently": [
        write(1, "k", 5, 0, 1), cas(2, "k", 5, 6, False, 2, 3)],
    "successful CAS not visible to a later read": [
        cas(1, "k", None, 1, True, 0, 1), read(2, "k", None, 2, 3)],
    "effect of a pending write seen before the write was called": [
        read(1, "k", 1, 0, 1), write(2, "k", 1, 5, None)],
    "pending write seen, then unseen": [
        write(1, "k", 1, 0, None), read(3, "k", 1, 3, 4), read(2, "k", None, 5, 6)],
    "pending CAS whose expected value never held takes effect": [
        cas(1, "k", 0, 1, None, 0, None), read(2, "k", 1, 3, 4)],
    "stale read on one key while the other key is fine": [
        write(1, "a", 1, 0, 1), read(2, "a", 1, 2, 3),
        write(1, "b", 1, 0, 1), read(2, "b", None, 2, 3)],
}

ACCEPT = {
    "read concurrent with a write may see either value (new)": [
        write(1, "k", 1, 0, 10), read(2, "k", 1, 1, 2)],
    "read concurrent with a write may see either value (old)": [
        write(1, "k", 1, 0, 10), read(2, "k", None, 1, 2)],
    "concurrent writes ordered either way (1 last)": [
        write(1, "k", 1, 0, 10), write(2, "k", 2, 0, 10), read(3, "k", 1, 11, 12)],
    "concurrent writes ordered either way (2 last)": [
        write(1, "k", 1, 0, 10), write(2, "k", 2, 0, 10), read(3, "k", 2, 11, 12)],
    "equal times are concurrent": [
        write(1, "k", 1, 0, 5), read(2, "k", None, 5, 6)],
    "one of two concurrent CAS wins": [
        cas(1, "k", None, 1, True, 0, 5), cas(2, "k", None, 2, False, 0, 5), read(3, "k", 1, 6, 7)],
    "pending write never observed": [
        write(1, "k", 1, 0, None), read(2, "k", None, 5, 6)],
    "pending write observed long after its call": [
        write(1, "k", 1, 0, None), read(2, "k", None, 5, 6), read(2, "k", 1, 50, 51)],
    "pending CAS takes effect": [
        write(1, "k", 0, 0, 1), cas(1, "k", 0, 1, None, 2, None), read(2, "k", 1, 3, 4)],
    "pending read is irrelevant": [
        write(1, "k", 1, 0, 1), read(2, "k", 42, 2, None)],
    "empty history": [],
}


@pytest.mark.parametrize("name", sorted(REJECT))
def test_rejects_known_anomaly(name: str) -> None:
    history = REJECT[name]
    result = check(history)
    assert result.outcome is Outcome.VIOLATION
    assert brute_force(history) is False
    assert "NOT linearizable" in result.explain()


@pytest.mark.parametrize("name", sorted(ACCEPT))
def test_accepts_linearizable(name: str) -> None:
    history = ACCEPT[name]
    assert check(history).ok
    assert brute_force(history) is True


def test_violation_names_the_op_that_cannot_be_placed() -> None:
    result = check([write(1, "k", 1, 0, 2), read(2, "k", None, 3, 4)])
    (key_result,) = result.keys
    assert [op.describe() for op in key_result.best_prefix] == ["c1 [0,2] 'k' write(1)"]
    assert [op.describe() for op in key_result.stuck] == ["c2 [3,4] 'k' read() -> None"]


def test_rejects_return_before_call() -> None:
    with pytest.raises(ValueError, match="returns before it is called"):
        check([write(1, "k", 1, 5, 4)])


def test_long_history_is_fast_thanks_to_memo() -> None:
    """A few hundred ops with heavy concurrency: plain Wing & Gong would explode; the memo and
    the per-key split keep it in a bounded number of steps."""
    rng = random.Random(7)
    state: dict[str, object] = {}
    history = []
    t = 0
    for n in range(600):
        t += 1
        key = rng.choice("abc")
        client = n % 5
        call, ret = t - rng.randrange(0, 12), t + rng.randrange(0, 12)
        if n % 3 == 0:
            history.append(write(client, key, n, call, ret))
            state[key] = n
        elif n % 3 == 1:
            history.append(read(client, key, state.get(key), call, ret))
        else:
            ok = rng.random() < 0.5
            expected = state.get(key) if ok else -1
            history.append(cas(client, key, expected, n, ok, call, ret))
            if ok:
                state[key] = n
    result = check(history, max_steps_per_key=200_000)
    assert result.ok, result.explain()
    # Corrupt one late read: still decided (not UNKNOWN) and rejected.
    i = max(i for i, op in enumerate(history) if op.kind is OpKind.READ)
    bad = history[i]
    history[i] = read(bad.client, bad.key, "never-written", bad.call, bad.ret)
    assert check(history, max_steps_per_key=200_000).outcome is Outcome.VIOLATION


def test_step_budget_reports_unknown() -> None:
    history = [write(c, "k", c, 0, 100) for c in range(12)] + [read(99, "k", -1, 101, 102)]
    result = check_key(history, max_steps=50)
    assert result.outcome is Outcome.UNKNOWN
    assert "undecided" in result.explain()


# --------------------------------------------------------------------------- hypothesis


@st.composite
def histories(draw: st.DrawFn) -> list[Op]:
    ops = []
    for client in range(draw(st.integers(1, 6))):
        call = draw(st.integers(0, 12))
        ret = draw(st.one_of(st.none(), st.integers(call, call + 6)))
        key = draw(st.sampled_from("ab"))
        kind = draw(st.sampled_from(list(OpKind)))
        if kind is OpKind.WRITE:
            ops.append(write(client, key, draw(st.sampled_from(VALUES[1:])), call, ret))
        elif kind is OpKind.READ:
            ops.append(read(client, key, draw(st.sampled_from(VALUES)), call, ret))
        else:
            ops.append(cas(client, key, draw(st.sampled_from(VALUES)),
                           draw(st.sampled_from(VALUES[1:])), draw(st.booleans()), call, ret))
    return ops


@settings(derandomize=True, max_examples=400, deadline=None, database=None)
@given(histories())
def test_checker_agrees_with_brute_force_hypothesis(history: list[Op]) -> None:
    """Same property, explored (and shrunk on failure) by Hypothesis; derandomized so the
    suite stays deterministic."""
    assert check(history).ok == brute_force(history)
