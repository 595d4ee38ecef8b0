"""What the driver feeds the node core (typed inputs for :meth:`NodeCore.step`).

Each input has a method of the same meaning on :class:`~securekv.node.core.NodeCore`;
``step`` dispatches on the type, so a driver (or a test, or the simulator) can hold a list of
inputs and replay it.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import attrs

from securekv.raft import ConfChange, ConfState, Message


@attrs.frozen(slots=True)
class Proposal:
    """One client request: its entry bytes, what the machine applies for it (the request
    decoded from those bytes, so the proposer does not decode twice), the caller's token and
    the key the machine finds it by when the entry is applied (the server: the request ID of
    the entry's header). Without a key nobody waits for it."""

    data: bytes
    request: Any = None
    token: Any = None
    key: Hashable | None = None


@attrs.frozen(slots=True)
class Tick:
    """``count`` logical clock ticks (the driver's timer fired that often since the last)."""

    count: int = 1


@attrs.frozen(slots=True)
class Receive:
    message: Message


@attrs.frozen(slots=True)
class Unreachable:
    peer: int


@attrs.frozen(slots=True)
class SnapshotStatus:
    peer: int
    failed: bool


@attrs.frozen(slots=True)
class Propose:
    """One batch: all proposed together (one append per follower)."""

    proposals: Sequence[Proposal]


@attrs.frozen(slots=True)
class ProposeConfChange:
    change: ConfChange
    token: Any


@attrs.frozen(slots=True)
class ProposeRaw:
    """A node-level NORMAL entry nobody waits for (member attributes); best effort."""

    data: bytes


@attrs.frozen(slots=True)
class ReadIndex:
    """A linearizable read: ``token`` is released (ReadDone) once this member applied up to
    the cluster's commit index at the time of the request."""

    token: Any


@attrs.frozen(slots=True)
class TransferLeader:
    to: int


@attrs.frozen(slots=True)
class Campaign:
    pass


@attrs.frozen(slots=True)
class ExpireLeases:
    """The leader's lease ticker: propose a revoke for each expired lease (at most ``limit``)."""

    limit: int = 1000


@attrs.frozen(slots=True)
class Persisted:
    """The current Ready's :class:`~securekv.node.effects.Persist` is done (durable)."""


@attrs.frozen(slots=True)
class SnapshotInstalled:
    """The snapshot of an :class:`~securekv.node.effects.InstallSnapshot` replaced the state
    machine; ``applier``/``membership`` are the ones rebuilt from it."""

    applier: Any
    membership: Any


@attrs.frozen(slots=True)
class SnapshotSaved:
    index: int
    term: int
    conf_state: ConfState


@attrs.frozen(slots=True)
class SnapshotBuilt:
    """Snapshot data for followers: the backend at ``index`` (``data`` None: building failed)."""

    index: int
    data: bytes | None


@attrs.frozen(slots=True)
class Stop:
    """The node stops: every waiting caller fails (ERR_STOPPED)."""


Input = (Tick | Receive | Unreachable | SnapshotStatus | Propose | ProposeConfChange | ProposeRaw | ReadIndex
         | TransferLeader | Campaign | ExpireLeases | Persisted | SnapshotInstalled | SnapshotSaved | SnapshotBuilt
         | Stop)

__all__ = ["Campaign", "ExpireLeases", "Input", "Persisted", "Proposal", "Propose", "ProposeConfChange",
           "ProposeRaw", "ReadIndex", "Receive", "SnapshotBuilt", "SnapshotInstalled", "SnapshotSaved",
           "SnapshotStatus", "Stop", "Tick", "TransferLeader", "Unreachable"]
