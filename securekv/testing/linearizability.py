"""Linearizability checker for a key-value register history (write, read, compare-and-set).

Why our own: the simulator must judge every client history it produces, deterministically and
without extra dependencies, and the result has to explain itself when it fails.

Algorithm: Wing & Gong's search over the history's call/return events, with Lowe's
memoization of ``(set of linearized ops, model state)`` (the shape Porcupine uses). Each key is
an independent register, so the history is partitioned per key first — that keeps every search
small.

Semantics the checker assumes:

* Times are integers on one virtual clock. Op ``a`` precedes op ``b`` in real time iff
  ``a.ret < b.call``; equal times count as concurrent.
* An op with ``ret is None`` never returned (client timed out, node crashed): it may have
  taken effect at any point after its call, or never. Its output is unknown. Ops the client
  knows did *not* take effect must simply be left out of the history.
* A key that was never written reads as ``None`` (absent).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

import attrs

Value = Hashable


class OpKind(enum.Enum):
    WRITE = "write"
    READ = "read"
    CAS = "cas"


@attrs.frozen(slots=True)
class Op:
    """One client operation.

    ``value`` is the value written (WRITE) or the new value (CAS); ``expected`` the value a CAS
    compares against; ``output`` the value a READ saw (``None`` = absent) or whether a CAS
    succeeded. For a pending op (``ret is None``) ``output`` is ignored.
    """

    client: int
    kind: OpKind
    key: Hashable
    call: int
    ret: int | None
    value: Value = None
    expected: Value = None
    output: Value = None

    @property
    def pending(self) -> bool:
        return self.ret is None

    def describe(self) -> str:
        span = f"[{self.call},{'?' if self.ret is None else self.ret}]"
        if self.kind is OpKind.WRITE:
            body = f"write({self.value!r})"
        elif self.kind is OpKind.READ:
            body = f"read() -> {'?' if self.pending else repr(self.output)}"
        else:
            res = "?" if self.pending else ("ok" if self.output else "fail")
            body = f"cas({self.expected!r} -> {self.value!r}) -> {res}"
        return f"c{self.client} {span} {self.key!r} {body}"


def write(client: int, key: Hashable, value: Value, call: int, ret: int | None) -> Op:
    return Op(client, OpKind.WRITE, key, call, ret, value=value)


def read(client: int, key: Hashable, output: Value, call: int, ret: int | None) -> Op:
    return Op(client, OpKind.READ, key, call, ret, output=output)


def cas(client: int, key: Hashable, expected: Value, new: Value, ok: bool | None, call: int,
        ret: int | None) -> Op:
    return Op(client, OpKind.CAS, key, call, ret, value=new, expected=expected, output=ok)


def step(state: Value, op: Op) -> tuple[bool, Value]:
    """The sequential register model: is ``op`` legal in ``state``, and the state after it."""
    if op.kind is OpKind.WRITE:
        return True, op.value
    if op.kind is OpKind.READ:
        return op.pending or op.output == state, state
    succeeded = state == op.expected
    if not op.pending and bool(op.output) != succeeded:
        return False, state
    return True, (op.value if succeeded else state)


class Outcome(enum.Enum):
    OK = "ok"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # the step budget ran out before the search decided


@attrs.frozen(slots=True)
class KeyResult:
    key: Hashable
    outcome: Outcome
    steps: int
    #: On a violation: the longest linearization found, then the completed ops that could not
    #: be placed after it (the reason the search failed).
    best_prefix: tuple[Op, ...] = ()
    stuck: tuple[Op, ...] = ()

    def explain(self, limit: int = 8) -> str:
        if self.outcome is Outcome.OK:
            return f"key {self.key!r}: linearizable"
        if self.outcome is Outcome.UNKNOWN:
            return f"key {self.key!r}: undecided after {self.steps} search steps"
        lines = [f"key {self.key!r}: NOT linearizable"]
        tail = self.best_prefix[-limit:]
        if len(self.best_prefix) > len(tail):
            lines.append(f"  ... {len(self.best_prefix) - len(tail)} earlier ops linearized")
        lines += [f"  linearized: {op.describe()}" for op in tail]
        lines += [f"  cannot place: {op.describe()}" for op in self.stuck[:limit]]
        return "\n".join(lines)


@attrs.frozen(slots=True)
class CheckResult:
    outcome: Outcome
    keys: tuple[KeyResult, ...]

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def steps(self) -> int:
        return sum(k.steps for k in self.keys)

    def explain(self) -> str:
        bad = [k for k in self.keys if k.outcome is not Outcome.OK]
        if not bad:
            return f"linearizable ({len(self.keys)} keys)"
        return "\n".join(k.explain() for k in bad)


def check_key(ops: Sequence[Op], initial: Value = None, max_steps: int | None = None) -> KeyResult:
    """Decide whether the ops of one key (all on the same register) are linearizable."""
    key = ops[0].key if ops else None
    n = len(ops)
    completed = sum(1 for op in ops if not op.pending)
    if completed == 0:
        return KeyResult(key, Outcome.OK, 0)

    # Events sorted by time; a call sorts before a return at the same time (concurrent).
    events: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            if op.ret < op.call:
                raise ValueError(f"op returns before it is called: {op.describe()}")
            events.append((op.ret, 1, i))
    events.sort()

    # Doubly linked list over event slots 1..m; slot 0 is the head sentinel, -1 the end.
    m = len(events)
    nxt = list(range(1, m + 1)) + [-1]
    nxt[m] = -1
    prv = [-1] + list(range(0, m))
    is_ret = [0] * (m + 1)
    op_of = [0] * (m + 1)
    ret_slot = [-1] * n
    for slot, (_, kind, i) in enumerate(events, start=1):
        is_ret[slot] = kind
        op_of[slot] = i
        if kind:
            ret_slot[i] = slot

    def unlink(s: int) -> None:
        p, q = prv[s], nxt[s]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def relink(s: int) -> None:
        p, q = prv[s], nxt[s]
        nxt[p] = s
        if q != -1:
            prv[q] = s

    state: Value = initial
    linearized = 0
    done = 0
    stack: list[tuple[int, Value]] = []
    seen: set[tuple[int, Value]] = set()
    best: list[int] = []
    steps = 0
    slot = nxt[0]
    while True:
        steps += 1
        if max_steps is not None and steps > max_steps:
            return KeyResult(key, Outcome.UNKNOWN, steps)
        if slot != -1 and not is_ret[slot]:
            i = op_of[slot]
            legal, new_state = step(state, ops[i])
            if legal:
                new_lin = linearized | (1 << i)
                memo = (new_lin, new_state)
                if memo not in seen:
                    seen.add(memo)
                    stack.append((slot, state))
                    state, linearized = new_state, new_lin
                    if not ops[i].pending:
                        done += 1
                        if done == completed:
                            return KeyResult(key, Outcome.OK, steps)
                    unlink(slot)
                    if ret_slot[i] != -1:
                        unlink(ret_slot[i])
                    if len(stack) > len(best):
                        best = [op_of[s] for s, _ in stack]
                    slot = nxt[0]
                    continue
            slot = nxt[slot]
            continue
        # A return (or the end): the op it closes was not linearized in time — backtrack.
        if not stack:
            return _violation(key, ops, best, steps)
        top, state = stack.pop()
        i = op_of[top]
        linearized &= ~(1 << i)
        if not ops[i].pending:
            done -= 1
        if ret_slot[i] != -1:
            relink(ret_slot[i])
        relink(top)
        slot = nxt[top]


def _violation(key: Hashable, ops: Sequence[Op], best: list[int], steps: int) -> KeyResult:
    placed = set(best)
    rest = [op for i, op in enumerate(ops) if i not in placed and not op.pending]
    first_ret = min(op.ret for op in rest if op.ret is not None)
    # The ops that had to be placed next: called no later than the earliest pending deadline.
    stuck = sorted((op for op in rest if op.call <= first_ret), key=lambda o: (o.call, o.client))
    return KeyResult(key, Outcome.VIOLATION, steps, tuple(ops[i] for i in best), tuple(stuck))


def check(history: Iterable[Op], initial: Value = None,
          max_steps_per_key: int | None = None) -> CheckResult:
    """Check a whole history, one key at a time; the first non-OK key decides the outcome."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    results = []
    outcome = Outcome.OK
    for key in sorted(by_key, key=repr):
        res = check_key(by_key[key], initial, max_steps_per_key)
        results.append(res)
        if res.outcome is Outcome.VIOLATION:
            outcome = Outcome.VIOLATION
        elif res.outcome is Outcome.UNKNOWN and outcome is Outcome.OK:
            outcome = Outcome.UNKNOWN
    return CheckResult(outcome, tuple(results))
