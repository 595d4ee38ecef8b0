"""Pending ReadIndex requests on a leader, waiting for a heartbeat quorum to confirm leadership."""

from __future__ import annotations

import attrs

from .types import Message


@attrs.define(slots=True)
class ReadIndexStatus:
    req: Message
    index: int
    acks: set[int] = attrs.Factory(set)


class ReadOnly:
    """Requests are keyed by their (unique) context bytes and confirmed in arrival order:
    a heartbeat quorum for a later request also confirms every earlier one."""

    def __init__(self) -> None:
        self.pending: dict[bytes, ReadIndexStatus] = {}
        self.queue: list[bytes] = []

    def add_request(self, index: int, m: Message) -> None:
        if m.context in self.pending:
            return
        self.pending[m.context] = ReadIndexStatus(m, index)
        self.queue.append(m.context)

    def recv_ack(self, node_id: int, ctx: bytes) -> set[int] | None:
        rs = self.pending.get(ctx)
        if rs is None:
            return None
        rs.acks.add(node_id)
        return rs.acks

    def advance(self, ctx: bytes) -> list[ReadIndexStatus]:
        """Pop every request up to and including ``ctx``."""
        if ctx not in self.pending:
            return []
        n = self.queue.index(ctx) + 1
        done = [self.pending.pop(c) for c in self.queue[:n]]
        del self.queue[:n]
        return done

    def last_pending_request_ctx(self) -> bytes:
        return self.queue[-1] if self.queue else b""
