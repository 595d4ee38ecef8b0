"""Configuration of one Raft node. Every source of nondeterminism (the RNG) comes in here."""

from __future__ import annotations

from typing import Protocol

import attrs

from .storage import Storage


class Rng(Protocol):
    """The slice of ``random.Random`` the core uses (only for election-timeout jitter)."""

    def randrange(self, start: int, stop: int) -> int: ...


def _positive(_inst: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value <= 0:
        raise ValueError(f"raft config: {attribute.name} must be > 0, got {value}")


def _non_negative(_inst: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
    if value < 0:
        raise ValueError(f"raft config: {attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class Config:
    """Knobs of a node.

    * ``election_tick``: followers campaign after a random timeout in
      ``[election_tick, 2*election_tick)`` ticks without hearing from a leader.
    * ``heartbeat_tick``: leader heartbeat period; must be < ``election_tick``.
    * ``applied``: last index the application already applied (restart); committed entries up
      to it are not handed out again.
    * ``max_size_per_msg``: byte budget (``Entry.size``) of one append message; at least one
      entry is always sent.
    * ``max_entries_per_msg``: entry count cap of one append message (0 = no cap), so a
      catching-up follower is fed in bounded steps whatever the entry sizes.
    * ``max_inflight_msgs``: append messages in flight per follower in the pipelined state.
    * ``max_uncommitted_entries_size``: leader drops proposals once this many bytes of
      uncommitted entries are in its log (0 = no limit).
    * ``max_committed_size_per_ready``: byte budget of ``Ready.committed_entries`` (0 = no limit).
    * ``check_quorum``: leader steps down after an election timeout without hearing from a
      quorum; followers with a live leader ignore votes (leader lease).
    * ``pre_vote``: run a non-disruptive pre-election before bumping the term.
    * ``rng``: injected randomness, e.g. ``random.Random(seed)``.
    """

    id: int = attrs.field(validator=_positive)
    election_tick: int = attrs.field(default=10, validator=_positive)
    heartbeat_tick: int = attrs.field(default=1, validator=_positive)
    storage: Storage
    rng: Rng
    applied: int = 0
    max_size_per_msg: int = 1 << 20
    max_entries_per_msg: int = attrs.field(default=0, validator=_non_negative)
    max_inflight_msgs: int = attrs.field(default=256, validator=_positive)
    max_uncommitted_entries_size: int = 0
    max_committed_size_per_ready: int = 0
    check_quorum: bool = True
    pre_vote: bool = True

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_tick >= self.election_tick:
            raise ValueError("raft config: election_tick must be greater than heartbeat_tick")
