"""Checks over a recorded client history against the store's own final history (pure).

The fault suite (``python -m securekv.torture``) records what its clients did and saw — KV
operations with call/return times, watch deliveries, lease calls — and, once the cluster is
healed, reads the *reference history*: every MVCC event from revision 1 on. These functions
judge the recording. They are pure (no clocks, files or sockets), so they are unit-tested on
hand-made histories and the same code judges every real run.

Times are integers on one clock (the recorder's monotonic nanoseconds); ``ret is None`` means
the client does not know whether the operation took effect (timeout, connection lost).

What is checked, and why each is a safety property:

* **Linearizability**, per key, with :mod:`securekv.testing.linearizability`: puts, deletes,
  linearizable gets and compare-and-set transactions on a register. Pending puts and CAS whose
  unique value never appears in the reference history had no effect and are left out (as the
  simulator does); that only makes the search smaller and the check stricter.
* **Lost writes**: every acknowledged put / successful CAS / delete must appear in the
  reference history at the revision its response named, with its key and value.
* **Watches**: each watcher's deliveries, across reconnects (resumed with ``start_revision``),
  must be in revision order, each event once, nothing the reference does not hold, and
  nothing missing between its first start revision and the last revision it confirmed
  (a gap).
* **Leases**: a key attached to a lease that was revoked or has expired must not survive; a
  keep-alive invoked after a revoke was acknowledged must not succeed; a lease nobody keeps alive must be gone once its TTL (plus the documented leader
  change extension) has passed.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

from securekv.testing import linearizability as lin


class EventKind(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@attrs.frozen(slots=True)
class Event:
    """One MVCC change as the reference history or a watch delivers it."""

    revision: int
    key: bytes
    kind: EventKind
    value: bytes = b""
    lease: int = 0

    def describe(self) -> str:
        body = f"={self.value!r}" if self.kind is EventKind.PUT else ""
        return f"rev {self.revision} {self.kind.value} {self.key!r}{body}"


class KVKind(enum.Enum):
    PUT = "put"
    GET = "get"
    CAS = "cas"
    DELETE = "delete"


@attrs.frozen(slots=True)
class KVOp:
    """One client KV operation.

    ``value``: the value written (PUT), the new value (CAS) or the value read (GET, None =
    absent). ``expected``: what a CAS compared against (None = the key must not exist).
    ``ok``: whether a CAS succeeded. ``revision``: the response header's revision of an
    acknowledged write; ``deleted``: how many keys an acknowledged delete removed.
    """

    client: int
    kind: KVKind
    key: bytes
    call: int
    ret: int | None
    value: bytes | None = None
    expected: bytes | None = None
    ok: bool | None = None
    revision: int = 0
    deleted: int = 0
    member: str = ""

    @property
    def pending(self) -> bool:
        return self.ret is None


@attrs.frozen
class KVReport:
    result: lin.CheckResult
    lost: tuple[str, ...]
    phantoms: tuple[str, ...]
    checked_ops: int
    dropped_pending: int

    @property
    def violations(self) -> int:
        return sum(1 for k in self.result.keys if k.outcome is lin.Outcome.VIOLATION) + len(self.phantoms)

    @property
    def undecided(self) -> int:
        return sum(1 for k in self.result.keys if k.outcome is lin.Outcome.UNKNOWN)


def _to_lin(op: KVOp) -> lin.Op:
    if op.kind is KVKind.PUT:
        return lin.write(op.client, op.key, op.value, op.call, op.ret)
    if op.kind is KVKind.DELETE:
        return lin.write(op.client, op.key, None, op.call, op.ret)
    if op.kind is KVKind.GET:
        return lin.read(op.client, op.key, op.value, op.call, op.ret)
    return lin.cas(op.client, op.key, op.expected, op.value, op.ok, op.call, op.ret)


def check_kv(ops: Iterable[KVOp], reference: Sequence[Event], *, prefix: bytes = b"",
             max_steps_per_key: int | None = None) -> KVReport:
    """Linearizability per key, lost acknowledged writes, and values nobody wrote."""
    ops = list(ops)
    applied = {(e.key, e.value) for e in reference if e.kind is EventKind.PUT}
    at_revision: dict[tuple[int, bytes], Event] = {(e.revision, e.key): e for e in reference}
    history: list[lin.Op] = []
    dropped = 0
    lost: list[str] = []
    written: set[tuple[bytes, bytes]] = set()
    for op in ops:
        if op.kind in (KVKind.PUT, KVKind.CAS) and op.value is not None:
            written.add((op.key, op.value))
        if op.pending:
            if op.kind is KVKind.GET:
                dropped += 1
                continue
            if op.kind in (KVKind.PUT, KVKind.CAS) and (op.key, op.value) not in applied:
                dropped += 1
                continue
        else:
            missing = _lost(op, at_revision)
            if missing:
                lost.append(missing)
        history.append(_to_lin(op))
    phantoms = [f"{e.describe()}: no client wrote this value"
                for e in reference if e.kind is EventKind.PUT and e.key.startswith(prefix)
                and (e.key, e.value) not in written]
    result = lin.check(history, None, max_steps_per_key)
    return KVReport(result, tuple(lost), tuple(phantoms), len(history), dropped)


def _lost(op: KVOp, at_revision: Mapping[tuple[int, bytes], Event]) -> str | None:
    """Why an acknowledged write is not in the reference history, or None if it is."""
    if op.kind is KVKind.GET or (op.kind is KVKind.CAS and not op.ok):
        return None
    if op.kind is KVKind.DELETE and op.deleted == 0:
        return None
    found = at_revision.get((op.revision, op.key))
    want = EventKind.DELETE if op.kind is KVKind.DELETE else EventKind.PUT
    if found is not None and found.kind is want and (want is EventKind.DELETE or found.value == op.value):
        return None
    what = f"{op.kind.value} {op.key!r}" + (f"={op.value!r}" if want is EventKind.PUT else "")
    seen = found.describe() if found is not None else "nothing for that key"
    return (f"client {op.client} {what} acknowledged at revision {op.revision} by {op.member or '?'}, "
            f"but the final history has {seen} there")


# -- watches ---------------------------------------------------------------------------------

@attrs.frozen
class WatchSegment:
    """One watch stream of a watcher: where it was opened and what it delivered."""

    member: str
    start_revision: int
    events: tuple[Event, ...]
    #: The highest revision this stream confirmed complete (its last event's revision, or a
    #: progress notification's header revision).
    confirmed: int


@attrs.frozen
class WatchReport:
    watcher: str
    delivered: int
    expected: int
    gaps: tuple[str, ...]
    errors: tuple[str, ...]


def check_watch(watcher: str, segments: Sequence[WatchSegment], reference: Sequence[Event],
                prefix: bytes) -> WatchReport:
    """Order, exactly-once and completeness of one watcher's deliveries across its streams."""
    if not segments:
        return WatchReport(watcher, 0, 0, (), ())
    errors: list[str] = []
    first = segments[0].start_revision
    upto = max(s.confirmed for s in segments)
    seen: dict[tuple[int, bytes], Event] = {}
    last_rev = 0
    delivered = 0
    for n, seg in enumerate(segments):
        for ev in seg.events:
            delivered += 1
            where = f"stream {n} ({seg.member}, start {seg.start_revision})"
            if ev.revision < seg.start_revision:
                errors.append(f"{where}: {ev.describe()} is before the stream's start revision")
            if ev.revision < last_rev:
                errors.append(f"{where}: {ev.describe()} after revision {last_rev} (out of order)")
            last_rev = max(last_rev, ev.revision)
            ident = (ev.revision, ev.key)
            if ident in seen:
                errors.append(f"{where}: {ev.describe()} delivered twice")
                continue
            seen[ident] = ev
    expected = [e for e in reference if e.key.startswith(prefix) and first <= e.revision <= upto]
    want = {(e.revision, e.key): e for e in expected}
    gaps = [f"{e.describe()} never delivered" for ident, e in want.items() if ident not in seen]
    for ident, ev in seen.items():
        ref = want.get(ident)
        if ref is None:
            errors.append(f"{ev.describe()} delivered but not in the final history")
        elif (ref.kind, ref.value) != (ev.kind, ev.value):
            errors.append(f"{ev.describe()} delivered, the final history has {ref.describe()}")
    return WatchReport(watcher, delivered, len(expected), tuple(gaps), tuple(errors))


