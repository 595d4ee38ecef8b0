"""One-at-a-time membership changes, computed on ConfState values.

Changing a single voter at a time keeps every old and new majority overlapping, which is what
makes the change safe without joint consensus. Invalid changes are no-ops (``None``) so that all
members, applying the same committed entry, reach the same configuration.
"""

from __future__ import annotations

from .types import ConfChange, ConfChangeType, ConfState


def apply_change(cs: ConfState, cc: ConfChange) -> ConfState | None:
    """The configuration after ``cc``, or ``None`` when ``cc`` is invalid or changes nothing."""
    voters = set(cs.voters)
    learners = set(cs.learners)
    nid = cc.node_id
    if nid <= 0:
        return None
    if cc.type is ConfChangeType.ADD_NODE:
        if nid in voters:
            return None
        learners.discard(nid)
        voters.add(nid)
    elif cc.type is ConfChangeType.PROMOTE_LEARNER:
        if nid not in learners:
            return None
        learners.discard(nid)
        voters.add(nid)
    elif cc.type is ConfChangeType.ADD_LEARNER:
        if nid in learners:
            return None
        voters.discard(nid)
        learners.add(nid)
    elif cc.type is ConfChangeType.REMOVE_NODE:
        if nid not in voters and nid not in learners:
            return None
        voters.discard(nid)
        learners.discard(nid)
    else:  # pragma: no cover - enum is closed
        return None
    if not voters:
        return None  # removing or demoting the last voter would leave no quorum at all
    return ConfState(voters=voters, learners=learners)
