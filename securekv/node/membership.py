"""Cluster membership: who the members are, as applied from the log (etcd's RaftCluster).

Membership changes are Raft conf changes whose ``context`` carries the member (JSON: id, name,
peer URLs, learner flag), so every member applies the same change at the same index. The
state is stored in the backend's meta table (``members``) in the same transaction as the
consistent index, and travels with a snapshot (the backend copy). Client URLs are not part of
a conf change: each member publishes its own with a NORMAL entry (``PUBLISH_PREFIX``).

Pure (the node core applies it); the bootstrap validation of ``--initial-cluster`` stays in
``securekv/server/cluster.py``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import attrs

from securekv.raft import ConfChange, ConfChangeType

# A NORMAL entry starting with this byte is a member attribute update, not an
# InternalRaftRequest (field number 0 is invalid protobuf, so no request starts with it).
PUBLISH_PREFIX = b"\x00skv-publish:"
META_KEY = "members"


@attrs.frozen
class Member:
    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    client_urls: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    is_learner: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "peerURLs": list(self.peer_urls),
                "clientURLs": list(self.client_urls), "isLearner": self.is_learner}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Member:
        return cls(int(d["id"]), d.get("name", ""), d.get("peerURLs", ()), d.get("clientURLs", ()),
                   bool(d.get("isLearner", False)))

    def context(self) -> bytes:
        """What goes into a conf change's context (no client URLs: those are published)."""
        return json.dumps({"id": self.id, "name": self.name, "peerURLs": list(self.peer_urls),
                           "isLearner": self.is_learner}, sort_keys=True).encode()


class Membership:
    """Members and removed IDs; mutated only by applying log entries (deterministic)."""

    def __init__(self, members: Iterable[Member] = (), removed: Iterable[int] = ()) -> None:
        self.members: dict[int, Member] = {m.id: m for m in members}
        self.removed: set[int] = set(removed)

    # -- persistence ----------------------------------------------------------------------
    def encode(self) -> bytes:
        return json.dumps({"members": [m.to_dict() for m in sorted(self.members.values(), key=lambda m: m.id)],
                           "removed": sorted(self.removed)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Membership:
        if not data:
            return cls()
        d = json.loads(bytes(data))
        return cls([Member.from_dict(m) for m in d.get("members", [])], d.get("removed", []))

    # -- applying -------------------------------------------------------------------------
    def apply_conf_change(self, cc: ConfChange) -> None:
        ctx: dict[str, Any] = {}
        if cc.context:
            try:
                ctx = json.loads(bytes(cc.context))
            except ValueError:
                ctx = {}
        old = self.members.get(cc.node_id)
        if cc.type == ConfChangeType.REMOVE_NODE:
            if old is not None:
                del self.members[cc.node_id]
            self.removed.add(cc.node_id)
            return
        if cc.node_id in self.removed:
            return
        if cc.type == ConfChangeType.PROMOTE_LEARNER or (cc.type == ConfChangeType.ADD_NODE and old is not None
                                                          and old.is_learner and not ctx):
            if old is not None:
                self.members[cc.node_id] = attrs.evolve(old, is_learner=False)
            return
        learner = cc.type == ConfChangeType.ADD_LEARNER
        name = ctx.get("name", old.name if old else "")
        peer_urls = ctx.get("peerURLs", old.peer_urls if old else ())
        client_urls = old.client_urls if old else ()
        self.members[cc.node_id] = Member(cc.node_id, name, peer_urls, client_urls, learner)

    def apply_publish(self, data: bytes) -> None:
        d = json.loads(bytes(data[len(PUBLISH_PREFIX):]))
        mid = int(d["id"])
        old = self.members.get(mid)
        if old is None:
            return
        kwargs: dict[str, Any] = {}
        if "clientURLs" in d:
            kwargs["client_urls"] = tuple(d["clientURLs"])
        if "name" in d and d["name"]:
            kwargs["name"] = d["name"]
        if "peerURLs" in d:
            kwargs["peer_urls"] = tuple(d["peerURLs"])
        self.members[mid] = attrs.evolve(old, **kwargs)

    def voters(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if not m.is_learner)

    def learners(self) -> list[int]:
        return sorted(m.id for m in self.members.values() if m.is_learner)

    def by_peer_url(self, url: str) -> Member | None:
        for m in self.members.values():
            if url in m.peer_urls:
                return m
        return None


def publish_entry(member_id: int, **fields: Any) -> bytes:
    return PUBLISH_PREFIX + json.dumps({"id": member_id, **fields}, sort_keys=True).encode()


__all__ = ["META_KEY", "PUBLISH_PREFIX", "Member", "Membership", "publish_entry"]
