"""etcd's strict reconfiguration checks (``--strict-reconfig-check``), pure.

Why two checks with two answers, as in etcd 3.4 (``mayAddMember``/``mayRemoveMember``/
``mayPromoteMember`` with ``RaftCluster.IsReadyTo*`` and ``isConnectedFullySince``):

- *Started* members are the voters that have published their name (``Member.name``; a member
  added with ``member add`` has none until it first starts). Too few of them is a lasting
  property of the membership, answered ``re-configuration failed due to not enough started
  members``: retrying does not help until a member starts.
- *Connected* is a property of this member's peer links right now: a voter counts when the
  outgoing link to it has been up for at least ``HEALTH_INTERVAL`` (the transport's
  ``active_since``). A link still coming back (after a partition heals, a restart, at
  bootstrap) is a passing state, answered ``unhealthy cluster``, which clients retry.

Counting live links as "started" (what securekv did before) turned a link in its reconnect
backoff into the lasting answer, which neither etcd nor etcd's clients give for it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from securekv.node.membership import Member

#: etcd's HealthInterval: how long every link must have been up before a reconfiguration.
HEALTH_INTERVAL = 5.0

#: member ID -> when the outgoing link to it came up (the transport's clock), or None if down.
ActiveSince = Callable[[int], float | None]


def _voters(members: Iterable[Member]) -> list[Member]:
    return [m for m in members if not m.is_learner]


def ready_to_add_voter(members: Iterable[Member]) -> bool:
    """etcd's IsReadyToAddVotingMember: started voters reach the quorum of voters + 1."""
    voters = _voters(members)
    nmembers = len(voters) + 1
    nstarted = sum(1 for m in voters if m.name)
    if nstarted == 1 and nmembers == 2:  # growing a one-member cluster (after --force-new-cluster)
        return True
    return nstarted >= nmembers // 2 + 1


def ready_to_remove_voter(members: Iterable[Member], removing: int) -> bool:
    """etcd's IsReadyToRemoveVotingMember: the started voters left keep a quorum of those left."""
    rest = [m for m in _voters(members) if m.id != removing]
    return sum(1 for m in rest if m.name) >= len(rest) // 2 + 1


def ready_to_promote(members: Iterable[Member]) -> bool:
    """etcd's IsReadyToPromoteMember: the learner counts as a started voter of the new set."""
    voters = _voters(members)
    return 1 + sum(1 for m in voters if m.name) >= (len(voters) + 1) // 2 + 1


def connected_since(active_since: ActiveSince, since: float, self_id: int, voter_ids: Iterable[int]) -> int:
    """etcd's numConnectedSince: voters reached over a link up since ``since`` (self counts)."""
    n = 0
    for mid in voter_ids:
        if mid == self_id:
            n += 1
            continue
        t = active_since(mid)
        if t is not None and t <= since:
            n += 1
    return n


def healthy_to_add(active_since: ActiveSince, now: float, self_id: int, voter_ids: Iterable[int]) -> bool:
    """etcd's isConnectedFullySince(now - HealthInterval) over the voters: every link is settled."""
    ids = list(voter_ids)
    return connected_since(active_since, now - HEALTH_INTERVAL, self_id, ids) == len(ids)


def healthy_to_remove(active_since: ActiveSince, now: float, self_id: int, voter_ids: Iterable[int],
                      removing: int) -> bool:
    """etcd's mayRemoveMember connectivity rule: removing a member this one cannot reach is
    safe (it is not part of the active quorum); otherwise the settled links left must still
    make a quorum of the voters left."""
    if removing != self_id and active_since(removing) is None:
        return True
    ids = list(voter_ids)
    active = connected_since(active_since, now - HEALTH_INTERVAL, self_id, ids)
    return active - 1 >= 1 + (len(ids) - 1) // 2
