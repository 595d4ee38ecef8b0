"""A tiny synchronous network for Raft unit tests: nodes, storages, and message delivery.

Every Ready is handled by the server's own node core (``securekv/node``: persist, send, apply,
advance) over a recording state machine, so tests exercise the full RawNode contract and the
node core's Ready step, not the state machine's internals. ``nodes[nid]`` is the core's
RawNode: tests drive it directly.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Hashable, Iterable

from securekv.node import NodeCore
from securekv.node import effects as fx
from securekv.raft import (
    ConfChange,
    ConfState,
    Config,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Role,
)

MT = MessageType


class RecordingMachine:
    """The node core's state machine for Raft tests: it records every committed entry."""

    def __init__(self, applied: list[Entry], applied_index: int) -> None:
        self.entries = applied
        self.applied_index = applied_index

    def request_key(self, data: bytes) -> Hashable | None:
        return None

    def begin(self, now: float, out: list[Any]) -> None:
        pass

    def apply_entry(self, entry: Entry, request: Any) -> tuple[Any, BaseException | None]:
        self.entries.append(entry)
        self.applied_index = entry.index
        return None, None

    def apply_conf_change(self, entry: Entry, change: ConfChange) -> None:
        self.entries.append(entry)
        self.applied_index = entry.index

    def end(self, last: int) -> None:
        self.applied_index = max(self.applied_index, last)

    def on_leader_change(self, old: int, new: int, now: float, extend: float) -> None:
        pass

    def expired_leases(self, now: float, limit: int) -> list[int]:
        return []

    def revoke_request(self, lease_id: int) -> Any:
        raise AssertionError("no leases here")


