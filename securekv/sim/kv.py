"""The simulator's tiny replicated state machine: a register per key with write and CAS.

Commands are JSON in the entry data so a trace can show them; each carries the client's request
id and is applied at most once (a proposal duplicated by the network may be appended twice —
real servers deduplicate the same way).
"""

from __future__ import annotations

import json
from typing import Any

import attrs


@attrs.frozen(slots=True)
class Command:
    client: int
    req: int
    kind: str  # "write" | "cas"
    key: str
    value: int
    expected: int | None = None

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        return cls(**json.loads(data))

    def describe(self) -> str:
        if self.kind == "write":
            return f"c{self.client}#{self.req} write {self.key}={self.value}"
        return f"c{self.client}#{self.req} cas {self.key} {self.expected}->{self.value}"


@attrs.frozen(slots=True)
class Applied:
    """What applying one command did: the client's answer (``None`` for a write, the CAS flag)."""

    client: int
    req: int
    result: bool | None
    duplicate: bool


class KVStateMachine:
    """Volatile state of one node; rebuilt on restart from the snapshot plus log replay."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}
        self.done: set[tuple[int, int]] = set()

    def apply(self, cmd: Command) -> Applied:
        ident = (cmd.client, cmd.req)
        if ident in self.done:
            return Applied(cmd.client, cmd.req, None, True)
        self.done.add(ident)
        if cmd.kind == "write":
            self.data[cmd.key] = cmd.value
            return Applied(cmd.client, cmd.req, None, False)
        ok = self.data.get(cmd.key) == cmd.expected
        if ok:
            self.data[cmd.key] = cmd.value
        return Applied(cmd.client, cmd.req, ok, False)

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"data": self.data, "done": sorted(self.done)}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, blob: bytes) -> KVStateMachine:
        sm = cls()
        if blob:
            doc = json.loads(blob)
            sm.data = dict(doc["data"])
            sm.done = {(c, r) for c, r in doc["done"]}
        return sm
