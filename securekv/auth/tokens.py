"""Auth tokens: etcd's ``--auth-token`` option and its two providers, ``simple`` and ``jwt``.

Both are member-local and pure (the clock and the randomness are passed in):

* ``simple`` — a random string that names (user, expiry) in this member's memory; the expiry
  moves on every use (``--auth-token-ttl``, 300 s). Unlike etcd, the token is never written
  to the Raft log (etcd replicates it through an ``Authenticate`` entry, leaving a bearer
  credential in every member's WAL): a client that moves to another member gets ``invalid
  auth token`` and authenticates again, which clientv3 does by itself.
* ``jwt`` — a signed token with etcd's claims ``username``, ``revision`` and ``exp``; any member
  holding the public key verifies it. Its ``revision`` is the auth revision at login, so after
  any auth change it fails with ``revision of auth store is old`` and the client logs in again
  (etcd's behaviour).

The option string is parsed exactly as etcd's ``decomposeOpts`` does: ``type[,k=v...]``, each
option exactly one ``=``, no duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from securekv.errors import UsageError
from securekv.rpctypes import EtcdError

TOKEN_SIMPLE = "simple"
TOKEN_JWT = "jwt"
DEFAULT_SIMPLE_TTL = 300.0  # --auth-token-ttl
DEFAULT_JWT_TTL = 300.0  # etcd's jwt ttl=5m
SIMPLE_TOKEN_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# etcd uses 16 letters (~91 bits); securekv 32 (~182 bits). Clients never parse tokens.
SIMPLE_TOKEN_LENGTH = 32
MAX_SIMPLE_TOKENS = 100_000

JWT_METHODS = ("EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
               "HS256", "HS384", "HS512")
JWT_OPTIONS = ("pub-key", "priv-key", "sign-method", "ttl")

ERR_VERIFY_ONLY = EtcdError("UNKNOWN", "auth: token signing attempted with verify-only key")


@attrs.frozen
class TokenSpec:
    """A parsed ``--auth-token`` value (key files are read by the server, not here)."""

    kind: str = TOKEN_SIMPLE
    pub_key: str = ""
    priv_key: str = ""
    sign_method: str = ""
    ttl: float = DEFAULT_JWT_TTL
    unknown: tuple[str, ...] = ()  # jwt options etcd warns about and ignores


def parse_token_spec(text: str) -> TokenSpec:
    """etcd's decomposeOpts + jwtOptions.Parse; bad input is one UsageError line."""
    from securekv.client.gofmt import parse_duration

    parts = text.split(",")
    kind = parts[0].strip()
    opts: dict[str, str] = {}
    for item in parts[1:]:
        pair = item.split("=")
        if len(pair) != 2:
            raise UsageError(f"invalid --auth-token {text!r}: option {item!r} is not key=value "
                             "(auth: invalid auth options)")
        if pair[0] in opts:
            raise UsageError(f"invalid --auth-token {text!r}: {pair[0]!r} given twice (auth: invalid auth options)")
        opts[pair[0]] = pair[1]
    if kind == TOKEN_SIMPLE:
        return TokenSpec(TOKEN_SIMPLE)
    if kind != TOKEN_JWT:
        raise UsageError(f"invalid --auth-token {text!r}: unknown token type {kind!r} (use simple or jwt)")
    ttl = DEFAULT_JWT_TTL
    if opts.get("ttl"):
        try:
            ttl = parse_duration(opts["ttl"])
        except ValueError as exc:
            raise UsageError(f"invalid --auth-token ttl {opts['ttl']!r}: {exc}") from None
        if ttl <= 0:
            raise UsageError(f"invalid --auth-token ttl {opts['ttl']!r}: must be positive")
    method = opts.get("sign-method", "")
    if method and method not in JWT_METHODS:
        raise UsageError(f"invalid --auth-token sign-method {method!r} (auth: invalid auth signature method); "
                         f"use one of {', '.join(JWT_METHODS)}")
    return TokenSpec(TOKEN_JWT, opts.get("pub-key", ""), opts.get("priv-key", ""), method, ttl,
                     tuple(sorted(k for k in opts if k not in JWT_OPTIONS)))


class Chooser(Protocol):
    def choice(self, seq: Sequence[str]) -> str: ...


class TokenProvider(Protocol):
    kind: str

    def assign(self, username: str, revision: int, now: float) -> str: ...

    def info(self, token: str, revision: int, now: float) -> tuple[str, int] | None:
        """(username, auth revision the token stands for), or None if not valid."""

    def invalidate_user(self, username: str) -> None: ...

    def clear(self) -> None: ...

    def purge(self, now: float) -> None: ...


