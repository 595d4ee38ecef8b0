"""The replicated join tokens (issue 16): create, revoke and consume, decided at apply time.

A join token lets a new member get certificates without the CA key on its side. Every member
applies the same token entries in the same order, so "single use" is decided by the log: of
two joins racing with one token, the first consume entry committed wins and the second is
refused on every member alike. Nothing here reads a clock: the proposer puts its time in the
entry (``now_unix``), as lease IDs travel in theirs.

Only the SHA-256 of a token's secret is stored (bucket ``join_tokens``): the secret is
high-entropy random (kubeadm's shape, 16 characters of [a-z0-9], about 82 bits), so its hash
cannot be reversed; whoever reads the backend or a snapshot cannot join with it. A used or
expired token is kept until a day after its expiry so that its second use gets a clear
refusal ("already used") rather than "unknown".
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from securekv.proto import join_pb2
from securekv.rpctypes import EtcdError, err

BUCKET = "join_tokens"
KEEP_AFTER_EXPIRY = 24 * 3600  # seconds a used/expired token's record is kept for clear refusals
MAX_TTL = 7 * 24 * 3600

ERR_TOKEN_EXISTS = EtcdError("FAILED_PRECONDITION", "securekv: a join token with this id already exists")
ERR_TOKEN_NOT_FOUND = EtcdError("NOT_FOUND", "securekv: join token not found")
ERR_TOKEN_INVALID = EtcdError("PERMISSION_DENIED",
                              "securekv: join token is not valid (unknown token id or wrong secret)")
ERR_TOKEN_USED = EtcdError("PERMISSION_DENIED", "securekv: join token was already used (tokens are single-use)")
ERR_TOKEN_EXPIRED = EtcdError("PERMISSION_DENIED", "securekv: join token has expired")
ERR_TOKEN_BAD_TTL = EtcdError("INVALID_ARGUMENT", f"securekv: join token TTL must be 1..{MAX_TTL} seconds")
ERR_TOKEN_BAD_FORM = EtcdError("INVALID_ARGUMENT",
                               "securekv: join token id must be 6 characters [a-z0-9] and the hash 32 bytes")

Row = tuple[str, bytes, "bytes | None"]


def _valid_id(token_id: str) -> bool:
    return len(token_id) == 6 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789" for c in token_id)


class JoinTokens:
    """The token records, by id."""

    def __init__(self, tokens: Iterable[join_pb2.JoinToken] = ()) -> None:
        self.tokens: dict[str, join_pb2.JoinToken] = {t.id: t for t in tokens}

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[bytes, bytes]]) -> JoinTokens:
        return cls(join_pb2.JoinToken.FromString(value) for _key, value in rows)

    # -- apply -----------------------------------------------------------------------------
    def create(self, req: join_pb2.JoinTokenCreateRequest) -> tuple[join_pb2.JoinTokenCreateResponse, tuple[Row, ...]]:
        if not _valid_id(req.id) or len(req.secret_hash) != 32:
            raise err(ERR_TOKEN_BAD_FORM)
        if not 0 < req.ttl_seconds <= MAX_TTL:
            raise err(ERR_TOKEN_BAD_TTL)
        stale = [i for i, t in self.tokens.items() if req.now_unix >= t.expires_unix + KEEP_AFTER_EXPIRY]
        if req.id in self.tokens and req.id not in stale:
            raise err(ERR_TOKEN_EXISTS)
        rows: list[Row] = []
        for token_id in stale:  # refused requests change nothing: purge only once accepted
            del self.tokens[token_id]
            rows.append((BUCKET, token_id.encode(), None))
        token = join_pb2.JoinToken(id=req.id, secret_hash=req.secret_hash, expires_unix=req.now_unix + req.ttl_seconds,
                                   description=req.description, created_by=req.created_by, created_unix=req.now_unix)
        self.tokens[req.id] = token
        rows.append((BUCKET, req.id.encode(), token.SerializeToString()))
        return join_pb2.JoinTokenCreateResponse(id=req.id, expires_unix=token.expires_unix), tuple(rows)

    def revoke(self, req: join_pb2.JoinTokenRevokeRequest) -> tuple[join_pb2.JoinTokenRevokeResponse, tuple[Row, ...]]:
        if req.id not in self.tokens:
            raise err(ERR_TOKEN_NOT_FOUND)
        del self.tokens[req.id]
        return join_pb2.JoinTokenRevokeResponse(), ((BUCKET, req.id.encode(), None),)

    def consume(self, req: join_pb2.JoinTokenConsumeRequest) -> tuple[join_pb2.JoinTokenConsumeResponse,
                                                                       tuple[Row, ...]]:
        token = self.check(req.id, req.secret_hash, req.now_unix)
        used = join_pb2.JoinToken()
        used.CopyFrom(token)
        used.used_unix = max(req.now_unix, 1)
        used.used_by = req.member_name
        self.tokens[req.id] = used
        return join_pb2.JoinTokenConsumeResponse(), ((BUCKET, req.id.encode(), used.SerializeToString()),)

    # -- queries ---------------------------------------------------------------------------
    def check(self, token_id: str, secret_hash: bytes, now_unix: int) -> join_pb2.JoinToken:
        """The token if it may admit a member now; else the EtcdError that says why. Callers
        check before proposing (a clear answer without a log entry) and the applier checks
        again (the decision that counts)."""
        token = self.tokens.get(token_id)
        if token is None or not hmac.compare_digest(token.secret_hash, secret_hash):
            raise err(ERR_TOKEN_INVALID)
        if token.used_unix:
            raise err(ERR_TOKEN_USED)
        if now_unix >= token.expires_unix:
            raise err(ERR_TOKEN_EXPIRED)
        return token

    def listing(self) -> list[join_pb2.JoinToken]:
        out = []
        for token_id in sorted(self.tokens):
            shown = join_pb2.JoinToken()
            shown.CopyFrom(self.tokens[token_id])
            shown.secret_hash = b""
            out.append(shown)
        return out


__all__ = ["BUCKET", "ERR_TOKEN_EXPIRED", "ERR_TOKEN_INVALID", "ERR_TOKEN_USED", "JoinTokens"]
