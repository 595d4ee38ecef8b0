"""etcd's strict reconfiguration checks (securekv/server/reconfig.py), without processes.

The regression they pin: a voter whose link is still coming back (a partition just healed) made
`member add` answer the lasting "not enough started members"; etcd answers that only for voters
that never started (published no name) and reports a link down or younger than its
HealthInterval as the passing "unhealthy cluster", which clients retry."""

from __future__ import annotations

from securekv.node.membership import Member
from securekv.server.reconfig import (HEALTH_INTERVAL, connected_since, healthy_to_add, healthy_to_remove,
                                      ready_to_add_voter, ready_to_promote, ready_to_remove_voter)

NOW = 1000.0


def _members(started: int, unstarted: int = 0, learners: int = 0) -> list[Member]:
    out = [Member(i + 1, f"m{i + 1}", (f"https://127.0.0.1:{2380 + i}",)) for i in range(started)]
    out += [Member(100 + i, "", (f"https://127.0.0.1:{3380 + i}",)) for i in range(unstarted)]
    out += [Member(200 + i, "", (f"https://127.0.0.1:{4380 + i}",), (), True) for i in range(learners)]
    return out


def test_started_means_published_not_connected() -> None:
    # Three published voters may take a fourth whatever the links do (that is the link check's job).
    assert ready_to_add_voter(_members(3))
    assert ready_to_add_voter(_members(3, learners=1))  # a learner is no voter
    # Two published + one added-but-never-started voter: a fourth needs 3 started of 4.
    assert not ready_to_add_voter(_members(2, unstarted=1))
    assert ready_to_add_voter(_members(1))  # etcd's special case: growing a one-member cluster
    assert not ready_to_add_voter(_members(1, unstarted=1))
    # Removing: the started voters left must keep a quorum of the voters left.
    assert ready_to_remove_voter(_members(3), 1)
    assert ready_to_remove_voter(_members(2, unstarted=1), 100)
    assert not ready_to_remove_voter(_members(2, unstarted=2), 1)
    # Promoting: the learner counts as a started voter of the new set.
    assert ready_to_promote(_members(2, learners=1))
    assert not ready_to_promote(_members(1, unstarted=2, learners=1))


def test_a_link_still_coming_back_is_unhealthy_not_unstarted() -> None:
    """The flake's situation: member 1 answers, its link to 3 is in its reconnect backoff."""
    members = _members(3)
    voters = [m.id for m in members]
    settled = NOW - HEALTH_INTERVAL - 1
    links = {2: settled, 3: None}
    assert ready_to_add_voter(members)  # not the lasting answer ...
    assert not healthy_to_add(links.get, NOW, 1, voters)  # ... the passing one
    links[3] = NOW - 0.5  # back, but younger than HealthInterval: still passing
    assert not healthy_to_add(links.get, NOW, 1, voters)
    links[3] = settled
    assert healthy_to_add(links.get, NOW, 1, voters)
    assert connected_since(links.get, NOW - HEALTH_INTERVAL, 1, voters) == 3
    assert healthy_to_add({}.get, NOW, 1, [1])  # one member: nothing to reach


def test_remove_follows_etcds_link_rule() -> None:
    voters = [1, 2, 3]
    settled = NOW - HEALTH_INTERVAL - 1
    # Removing a member this one cannot reach is safe: it is not in the active quorum.
    assert healthy_to_remove({2: settled, 3: None}.get, NOW, 1, voters, 3)
    # Removing a reachable one while the other link is down leaves 1 of 2: refused.
    assert not healthy_to_remove({2: settled, 3: None}.get, NOW, 1, voters, 2)
    assert healthy_to_remove({2: settled, 3: settled}.get, NOW, 1, voters, 2)
    # Removing itself: the other two links must be settled.
    assert healthy_to_remove({2: settled, 3: settled}.get, NOW, 1, voters, 1)
    assert not healthy_to_remove({2: settled, 3: NOW}.get, NOW, 1, voters, 1)