# -- leases ----------------------------------------------------------------------------------

@attrs.frozen(slots=True)
class LeaseCall:
    """A keep-alive or time-to-live call: ``ttl`` > 0 alive, <= 0 gone; None = no answer."""

    call: int
    ret: int | None
    ttl: int | None
    member: str = ""


@attrs.frozen
class LeaseLog:
    lease: int
    ttl: int
    granted: int
    keepalives: tuple[LeaseCall, ...] = ()
    probes: tuple[LeaseCall, ...] = ()  # TimeToLive calls
    #: When an acknowledged revoke returned (None: never revoked, or unknown outcome).
    revoked: int | None = None
    #: The lease is meant to expire: nobody renews it after this time.
    abandoned: int | None = None


@attrs.frozen
class LeaseReport:
    leases: int
    errors: tuple[str, ...]


def check_leases(logs: Sequence[LeaseLog], final_keys: Sequence[tuple[bytes, int]],
                 final_ttl: Mapping[int, int], expiry_deadline_passed: Iterable[int] = ()) -> LeaseReport:
    """Lease safety.

    ``final_keys``: (key, lease) of every key under the lease prefix at the end;
    ``final_ttl``: the remaining TTL each lease had at the end (<= 0: gone);
    ``expiry_deadline_passed``: leases that were abandoned long enough ago that they must be
    gone by now (the caller knows the clock; this module does not).
    """
    errors: list[str] = []
    by_id = {log.lease: log for log in logs}
    for log in logs:
        if log.revoked is None:
            continue
        for c in log.keepalives:
            if c.ttl is not None and c.ttl > 0 and c.call > log.revoked:
                errors.append(f"lease {log.lease:x}: a keep-alive invoked after its revoke was "
                              f"acknowledged renewed it (TTL {c.ttl}, via {c.member or '?'})")
    for key, lease in final_keys:
        if not lease:
            continue
        log = by_id.get(lease)
        ttl = final_ttl.get(lease)
        if log is not None and log.revoked is not None:
            errors.append(f"key {key!r} survived the revoke of its lease {lease:x}")
        elif ttl is not None and ttl <= 0:
            errors.append(f"key {key!r} survived the expiry of its lease {lease:x}")
    for lease in expiry_deadline_passed:
        ttl = final_ttl.get(lease)
        if ttl is not None and ttl > 0:
            errors.append(f"lease {lease:x} is still alive (TTL {ttl}) long after its last renewal")
    return LeaseReport(len(logs), tuple(errors))


def replay(reference: Iterable[Event], prefix: bytes = b"") -> dict[bytes, bytes]:
    """The key -> value state the reference history ends in (keys under ``prefix``)."""
    state: dict[bytes, bytes] = {}
    for e in reference:
        if not e.key.startswith(prefix):
            continue
        if e.kind is EventKind.PUT:
            state[e.key] = e.value
        else:
            state.pop(e.key, None)
    return state


def group_by_key(ops: Iterable[KVOp]) -> dict[bytes, list[KVOp]]:
    out: dict[bytes, list[KVOp]] = defaultdict(list)
    for op in ops:
        out[op.key].append(op)
    return out


__all__ = [
    "Event", "EventKind", "KVKind", "KVOp", "KVReport", "check_kv", "WatchSegment", "WatchReport",
    "check_watch", "LeaseCall", "LeaseLog", "LeaseReport", "check_leases", "replay",
]