class SimpleTokens:
    """etcd's simple token provider: member-local, TTL refreshed on every use."""

    kind = TOKEN_SIMPLE

    def __init__(self, rng: Chooser, ttl: float = DEFAULT_SIMPLE_TTL, *, max_tokens: int = MAX_SIMPLE_TOKENS) -> None:
        self.rng = rng
        self.ttl = ttl if ttl > 0 else DEFAULT_SIMPLE_TTL
        self.max_tokens = max_tokens
        self._tokens: dict[str, list[Any]] = {}  # token -> [username, expiry]
        self._serial = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def assign(self, username: str, revision: int, now: float) -> str:
        self._serial += 1
        prefix = "".join(self.rng.choice(SIMPLE_TOKEN_LETTERS) for _ in range(SIMPLE_TOKEN_LENGTH))
        token = f"{prefix}.{self._serial}"
        while len(self._tokens) >= self.max_tokens:  # bounded memory: the oldest login goes first
            del self._tokens[next(iter(self._tokens))]
        self._tokens[token] = [username, now + self.ttl]
        return token

    def info(self, token: str, revision: int, now: float) -> tuple[str, int] | None:
        entry = self._tokens.get(token)
        if entry is None:
            return None
        if now >= entry[1]:
            self._tokens.pop(token, None)
            return None
        entry[1] = now + self.ttl
        return entry[0], revision

    def invalidate_user(self, username: str) -> None:
        for token in [t for t, e in self._tokens.items() if e[0] == username]:
            del self._tokens[token]

    def clear(self) -> None:
        self._tokens.clear()

    def purge(self, now: float) -> None:
        for token in [t for t, e in self._tokens.items() if now >= e[1]]:
            del self._tokens[token]


class JWTTokens:
    """Signed tokens (PyJWT over ``cryptography`` keys): claims username, revision, exp.

    ``now`` here is wall-clock seconds since the epoch (``exp`` is absolute). With only a
    public key the provider verifies but cannot sign (etcd's verify-only mode).
    """

    kind = TOKEN_JWT

    def __init__(self, sign_method: str, private_key: Any, public_key: Any, ttl: float = DEFAULT_JWT_TTL) -> None:
        if sign_method not in JWT_METHODS:
            raise UsageError(f"unsupported JWT sign-method {sign_method!r}")
        self.sign_method = sign_method
        self.private_key = private_key
        self.verify_key = public_key if public_key is not None else _public_of(private_key)
        if self.verify_key is None:
            raise UsageError("JWT tokens need a key (auth: missing key data)")
        self.ttl = ttl

    def assign(self, username: str, revision: int, now: float) -> str:
        import jwt

        if self.private_key is None:
            raise EtcdError(ERR_VERIFY_ONLY.code, ERR_VERIFY_ONLY.message)
        claims = {"username": username, "revision": revision, "exp": int(now + self.ttl)}
        return jwt.encode(claims, self.private_key, algorithm=self.sign_method)

    def info(self, token: str, revision: int, now: float) -> tuple[str, int] | None:
        import jwt

        try:
            claims = jwt.decode(token, self.verify_key, algorithms=[self.sign_method],
                                options={"verify_exp": False, "verify_signature": True})
        except jwt.PyJWTError:
            return None
        username, rev, exp = claims.get("username"), claims.get("revision"), claims.get("exp")
        if not isinstance(username, str) or not isinstance(rev, (int, float)) or not isinstance(exp, (int, float)):
            return None
        if now >= exp:
            return None
        return username, int(rev)

    def invalidate_user(self, username: str) -> None:
        """Stateless: a deleted user or a new password fails the apply-time checks instead
        (the user is gone, or the token's revision is old)."""

    def clear(self) -> None:
        pass

    def purge(self, now: float) -> None:
        pass


def _public_of(private_key: Any) -> Any:
    if private_key is None:
        return None
    if isinstance(private_key, (bytes, bytearray)):
        return bytes(private_key)  # HMAC: the same secret verifies
    public = getattr(private_key, "public_key", None)
    return public() if callable(public) else None


__all__ = [
    "DEFAULT_SIMPLE_TTL", "JWTTokens", "JWT_METHODS", "SimpleTokens", "TOKEN_JWT", "TOKEN_SIMPLE", "TokenProvider",
    "TokenSpec", "parse_token_spec",
]
