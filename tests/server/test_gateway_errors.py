"""JSON gateway error answers diffed against the real etcd 3.4's grpc-gateway: the HTTP status
and the ``{"error","message","code"}`` body of every service's errors, election and lock
included. Each case runs against both servers in the same state."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import attrs
import pytest

from server_harness import Certs, Member


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# (name, path, JSON body). Lease 0x7777 and member 0x1234 never exist.
CASES = [
    ("kv range future revision", "/v3/kv/range", _body(key=b64("a"), revision="100000")),
    ("kv range compacted", "/v3/kv/range", _body(key=b64("a"), revision="1")),
    ("kv range bad base64", "/v3/kv/range", b'{"key":"eA"}'),
    ("kv range malformed json", "/v3/kv/range", b'{"key":'),
    ("kv put empty key", "/v3/kv/put", _body(value=b64("x"))),
    ("kv put unknown lease", "/v3/kv/put", _body(key=b64("a"), value=b64("x"), lease="30583")),
    ("kv put ignore_value with value", "/v3/kv/put", _body(key=b64("a"), value=b64("x"), ignore_value=True)),
    ("kv put ignore_value missing key", "/v3/kv/put", _body(key=b64("nokey"), ignore_value=True)),
    ("kv deleterange empty key", "/v3/kv/deleterange", _body()),
    ("kv txn duplicate keys", "/v3/kv/txn", json.dumps({"success": [
        {"request_put": {"key": b64("d"), "value": b64("1")}},
        {"request_put": {"key": b64("d"), "value": b64("2")}}]}).encode()),
    ("kv txn too many ops", "/v3/kv/txn", json.dumps({"success": [
        {"request_put": {"key": b64(f"t{i}"), "value": b64("1")}} for i in range(129)]}).encode()),
    ("kv compaction future", "/v3/kv/compaction", _body(revision="100000")),
    ("kv compaction compacted", "/v3/kv/compaction", _body(revision="1")),
    ("lease revoke unknown", "/v3/lease/revoke", _body(ID="30583")),
    ("lease revoke unknown (kv binding)", "/v3/kv/lease/revoke", _body(ID="30583")),
    ("lease grant too large ttl", "/v3/lease/grant", _body(TTL="9000000000")),
    ("lease grant duplicate id", "/v3/lease/grant", _body(TTL="60", ID="4242")),
    ("cluster member remove unknown", "/v3/cluster/member/remove", _body(ID="4660")),
    ("cluster member update unknown", "/v3/cluster/member/update", _body(ID="4660", peerURLs=["https://127.0.0.1:1"])),
    ("cluster member promote unknown", "/v3/cluster/member/promote", _body(ID="4660")),
    ("cluster member add bad url", "/v3/cluster/member/add", _body(peerURLs=["not-a-url"])),
    ("maintenance move leader unknown", "/v3/maintenance/transfer-leadership", _body(targetID="4660")),
    ("maintenance hashkv future", "/v3/maintenance/hash", _body(revision="100000")),
    ("auth authenticate (auth off)", "/v3/auth/authenticate", _body(name="root", password="x")),
    ("lock unknown lease", "/v3/lock/lock", _body(name=b64("l"), lease="30583")),
    ("unlock empty key", "/v3/lock/unlock", _body()),
    ("election campaign unknown lease", "/v3/election/campaign", _body(name=b64("e"), lease="30583",
                                                                        value=b64("v"))),
    ("election leader none", "/v3/election/leader", _body(name=b64("nobody"))),
    ("election proclaim not leader", "/v3/election/proclaim",
     json.dumps({"leader": {"name": b64("e"), "key": b64("e/1"), "rev": "1", "lease": "1"},
                 "value": b64("v")}).encode()),
    ("election resign not leader", "/v3/election/resign",
     json.dumps({"leader": {"name": b64("e"), "key": b64("e/1"), "rev": "1", "lease": "1"}}).encode()),
    ("unknown path", "/v3/kv/nothing", b"{}"),
]


def _mask(value: object) -> object:
    """IDs, terms and hashes differ between two servers; errors are compared whole."""
    if isinstance(value, dict):
        return {k: ("N" if k in ("cluster_id", "member_id", "raft_term", "ID", "hash") else _mask(v))
                for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> dict[str, Member]:
    from securekv.pki.issue import issue_cert
    from test_gateway import _wait_gateway, post

    issue_cert(certs.dir, "etcd", "gwerr-server", hosts=["127.0.0.1", "localhost"])
    c = attrs.evolve(certs, server_cert=certs.dir / "gwerr-server.pem",
                     server_key=certs.dir / "gwerr-server-key.pem")
    members: dict[str, Member] = {}
    try:
        for kind in ("etcd", "securekv"):
            m = Member(kind, tmp_path_factory.mktemp(f"gwerr-{kind}") / "data", c)
            m.start()
            members[kind] = m
            if kind == "etcd":
                _wait_gateway(m)
            # the same history on both: a compaction at 3, lease 4242 granted
            for i in range(4):
                post(m, "/v3/kv/put", _body(key=b64("a"), value=b64(str(i))))
            post(m, "/v3/kv/compaction", _body(revision="3"))
            post(m, "/v3/lease/grant", _body(TTL="60", ID="4242"))
        yield members
    finally:
        for m in members.values():
            m.kill()


@pytest.mark.parametrize(("name", "path", "body"), CASES, ids=[c[0] for c in CASES])
def test_gateway_error_matches_etcd(pair: dict[str, Member], name: str, path: str, body: bytes) -> None:
    from test_gateway import post

    answers = {}
    for kind, m in pair.items():
        status, payload = post(m, path, body)
        try:
            parsed: object = json.loads(payload)
        except ValueError:
            parsed = payload.decode("utf-8", "replace")
        answers[kind] = (status, _mask(parsed))
    assert answers["securekv"] == answers["etcd"], f"{name}: securekv {answers['securekv']} etcd {answers['etcd']}"
