"""etcd's corruption checks: compare hashkv with the peers (``--experimental-initial-corrupt-check``,
``--experimental-corrupt-check-time``).

Why: a member whose backend diverged (a disk that lied, a bug, an operator's manual edit)
would otherwise serve different data than its peers without anyone noticing. The hash is
``HashKV`` (the same CRC32 over every revision row ``etcdctl endpoint hashkv`` shows); peers
are asked over the peer transport for their hash *at the same revision*, so concurrent writes
do not cause false alarms. The decision rules are etcd 3.4's:

* initial (before serving clients): a peer whose hash differs at the same revision and the
  same compaction revision is a mismatch, logged with etcd's fields; any mismatch refuses to
  serve with etcd's error ``<id> found data inconsistency with peers``. A peer that lags
  (future revision) or compacted past it is logged and skipped.
* periodic (leader, every interval): the same comparison; a mismatch raises the CORRUPT alarm
  through the log, which makes every member refuse writes (``etcdserver: corrupt cluster``).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from securekv.errors import CorruptionError, PeerError
from securekv.proto import rpc_pb2
from securekv.rpctypes import EtcdError
from securekv.server.etcdlog import event

log = logging.getLogger(__name__)
HASHKV_CALL = "hashkv"


@attrs.frozen
class PeerHash:
    member_id: int
    endpoints: tuple[str, ...]
    response: rpc_pb2.HashKVResponse | None
    error: str = ""  # etcd error message when the peer could not hash at that revision


async def peer_hashes(server: Any, revision: int) -> list[PeerHash]:
    """Every other member's HashKV at ``revision`` (peers that cannot answer are reported as such)."""
    out = []
    transport = server.transport
    if transport is None:
        return out
    for m in sorted(server.node.membership.members.values(), key=lambda m: m.id):
        if m.id == server.member_id or m.is_learner:
            continue
        try:
            data = await transport.call(m.id, HASHKV_CALL, revision.to_bytes(8, "big"), timeout=5.0)
        except PeerError as exc:
            out.append(PeerHash(m.id, tuple(m.client_urls), None, str(exc)))
            continue
        if data.startswith(b"\x00ERR:"):
            out.append(PeerHash(m.id, tuple(m.client_urls), None, data[5:].decode().partition(":")[2]))
        else:
            out.append(PeerHash(m.id, tuple(m.client_urls), rpc_pb2.HashKVResponse.FromString(data)))
    return out


def serve_hashkv(server: Any, payload: bytes) -> bytes:
    """The peer side: this member's HashKV at the asked revision (header revision = current)."""
    revision = int.from_bytes(payload, "big")
    value, compact = server.store.hash_kv(revision)
    resp = rpc_pb2.HashKVResponse(hash=value, compact_revision=compact)
    resp.header.member_id = server.member_id
    resp.header.revision = server.store.current_revision
    return resp.SerializeToString()


def _fields(server: Any, rev: int, crev: int, h: int, p: PeerHash) -> dict[str, Any]:
    fields = {"local-member-id": f"{server.member_id:x}", "local-member-revision": rev,
              "local-member-compact-revision": crev, "local-member-hash": h,
              "remote-peer-id": f"{p.member_id:x}", "remote-peer-endpoints": list(p.endpoints)}
    if p.response is not None:
        fields.update({"remote-peer-revision": p.response.header.revision,
                       "remote-peer-compact-revision": p.response.compact_revision,
                       "remote-peer-hash": p.response.hash})
    return fields


async def compare(server: Any) -> list[int]:
    """Hash locally, ask the peers at the same revision; the IDs of mismatching peers."""
    rev = server.store.current_revision
    h, crev = server.store.hash_kv(0)
    mismatched = []
    for p in await peer_hashes(server, rev):
        fields = _fields(server, rev, crev, h, p)
        if p.response is None:
            if "future revision" in p.error:
                event(log, logging.WARNING, "cannot fetch hash from slow remote peer", pkg="etcdserver",
                      capnslog=f"{server.member_id:x} cannot check the hash of peer({list(p.endpoints)}) at "
                               f"revision {rev}: peer is lagging behind", **fields, error=p.error)
            elif "compacted" in p.error:
                event(log, logging.WARNING, "cannot fetch hash from remote peer; local member is behind",
                      pkg="etcdserver", **fields, error=p.error)
            else:
                log.warning("cannot fetch hash from remote peer %x: %s", p.member_id, p.error)
            continue
        if p.response.hash != h:
            if p.response.compact_revision == crev:
                event(log, logging.WARNING, "found different hash values from remote peer", pkg="etcdserver",
                      capnslog=f"{server.member_id:x}'s hash {h} != {p.member_id:x}'s hash {p.response.hash} "
                               f"(revision {rev}, peer revision {p.response.header.revision}, compact revision "
                               f"{crev})", **fields)
                mismatched.append(p.member_id)
            else:
                event(log, logging.WARNING, "found different compact revision values from remote peer",
                      pkg="etcdserver", **fields)
    return mismatched


async def initial_check(server: Any) -> None:
    """Before serving clients; CorruptionError (etcd's text) on a mismatch."""
    event(log, logging.INFO, "starting initial corruption check", pkg="etcdserver",
          capnslog=f"{server.member_id:x} starting initial corruption check with timeout 7s...",
          **{"local-member-id": f"{server.member_id:x}", "timeout": "7s"})
    if await compare(server):
        event(log, logging.ERROR, "found data inconsistency with peers", pkg="etcdserver",
              capnslog=f"{server.member_id:x} found data inconsistency with peers",
              **{"local-member-id": f"{server.member_id:x}"})
        raise CorruptionError(f"{server.member_id:x} found data inconsistency with peers")
    event(log, logging.INFO, "initial corruption checking passed; no corruption", pkg="etcdserver",
          capnslog=f"{server.member_id:x} succeeded on initial corruption checking: no corruption",
          **{"local-member-id": f"{server.member_id:x}"})


async def periodic_check(server: Any) -> None:
    """One leader pass of ``--experimental-corrupt-check-time``: CORRUPT alarm on a mismatch."""
    if not server.node.is_leader:
        return
    mismatched = await compare(server)
    if not mismatched:
        return
    event(log, logging.ERROR, "found data inconsistency with peers", pkg="etcdserver",
          **{"local-member-id": f"{server.member_id:x}", "mismatched-peers": [f"{m:x}" for m in mismatched]})
    req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=mismatched[0],
                               alarm=rpc_pb2.AlarmType.Value("CORRUPT"))
    try:
        from securekv.api.auth_gate import SERVER_CALLER

        await server.node.propose(server._request(SERVER_CALLER, alarm=req))
    except EtcdError as exc:
        log.warning("could not raise the CORRUPT alarm: %s", exc.message)


__all__ = ["HASHKV_CALL", "compare", "initial_check", "periodic_check", "serve_hashkv"]
