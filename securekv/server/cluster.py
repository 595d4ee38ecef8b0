"""Cluster membership at bootstrap: ``--initial-cluster`` members with etcd's IDs and the
validation that names a bad flag before anything starts.

The membership itself (``Member``, ``Membership``, applied from the log) is part of the pure
node core, ``securekv/node/membership.py``; it is re-exported here.
"""

from __future__ import annotations

from typing import Iterable

from securekv.errors import UsageError
from securekv.node.membership import META_KEY, PUBLISH_PREFIX, Member, Membership, publish_entry
from securekv.server import ids

__all__ = ["META_KEY", "PUBLISH_PREFIX", "Member", "Membership", "publish_entry", "initial_members",
           "validate_bootstrap"]


def initial_members(initial_cluster: Iterable[tuple[str, str]], token: str) -> list[Member]:
    """Members of ``--initial-cluster`` with etcd's IDs (sha1 of sorted peer URLs + token)."""
    by_name: dict[str, list[str]] = {}
    for name, url in initial_cluster:
        by_name.setdefault(name, []).append(str(url))
    return [Member(ids.member_id(urls, token), name, sorted(urls)) for name, urls in by_name.items()]


def validate_bootstrap(name: str, advertise_peer_urls: Iterable[str], members: list[Member]) -> Member:
    """Own member of ``--initial-cluster``; UsageError naming the problem otherwise."""
    mine = [m for m in members if m.name == name]
    if not mine:
        raise UsageError(f"member {name!r} is not in --initial-cluster "
                         f"({', '.join(m.name for m in members) or 'empty'})")
    me = mine[0]
    adv = sorted(str(u) for u in advertise_peer_urls)
    if adv and sorted(me.peer_urls) != adv:
        raise UsageError(f"--initial-cluster has {name}={','.join(me.peer_urls)} but "
                         f"--initial-advertise-peer-urls is {','.join(adv)}: they must match")
    seen: dict[str, str] = {}
    for m in members:
        for u in m.peer_urls:
            if u in seen and seen[u] != m.name:
                raise UsageError(f"--initial-cluster has peer URL {u} for both {seen[u]} and {m.name}")
            seen[u] = m.name
    return me
