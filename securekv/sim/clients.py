"""Simulated clients and the history they record for the checkers.

A client has at most one operation outstanding: a put, a linearizable get, a delete or a
compare-and-set transaction on a few register keys (``k/...``), or a lease operation (grant,
a put attached to a lease under ``l/``, keep-alive, revoke). Watchers follow the register
keys across member crashes. The recording is what ``securekv.testing.history_checks`` judges
(the same checks as the fault suite over real processes): linearizability and lost writes,
gap-free ordered watch delivery, lease safety.

An operation refused up front (validation, a learner, ...) had no effect and is not recorded;
one whose outcome is unknown (timed out, failed after it may have reached the log, its member
crashed) stays in the history as pending.
"""

from __future__ import annotations

from typing import Any

import attrs

from securekv.testing.history_checks import Event, KVKind, KVOp, LeaseCall, LeaseLog, WatchSegment

REGISTER_PREFIX = b"k/"
LEASE_PREFIX = b"l/"


@attrs.define(slots=True)
class Outstanding:
    client: int
    req: int
    kind: str  # a KVKind value, or "grant" / "attach" / "keepalive" / "revoke"
    key: bytes
    call: int
    node: int
    value: bytes | None = None
    expected: bytes | None = None
    lease: int = 0
    ttl: int = 0

    def describe(self) -> str:
        what = {"put": f"put {self.key!r}={self.value!r}", "get": f"get {self.key!r}",
                "delete": f"delete {self.key!r}", "cas": f"cas {self.key!r} {self.expected!r}->{self.value!r}",
                "grant": f"grant lease {self.lease:x} ttl {self.ttl}", "attach": f"put {self.key!r} on lease {self.lease:x}",
                "keepalive": f"keepalive {self.lease:x}", "revoke": f"revoke {self.lease:x}"}[self.kind]
        return f"c{self.client}#{self.req} {what} via n{self.node}"


@attrs.define(slots=True)
class LeaseRecord:
    lease: int
    ttl: int
    granted: int
    keepalives: list[LeaseCall] = attrs.Factory(list)
    revoked: int | None = None
    abandoned: int | None = None
    keys: int = 0

    def log(self) -> LeaseLog:
        return LeaseLog(self.lease, self.ttl, self.granted, tuple(self.keepalives), (), self.revoked, self.abandoned)


@attrs.define(slots=True)
class Client:
    id: int
    next_req: int = 1
    current: Outstanding | None = None
    target: int | None = None  # the node this client sends to until something fails
    seen: dict[bytes, bytes | None] = attrs.Factory(dict)  # last value this client observed
    leases: list[int] = attrs.Factory(list)  # its live leases (granted, not revoked/abandoned)
    next_lease: int = 1


class History:
    """Ops with times on one logical clock that ticks at every invocation and response, so
    real-time order in the history is exactly the order things happened in the simulation."""

    def __init__(self) -> None:
        self.ops: list[KVOp] = []
        self.clock = 0
        self.completed = 0
        self.abandoned = 0
        self.leases: dict[int, LeaseRecord] = {}

    def now(self) -> int:
        self.clock += 1
        return self.clock

    def record_kv(self, op: Outstanding, ret: int | None, *, value: bytes | None = None, ok: bool | None = None,
                  revision: int = 0, deleted: int = 0) -> KVOp:
        kind = KVKind(op.kind)
        if kind is KVKind.PUT or kind is KVKind.CAS:
            value = op.value
        kv = KVOp(op.client, kind, op.key, op.call, ret, value=value, expected=op.expected, ok=ok,
                  revision=revision, deleted=deleted, member=f"n{op.node}")
        self.ops.append(kv)
        if ret is None:
            self.abandoned += 1
        else:
            self.completed += 1
        return kv


@attrs.define(slots=True)
class Watcher:
    """One watcher of the register keys, across member crashes: each stream is a segment."""

    id: int
    node: int = 0
    epoch: int = 0
    stream: Any = None
    start: int = 1
    events: list[Event] = attrs.Factory(list)
    confirmed: int = 0
    segments: list[WatchSegment] = attrs.Factory(list)
    next_start: int = 1  # where the next stream starts (resume after what was seen)

    def close(self) -> None:
        if self.stream is None:
            return
        # Everything up to the last delivered revision is confirmed too (a revision's events
        # come in one response).
        last = max([self.confirmed] + [e.revision for e in self.events])
        self.segments.append(WatchSegment(f"n{self.node}", self.start, tuple(self.events), last))
        self.next_start = max(self.next_start, last + 1)
        self.stream = None
        self.events = []


__all__ = ["Client", "History", "LEASE_PREFIX", "LeaseRecord", "Outstanding", "REGISTER_PREFIX", "Watcher"]
