"""The replicated join tokens, applied: single use decided by log order, expiry by the clock in
the entry, only the secret's hash stored, and refused entries change nothing."""

from __future__ import annotations

import hashlib

import pytest

from securekv.apply import Applier
from securekv.apply.jointokens import BUCKET, JoinTokens
from securekv.lease import Lessor
from securekv.mvcc import MVCCStore
from securekv.proto import join_pb2, raft_internal_pb2
from securekv.rpctypes import EtcdError

H = hashlib.sha256(b"0123456789abcdef").digest()


def _entry(**fields) -> raft_internal_pb2.InternalRaftRequest:
    req = raft_internal_pb2.InternalRaftRequest(**fields)
    req.header.internal = "join_token_consume" in fields
    return req


def _members() -> list[Applier]:
    return [Applier(MVCCStore(), Lessor(1)) for _ in range(3)]


def test_single_use_is_decided_by_log_order_on_every_member() -> None:
    log = [
        _entry(join_token_create=join_pb2.JoinTokenCreateRequest(id="abcdef", secret_hash=H, ttl_seconds=3600,
                                                                  now_unix=1000, created_by="root")),
        _entry(join_token_consume=join_pb2.JoinTokenConsumeRequest(id="abcdef", secret_hash=H, now_unix=1010,
                                                                    member_name="n4")),
        _entry(join_token_consume=join_pb2.JoinTokenConsumeRequest(id="abcdef", secret_hash=H, now_unix=1011,
                                                                    member_name="n5")),
    ]
    outcomes = []
    for member in _members():
        results = [member.apply(i, e) for i, e in enumerate(log, 1)]
        outcomes.append([r.error.message if r.error else "ok" for r in results])
        assert results[0].auth_rows[-1][0] == BUCKET
        stored = join_pb2.JoinToken.FromString(results[1].auth_rows[0][2])
        assert stored.used_by == "n4" and stored.secret_hash == H  # the hash, never a secret
        assert results[2].auth_rows == ()
    assert outcomes[0] == ["ok", "ok", "securekv: join token was already used (tokens are single-use)"]
    assert outcomes.count(outcomes[0]) == 3


def test_expired_forged_and_revoked_tokens_are_refused() -> None:
    tokens = JoinTokens()
    tokens.create(join_pb2.JoinTokenCreateRequest(id="abcdef", secret_hash=H, ttl_seconds=60, now_unix=0))
    with pytest.raises(EtcdError, match="expired"):
        tokens.check("abcdef", H, 60)
    with pytest.raises(EtcdError, match="not valid"):
        tokens.check("abcdef", hashlib.sha256(b"guess").digest(), 1)
    with pytest.raises(EtcdError, match="not valid"):
        tokens.check("zzzzzz", H, 1)
    tokens.revoke(join_pb2.JoinTokenRevokeRequest(id="abcdef"))
    with pytest.raises(EtcdError, match="not valid"):
        tokens.check("abcdef", H, 1)


def test_bad_entries_change_nothing_and_old_records_are_purged() -> None:
    tokens = JoinTokens()
    for bad in (dict(id="ABC", secret_hash=H, ttl_seconds=60), dict(id="abcdef", secret_hash=b"x", ttl_seconds=60),
                dict(id="abcdef", secret_hash=H, ttl_seconds=0)):
        with pytest.raises(EtcdError):
            tokens.create(join_pb2.JoinTokenCreateRequest(now_unix=0, **bad))
    assert tokens.tokens == {}
    tokens.create(join_pb2.JoinTokenCreateRequest(id="aaaaaa", secret_hash=H, ttl_seconds=60, now_unix=0))
    with pytest.raises(EtcdError, match="already exists"):
        tokens.create(join_pb2.JoinTokenCreateRequest(id="aaaaaa", secret_hash=H, ttl_seconds=60, now_unix=10))
    _, rows = tokens.create(join_pb2.JoinTokenCreateRequest(id="bbbbbb", secret_hash=H, ttl_seconds=60,
                                                             now_unix=60 + 24 * 3600))
    assert (BUCKET, b"aaaaaa", None) in rows and set(tokens.tokens) == {"bbbbbb"}
    assert all(t.secret_hash == b"" for t in tokens.listing())


def test_a_client_cannot_consume_a_token_when_auth_is_on() -> None:
    member = _members()[0]
    member.auth.state = member.auth.state.evolve(enabled=True)
    entry = raft_internal_pb2.InternalRaftRequest(
        join_token_consume=join_pb2.JoinTokenConsumeRequest(id="abcdef", secret_hash=H, now_unix=1))
    entry.header.username = "alice"
    result = member.apply(1, entry)
    assert result.error is not None and "permission denied" in result.error.message
