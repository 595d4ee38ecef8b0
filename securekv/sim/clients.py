"""Simulated clients and the history they record for the linearizability checker.

A client has at most one operation outstanding. An operation the cluster refused up front
(``ProposalDropped``) had no effect and is not recorded; one that timed out, or whose node
crashed, stays in the history as *pending* (it may or may not have taken effect).
"""

from __future__ import annotations

import attrs

from securekv.testing.linearizability import Op, OpKind


@attrs.define(slots=True)
class Outstanding:
    client: int
    req: int
    kind: OpKind
    key: str
    call: int
    node: int
    value: int | None = None
    expected: int | None = None
    ctx: bytes = b""
    read_index: int | None = None  # set when the ReadState arrives

    def finish(self, ret: int | None, output: object = None) -> Op:
        return Op(self.client, self.kind, self.key, self.call, ret, value=self.value,
                  expected=self.expected, output=output)

    def describe(self) -> str:
        if self.kind is OpKind.WRITE:
            return f"c{self.client}#{self.req} write {self.key}={self.value} via n{self.node}"
        if self.kind is OpKind.READ:
            return f"c{self.client}#{self.req} read {self.key} via n{self.node}"
        return (f"c{self.client}#{self.req} cas {self.key} {self.expected}->{self.value} "
                f"via n{self.node}")


@attrs.define(slots=True)
class Client:
    id: int
    next_req: int = 1
    current: Outstanding | None = None
    target: int | None = None  # the node this client sends to until something fails
    seen: dict[str, int | None] = attrs.Factory(dict)  # last value this client observed


class History:
    """Ops with times on one logical clock that ticks at every invocation and response, so
    real-time order in the history is exactly the order things happened in the simulation."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.clock = 0
        self.completed = 0
        self.abandoned = 0

    def now(self) -> int:
        self.clock += 1
        return self.clock

    def complete(self, op: Outstanding, output: object) -> Op:
        done = op.finish(self.now(), output)
        self.ops.append(done)
        self.completed += 1
        return done

    def abandon(self, op: Outstanding) -> None:
        """The client gave up or lost its node: outcome unknown."""
        self.ops.append(op.finish(None))
        self.abandoned += 1