class Network:
    def __init__(
        self,
        ids: Iterable[int],
        *,
        learners: Iterable[int] = (),
        pre_vote: bool = False,
        check_quorum: bool = False,
        election_tick: int = 10,
        heartbeat_tick: int = 1,
        seed: int = 0,
        logs: dict[int, list[int]] | None = None,
        **config: object,
    ) -> None:
        self.voters = list(ids)
        self.learners = list(learners)
        self.cfg = dict(pre_vote=pre_vote, check_quorum=check_quorum, election_tick=election_tick,
                        heartbeat_tick=heartbeat_tick, **config)
        self.seed = seed
        self.nodes: dict[int, RawNode] = {}
        self.cores: dict[int, NodeCore] = {}
        self.storage: dict[int, MemoryStorage] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.cut: set[tuple[int, int]] = set()
        self.drop_types: set[MessageType] = set()
        self.filter: Callable[[Message], bool] | None = None  # True = drop
        self.sent: list[Message] = []  # every message that left a node (delivered or not)
        for nid in self.voters + self.learners:
            terms = (logs or {}).get(nid)
            if terms is None:
                st = MemoryStorage.with_peers(self.voters, self.learners)
            else:
                st = MemoryStorage(ConfState(voters=self.voters, learners=self.learners))
                # A pre-existing log (entries of the given terms from index 1), term = last.
                st.append([Entry(t, i + 1, data=b"t%d-i%d" % (t, i + 1)) for i, t in enumerate(terms)])
                st.set_hard_state(HardState(term=terms[-1] if terms else 0))
            self.add_node(nid, st)

    def add_node(self, nid: int, storage: MemoryStorage | None = None, applied: int = 0) -> RawNode:
        storage = storage if storage is not None else MemoryStorage()
        self.storage[nid] = storage
        self.applied.setdefault(nid, [])
        self.read_states.setdefault(nid, [])
        core = NodeCore(Config(id=nid, storage=storage, rng=random.Random(self.seed * 1000 + nid),
                               applied=applied, **self.cfg),  # type: ignore[arg-type]
                        RecordingMachine(self.applied[nid], applied), clock=lambda: 0.0, snapshot_count=0)
        self.cores[nid] = core
        self.nodes[nid] = core.raw
        return core.raw

    def compact(self, nid: int) -> None:
        """Snapshot ``nid``'s state machine at its applied index and compact its log there."""
        applied = self.nodes[nid].raft.log.applied
        data = json.dumps([d.decode() for d in self.applied_data(nid)]).encode()
        self.storage[nid].create_snapshot(applied, self.nodes[nid].raft.trk.conf_state(), data)
        self.storage[nid].compact(applied)

    def restart(self, nid: int) -> RawNode:
        """Crash-restart ``nid`` from what it persisted."""
        # The state machine is volatile here: it is rebuilt by replaying the log after the
        # snapshot, which also rebuilds the configuration from the snapshot's ConfState.
        snap_index = self.storage[nid].snapshot().metadata.index
        snap = self.storage[nid].snapshot()
        self.applied[nid] = [Entry(0, snap_index, data=d.encode()) for d in json.loads(snap.data or b"[]")]
        return self.add_node(nid, self.storage[nid], snap_index)

    # -- fault injection ---------------------------------------------------------------------
    def isolate(self, nid: int) -> None:
        for other in self.nodes:
            if other != nid:
                self.cut.add((nid, other))
                self.cut.add((other, nid))

    def partition(self, *groups: Iterable[int]) -> None:
        sets = [set(g) for g in groups]
        for a in self.nodes:
            for b in self.nodes:
                if a != b and not any(a in s and b in s for s in sets):
                    self.cut.add((a, b))

    def heal(self) -> None:
        self.cut.clear()
        self.drop_types.clear()
        self.filter = None

    # -- driving -----------------------------------------------------------------------------
    def _dropped(self, m: Message) -> bool:
        if (m.frm, m.to) in self.cut or m.type in self.drop_types or m.to not in self.nodes:
            return True
        return self.filter is not None and self.filter(m)

    def handle_ready(self, nid: int) -> list[Message]:
        """One Ready of ``nid`` through its node core. Its storage is the node's disk: the
        core mirrors the Ready into it when told the Ready is persisted."""
        core = self.cores[nid]
        msgs: list[Message] = []
        effects = core.poll()
        rd = core.ready
        assert rd is not None, "handle_ready without a Ready"
        for eff in effects:
            if isinstance(eff, fx.SendMessages):
                msgs.extend(eff.messages)
            elif isinstance(eff, fx.InstallSnapshot):
                # The state machine is replaced by the snapshot's.
                snap = eff.snapshot
                self.applied[nid][:] = [Entry(0, snap.metadata.index, data=d.encode())
                                        for d in json.loads(snap.data or b"[]")]
                core.machine.applied_index = snap.metadata.index
                core.snapshot_installed(None, None)
        self.read_states[nid].extend(rd.read_states)
        for eff in core.persisted():
            if isinstance(eff, fx.SendMessages):
                msgs.extend(eff.messages)
        return msgs

    def drain(self, max_rounds: int = 10_000) -> None:
        """Handle Readys and deliver messages until the network is quiet."""
        for _ in range(max_rounds):
            msgs: list[Message] = []
            for nid in sorted(self.nodes):
                if self.nodes[nid].has_ready():
                    msgs.extend(self.handle_ready(nid))
            if not msgs:
                if not any(n.has_ready() for n in self.nodes.values()):
                    return
                continue
            self.deliver(msgs)
        raise AssertionError("network did not quiesce")

    def deliver(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.sent.append(m)
            if not self._dropped(m):
                self.nodes[m.to].step(m)

    def send(self, m: Message) -> None:
        """Deliver ``m`` (as if from the network) and run to quiescence."""
        self.deliver([m])
        self.drain()

    def tick(self, nid: int | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i in sorted(self.nodes) if nid is None else [nid]:
                self.nodes[i].tick()
            self.drain()

    def elect(self, nid: int) -> None:
        self.nodes[nid].campaign()
        self.drain()
        assert self.role(nid) is Role.LEADER, f"{nid} is {self.role(nid)}"

    def propose(self, nid: int, data: bytes) -> None:
        self.nodes[nid].propose(data)
        self.drain()

    # -- inspection --------------------------------------------------------------------------
    def raft(self, nid: int):  # type: ignore[no-untyped-def]
        return self.nodes[nid].raft

    def role(self, nid: int) -> Role:
        return self.nodes[nid].raft.state

    def term(self, nid: int) -> int:
        return self.nodes[nid].raft.term

    def leader_of(self, nid: int) -> int:
        return self.nodes[nid].raft.lead

    def committed(self, nid: int) -> int:
        return self.nodes[nid].raft.log.committed

    def last_index(self, nid: int) -> int:
        return self.nodes[nid].raft.log.last_index()

    def log(self, nid: int) -> list[tuple[int, int, bytes]]:
        """(index, term, data) of the whole log from the first index on."""
        return [(e.index, e.term, e.data) for e in self.nodes[nid].raft.log.all_entries()]

    def applied_data(self, nid: int) -> list[bytes]:
        return [e.data for e in self.applied[nid] if e.type is EntryType.NORMAL and e.data]

    @property
    def base(self) -> int:
        """Index of the last bootstrap (configuration) entry."""
        return len(self.voters) + len(self.learners)

    def leaders(self) -> list[int]:
        return [nid for nid in self.nodes if self.role(nid) is Role.LEADER]
