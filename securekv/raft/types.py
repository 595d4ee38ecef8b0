"""Value types exchanged with the Raft core: entries, messages, states, snapshots.

All are frozen attrs classes so a message or entry handed to the application can never be
mutated behind the core's back (the simulator keeps references to them for its checks).
"""

from __future__ import annotations

import enum
import struct

import attrs

#: Node id meaning "nobody" (no leader, no vote). Real node ids are positive integers.
NONE = 0


class Role(enum.Enum):
    """Role of a node; ``PRE_CANDIDATE`` exists only with Pre-Vote."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class MessageType(enum.IntEnum):
    """Message kinds. ``HUP``, ``BEAT``, ``UNREACHABLE``, ``SNAP_STATUS`` and ``CHECK_QUORUM``
    are local: they never cross the network and :meth:`RawNode.step` refuses them."""

    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10
    SNAP_STATUS = 11
    CHECK_QUORUM = 12
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


LOCAL_MESSAGES = frozenset(
    {MessageType.HUP, MessageType.BEAT, MessageType.UNREACHABLE, MessageType.SNAP_STATUS,
     MessageType.CHECK_QUORUM}
)
#: Types that never depend on state persisted in the same Ready, so a Ready may let them leave
#: before (or while) it is persisted: forwarded requests, non-binding pre-votes, heartbeats and
#: their answers, TIMEOUT_NOW and snapshots (read from storage, durable already). Everything
#: else waits: APP (the leader counts its own unpersisted entries toward commit), APP_RESP and
#: VOTE_RESP (acknowledge the log / vote), VOTE (our own vote) and READ_INDEX_RESP (a single
#: voter's commit index covers its unpersisted entries).
SEND_BEFORE_PERSIST = frozenset(
    {MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER,
     MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP, MessageType.HEARTBEAT,
     MessageType.HEARTBEAT_RESP, MessageType.TIMEOUT_NOW, MessageType.SNAP}
)
RESPONSE_MESSAGES = frozenset(
    {MessageType.APP_RESP, MessageType.VOTE_RESP, MessageType.HEARTBEAT_RESP,
     MessageType.UNREACHABLE, MessageType.READ_INDEX_RESP, MessageType.PRE_VOTE_RESP}
)


class ConfChangeType(enum.IntEnum):
    """``ADD_NODE`` on an existing learner promotes it to voter (so does ``PROMOTE_LEARNER``)."""

    ADD_NODE = 0
    REMOVE_NODE = 1
    ADD_LEARNER = 2
    PROMOTE_LEARNER = 3


#: Fixed per-entry overhead counted by size limits, so empty entries still cost something.
ENTRY_OVERHEAD = 16


@attrs.frozen(slots=True)
class Entry:
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""

    @property
    def size(self) -> int:
        """Bytes charged against ``max_size_per_msg`` and friends."""
        return len(self.data) + ENTRY_OVERHEAD


@attrs.frozen(slots=True)
class HardState:
    """What must be durable before any message of the same Ready leaves."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self == EMPTY_HARD_STATE


EMPTY_HARD_STATE = HardState()


@attrs.frozen(slots=True)
class SoftState:
    """Volatile state the application may want (who leads, what am I); not persisted."""

    leader: int = NONE
    role: Role = Role.FOLLOWER


def _id_tuple(ids: object) -> tuple[int, ...]:
    return tuple(sorted(set(ids)))  # type: ignore[call-overload]


@attrs.frozen(slots=True)
class ConfState:
    """Membership: voters count for quorum, learners only receive the log."""

    voters: tuple[int, ...] = attrs.field(default=(), converter=_id_tuple)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_id_tuple)


@attrs.frozen(slots=True)
class SnapshotMetadata:
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


@attrs.frozen(slots=True)
class Snapshot:
    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


EMPTY_SNAPSHOT = Snapshot()

_CC_HEADER = struct.Struct(">BQ")


@attrs.frozen(slots=True)
class ConfChange:
    """One membership change; stored in a ``CONF_CHANGE`` entry as :meth:`encode` bytes."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    def encode(self) -> bytes:
        return _CC_HEADER.pack(int(self.type), self.node_id) + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < _CC_HEADER.size:
            raise ValueError(f"conf change entry too short: {len(data)} bytes")
        kind, node_id = _CC_HEADER.unpack_from(data)
        return cls(ConfChangeType(kind), node_id, bytes(data[_CC_HEADER.size:]))


@attrs.frozen(slots=True)
class ReadState:
    """A ReadIndex answer: once ``applied >= index`` a read tagged ``request_ctx`` is linearizable."""

    index: int
    request_ctx: bytes


@attrs.frozen(slots=True)
class Message:
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""


@attrs.frozen(slots=True)
class Ready:
    """One batch of work for the application, to be handled in this order:

    1. persist ``snapshot`` (if any), ``entries`` and ``hard_state`` (if any) — fsync when
       ``must_sync``;
    2. send ``messages`` — all of them after step 1 is always correct (the simple etcd rule);
       ``after_persist`` marks which ones must wait, so :meth:`messages_before_persist` may
       leave before step 1 and :meth:`messages_after_persist` after it;
    3. apply ``committed_entries`` (and ``RawNode.apply_conf_change`` for conf-change entries);
    4. call ``RawNode.advance()``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: tuple[ReadState, ...] = ()
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    must_sync: bool = False
    #: ``after_persist[i]``: ``messages[i]`` may only leave once this Ready is persisted.
    #: Empty (a Ready built by hand) means every message waits.
    after_persist: tuple[bool, ...] = ()

    def messages_before_persist(self) -> tuple[Message, ...]:
        """Messages that depend on nothing this Ready persists: they may leave at once."""
        if len(self.after_persist) != len(self.messages):
            return ()
        return tuple(m for m, late in zip(self.messages, self.after_persist) if not late)

    def messages_after_persist(self) -> tuple[Message, ...]:
        """Messages that may only leave after step 1 (persisting) completed."""
        if len(self.after_persist) != len(self.messages):
            return self.messages
        return tuple(m for m, late in zip(self.messages, self.after_persist) if late)
