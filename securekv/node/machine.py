"""The replicated state machine the node core applies committed entries to.

:class:`Machine` is what the core needs (so the Raft unit tests' network can plug in a
recording machine); :class:`ServerMachine` is the member's: the deterministic ``Applier``
(MVCC store, lessor, alarms, auth), the watch hub told in the same synchronous step, and the
cluster membership — the same object in ``securekv serve`` and in every simulated seed.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Protocol

from securekv.proto import raft_internal_pb2, rpc_pb2
from securekv.raft import ConfChange, ConfChangeType, Entry
from securekv.rpctypes import EtcdError

from .effects import Applied, BadEntry, CommitRows, Effect, MemberChanged, MembersApplied, SlowApply
from .entry import peek_header
from .membership import META_KEY, PUBLISH_PREFIX, Membership

_EMPTY = raft_internal_pb2.InternalRaftRequest()


class Machine(Protocol):
    """What :class:`~securekv.node.core.NodeCore` applies entries to."""

    @property
    def applied_index(self) -> int:
        """The last index the state machine holds (entries at or below are replays: skipped)."""

    def request_key(self, data: bytes) -> Hashable | None:
        """The key a proposal of this member was registered under (None: not ours)."""

    def begin(self, now: float, out: list[Effect]) -> None:
        """A batch starts; effects of the batch go to ``out``."""

    def apply_entry(self, entry: Entry, request: Any) -> tuple[Any, BaseException | None]:
        """Apply one NORMAL entry (``request``: what the proposer handed in, or None)."""

    def apply_conf_change(self, entry: Entry, change: ConfChange) -> None:
        """A conf change newer than the state machine (Raft already applied it)."""

    def end(self, last: int) -> None:
        """The batch ends at ``last``."""

    def on_leader_change(self, old: int, new: int, now: float, extend: float) -> None:
        """Leadership moved (leases: only the leader's lessor keeps deadlines)."""

    def expired_leases(self, now: float, limit: int) -> list[int]:
        """Leases whose time is up (leader only)."""

    def revoke_request(self, lease_id: int) -> Any:
        """The request that revokes an expired lease (proposed by the core)."""


class _Failed:
    """The result of an entry the applier refused with an error (never expected: the loop
    must not die of it). Behaves like a skipped ApplyResult for the backend rows."""

    __slots__ = ("index", "error")
    events: tuple = ()
    kv: Any = None
    lease_puts: tuple = ()
    lease_deletes: tuple = ()
    alarms: Any = None
    auth_rows: tuple = ()
    skipped = True
    response: Any = None
    revision = 0

    def __init__(self, index: int, error: EtcdError) -> None:
        self.index = index
        self.error = error


class ServerMachine:
    """The member's state machine: applier + watch hub + membership.

    ``to_write_batch(results, last)`` turns a batch's apply results into backend write
    batches (``securekv/server/persist.py``, injected so this package stays pure);
    ``perf_counter`` (optional) times each apply for the slow-apply warning.
    """

    def __init__(self, *, applier: Any, hub: Any, membership: Membership, member_id: int,
                 to_write_batch: Callable[[list[Any], int], list[Any]],
                 perf_counter: Callable[[], float] | None = None, warning_apply_duration: float = 0.1) -> None:
        self.applier = applier
        self.hub = hub
        self.membership = membership
        self.member_id = member_id
        self.to_write_batch = to_write_batch
        self.perf_counter = perf_counter
        self.warning_apply_duration = warning_apply_duration
        self.events_notified = 0  # etcd_debugging_mvcc_events_total
        self.compacted_keys = 0  # etcd_debugging_mvcc_db_compaction_keys_total
        # The store's key-index checkpoints (securekv/mvcc/checkpoint.py), injected by the server:
        # each step's chunk rides in the backend transaction of the batch it describes.
        self.checkpointer: Any = None
        self.batches = 0
        self.entries = 0
        self.last_batch = 0
        self._now = 0.0
        self._out: list[Effect] = []
        self._results: list[Any] = []
        self._members_changed = False
        self._requests = 0

    @property
    def applied_index(self) -> int:
        return self.applier.applied_index

    def replace(self, applier: Any, membership: Membership) -> None:
        """A snapshot replaced the state: go on with what was rebuilt from it."""
        self.applier = applier
        self.membership = membership

    def request_key(self, data: bytes) -> Hashable | None:
        ids = peek_header(data)
        if ids is None or ids[0] != self.member_id:
            return None
        return ids[1]

    # -- one batch ---------------------------------------------------------------------------
    def begin(self, now: float, out: list[Effect]) -> None:
        self._now = now
        self._out = out
        self._results = []
        self._members_changed = False
        self._requests = 0

    def apply_conf_change(self, entry: Entry, change: ConfChange) -> None:
        index = entry.index
        self.membership.apply_conf_change(change)
        self._members_changed = True
        self._results.append(self.applier.apply(index, _EMPTY, now=self._now))
        removed_self = change.type == ConfChangeType.REMOVE_NODE and change.node_id == self.member_id
        self._out.append(MemberChanged(change, index, removed_self))

    def apply_entry(self, entry: Entry, request: Any) -> tuple[Any, BaseException | None]:
        index, data = entry.index, entry.data
        applier = self.applier
        if not data:  # a new leader's empty entry
            self._results.append(applier.apply(index, _EMPTY, now=self._now))
            return None, None
        if data.startswith(PUBLISH_PREFIX):
            try:
                self.membership.apply_publish(data)
                self._members_changed = True
            except Exception as exc:  # a bad attribute entry must not stop the member
                self._out.append(BadEntry(index, f"bad member attribute entry: {exc}"))
            self._results.append(applier.apply(index, _EMPTY, now=self._now))
            return None, None
        self._requests += 1
        req = request
        if req is None:
            req = raft_internal_pb2.InternalRaftRequest()
            try:
                req.ParseFromString(data)
            except Exception:
                self._out.append(BadEntry(index, "undecodable entry skipped"))
                self._results.append(applier.apply(index, _EMPTY, now=self._now))
                return None, None
        try:
            if self.perf_counter is None:
                result = applier.apply(index, req, now=self._now)
            else:
                started = self.perf_counter()
                result = applier.apply(index, req, now=self._now)
                took = self.perf_counter() - started
                if took > self.warning_apply_duration:
                    self._out.append(SlowApply(req, took))
        except EtcdError as exc:  # not expected from the applier, but never kill the loop
            self._results.append(_Failed(index, exc))
            return None, exc
        self._results.append(result)
        # Tell the hub right away (same synchronous step as the apply), so no stream can read
        # history between the store changing and the hub knowing.
        if result.error is None and not result.skipped:
            if req.WhichOneof("request") == "compaction":
                self.hub.compact(req.compaction.revision)
            if result.events:
                self.hub.notify(result.revision, list(result.events))
                self.events_notified += len(result.events)
        return result, None

    def end(self, last: int) -> None:
        out = self._out
        if self._members_changed:
            out.append(MembersApplied())
        results, self._results = self._results, []
        if results:
            writes = self.to_write_batch(results, last)
            self.compacted_keys += sum(len(getattr(w, "deletes", ())) for w in writes)
            if self._members_changed and writes:
                writes[-1].meta[META_KEY] = self.membership.encode()
            checkpointer = self.checkpointer
            if checkpointer is not None and writes and checkpointer.due():
                # One chunk of the key index, taken after everything in `writes` was applied,
                # committed in the same transaction as the last of those rows.
                changes = checkpointer.step()
                if writes[-1].deletes:
                    # Never in a compaction's transaction(s): a chunk showing the compacted
                    # index must not be durable before every row the compaction drops is gone.
                    writes.append(type(writes[-1])())
                writes[-1].item_puts.extend(changes.puts)
                writes[-1].item_deletes.extend(changes.deletes)
            store = getattr(self.applier, "store", None)
            out.append(CommitRows(writes, last, store.current_revision if store is not None else 0))
        requests = self._requests
        if requests:
            self.batches += 1
            self.entries += requests
            self.last_batch = requests
        out.append(Applied(requests, last, bool(results)))
        self._out = []

    # -- leases ------------------------------------------------------------------------------
    def on_leader_change(self, old: int, new: int, now: float, extend: float) -> None:
        """Only the leader's lessor keeps deadlines; a new leader extends every lease by an
        election timeout so none expires early across the change (etcd's Promote)."""
        lessor = self.applier.lessor
        if new == self.member_id:
            lessor.promote(now, extend=extend)
        elif old == self.member_id or lessor.is_primary:
            lessor.demote()

    def expired_leases(self, now: float, limit: int) -> list[int]:
        return self.applier.lessor.expired(now, limit)

    def revoke_request(self, lease_id: int) -> raft_internal_pb2.InternalRaftRequest:
        """Proposed by the server itself: marked internal (skips the apply-time auth check)."""
        req = raft_internal_pb2.InternalRaftRequest(lease_revoke=rpc_pb2.LeaseRevokeRequest(ID=lease_id))
        req.header.internal = True
        return req


__all__ = ["Machine", "ServerMachine"]
