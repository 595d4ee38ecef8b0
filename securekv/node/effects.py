"""What the node core asks its driver to do (sans-IO effects), in the order it must happen.

The core never writes a file, sends a byte, reads a clock it was not given, or calls back into
the caller: every step returns a list of these values and the driver carries them out in
order. The trio server does it with the WAL, the sqlite backend (worker threads) and the peer
transport; the simulator with its simulated disk and network — and may crash between any two.

Tokens (``Resolve.token``, ``ReadDone.tokens``) are whatever the caller handed in with the
request (the server: a completion callback); the core only carries them.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs

from securekv.raft import ConfChange, ConfState, Entry, HardState, Message, Snapshot


@attrs.frozen(slots=True)
class SendMessages:
    """Hand these to the transport (no wait). Before a :class:`Persist` of the same Ready they
    are the messages the Ready marks as independent of its persistence."""

    messages: tuple[Message, ...]


@attrs.frozen(slots=True)
class InstallSnapshot:
    """A follower received the leader's snapshot: replace the state machine by its data and
    make it durable, then step :class:`~securekv.node.inputs.SnapshotInstalled`. Comes before
    the :class:`Persist` of the same Ready."""

    snapshot: Snapshot


@attrs.frozen(slots=True)
class Persist:
    """Append ``entries`` then ``hard_state`` to the log; durably (fsync) when ``sync``. Then
    step :class:`~securekv.node.inputs.Persisted` (also when this effect is absent: every
    Ready ends with it)."""

    entries: tuple[Entry, ...]
    hard_state: HardState | None
    sync: bool


@attrs.frozen(slots=True)
class Resolve:
    """A proposal is done: its caller gets ``result`` (the apply result) or ``error``."""

    token: Any
    result: Any
    error: BaseException | None


@attrs.frozen(slots=True)
class ReadDone:
    """Linearizable reads may now be served (``error`` None: this member applied up to their
    read index) or fail with ``error``."""

    tokens: Sequence[Any]
    error: BaseException | None


@attrs.frozen(slots=True)
class CommitRows:
    """The backend rows of applied entries up to ``last`` (the driver commits them, in order,
    possibly later and batched: the log holds the entries until then). ``revision``: the
    store's revision after them (once committed, the store may drop its copies of the rows up
    to it and read them from the backend)."""

    writes: list[Any]
    last: int
    revision: int = 0


@attrs.frozen(slots=True)
class SaveSnapshot:
    """Every ``snapshot_count`` applied entries: once the backend holds everything up to
    ``index``, make it durable, record a snapshot marker in the log and release older log
    segments; then step :class:`~securekv.node.inputs.SnapshotSaved`."""

    index: int
    term: int
    conf_state: ConfState


@attrs.frozen(slots=True)
class BuildSnapshot:
    """Raft needs snapshot data for a lagging follower: copy the backend once it holds
    everything up to ``applied`` (off the state thread), then step
    :class:`~securekv.node.inputs.SnapshotBuilt`."""

    applied: int


@attrs.frozen(slots=True)
class LeaderChanged:
    old: int
    new: int
    term: int


@attrs.frozen(slots=True)
class MemberChanged:
    """A conf change was applied to the membership (transport peers and log lines follow)."""

    change: ConfChange
    index: int
    removed_self: bool


@attrs.frozen(slots=True)
class MembersApplied:
    """The membership changed in this batch (the driver prunes transport peers it does not
    know any more)."""


@attrs.frozen(slots=True)
class SlowApply:
    """One request took longer than the warning threshold to apply (etcd's log line)."""

    request: Any
    seconds: float


@attrs.frozen(slots=True)
class BadEntry:
    """A committed entry the machine could not use (skipped, as every member skips it)."""

    index: int
    reason: str


@attrs.frozen(slots=True)
class Applied:
    """A batch of committed entries was applied (``requests`` client requests among them; the
    last entry ``last``; ``changed``: the state machine took at least one of them, i.e. they
    were not all replays): revision waiters may wake."""

    requests: int
    last: int
    changed: bool = True


Effect = (SendMessages | InstallSnapshot | Persist | Resolve | ReadDone | CommitRows | SaveSnapshot
          | BuildSnapshot | LeaderChanged | MemberChanged | MembersApplied | SlowApply | BadEntry | Applied)

__all__ = ["Applied", "BadEntry", "BuildSnapshot", "CommitRows", "Effect", "InstallSnapshot", "LeaderChanged",
           "MemberChanged", "MembersApplied", "Persist", "ReadDone", "Resolve", "SaveSnapshot",
           "SendMessages", "SlowApply"]
