"""The one place where every request gets its identity and is authorised.

Identity (etcd's rule): a ``token``/``authorization`` metadata value names the user when auth
is on (an unknown or expired token is ``invalid auth token``); without a token, the CN of the
verified client certificate is the user name (when client certificates are required). The
connection's side of it (:class:`securekv.api.identity.Identity`: CN, address, serial) is filled
once per connection by the listener, in this same thread. The
caller also carries the auth revision it was identified at; proposals copy user name and
revision into the entry's header, and the applier checks the entry against the auth state of
its own index, so a permission revoked while a request is in flight is honoured on every
member (``revision of auth store is old`` makes the request retry against the new state).

Authorisation: :meth:`AuthGate.authorize` looks the method's rule up in
``securekv.auth.rules.RULES`` (one table, keyed by gRPC full method name; unknown methods are
refused) and runs it against the current AuthState; the API table's rule column
(``api.table.Rpc.rule``) is that same lookup, not a second table. Every decision can go to the
audit log. Callers: the gRPC dispatcher (``api/dispatch.py``: every unary call with its request,
every stream open -- client streams with ``None``, server streams with their request), the
JSON gateway (``api/gateway.py``, the same way) and the peer transport's calls; they call
``identify``/``caller_for`` then ``authorize``. Client-stream sessions (Watch, LeaseKeepAlive)
call ``authorize_message`` for each request message. All of it runs in the trio thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Callable, Protocol

import attrs

from securekv.auth.check import AuthInfo, raw
from securekv.auth.rules import RULES, Rule, full_name
from securekv.auth.state import AuthState
from securekv.auth.tokens import TOKEN_JWT, TokenProvider
from securekv.api.identity import Identity
from securekv.rpctypes import ERR_AUTH_OLD_REVISION, ERR_INVALID_AUTH_TOKEN, ERR_PERMISSION_DENIED, EtcdError, err

# How an identity was established (the audit log's "how").
BY_CERT, BY_TOKEN, BY_NOTHING, BY_PEER = "certificate", "token", "none", "peer"


@attrs.frozen
class Caller:
    """An identified caller: what the rules, the proposal header and the audit log see."""

    username: str  # "" = nobody (auth off, or no certificate CN and no token)
    identity: Identity
    token: str = ""
    how: str = BY_NOTHING
    auth_revision: int = 0  # auth revision the identity was established at
    pinned: bool = False  # the token fixes the revision (JWT): never silently refreshed
    error: EtcdError | None = None  # the token was refused; raised by any rule needing a user
    member_id: int = 0  # BY_PEER: the calling member

    @property
    def is_peer(self) -> bool:
        return self.how == BY_PEER

    def info(self) -> AuthInfo:
        return AuthInfo(self.username, self.auth_revision)


# Requests the server makes itself (lease expiry, the embedded bootstrap): the entry is
# marked internal and skips the apply-time checks. Never derived from a client connection.
SERVER_CALLER = Caller("", Identity("securekv", "", True), how="server")


class GateSource(Protocol):
    """What the gate reads from the server (in the trio thread)."""

    def auth_state(self) -> AuthState: ...

    def lease_keys(self, lease_id: int) -> Iterable[bytes]: ...


class AuditSink(Protocol):
    def record(self, event: dict[str, Any]) -> None: ...


class _Open:
    """Before the server is bound (unit tests of the dispatcher): auth off, no leases."""

    def auth_state(self) -> AuthState:
        return _OFF

    def lease_keys(self, lease_id: int) -> Iterable[bytes]:
        return ()


_OFF = AuthState()


def token_from(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """etcd's token metadata: ``token`` (gRPC clients) or ``authorization`` (the gateway)."""
    token = ""
    for key, value in metadata or ():
        if key in ("token", "authorization"):
            token = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    return token


class AuthGate:
    def __init__(self, use_cn: bool = True, *, tokens: TokenProvider | None = None,
                 audit: AuditSink | None = None, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.use_cn = use_cn
        self.tokens = tokens
        self.audit = audit
        self.source: GateSource = _Open()
        self._monotonic = monotonic
        self._wall = wall

    def bind(self, source: GateSource) -> None:
        self.source = source

    def token_now(self) -> float:
        """The clock tokens live on: wall time for JWT (``exp`` is absolute), else monotonic."""
        return self._wall() if self.tokens is not None and self.tokens.kind == TOKEN_JWT else self._monotonic()

    # -- identity ---------------------------------------------------------------------------
    def identify(self, identity: Identity, metadata: Iterable[tuple[str, Any]] | None) -> Caller:
        """The caller of a gRPC call: its connection's identity plus a token from metadata."""
        return self.caller_for(identity, token_from(metadata))

    def caller_for(self, identity: Identity, token: str) -> Caller:
        """The caller of a request that arrived on ``identity``'s connection (gRPC or gateway)."""
        state = self.source.auth_state()
        if token and state.enabled:
            found = self.tokens.info(token, state.revision, self.token_now()) if self.tokens is not None else None
            if found is None:
                return Caller("", identity, token, BY_TOKEN, state.revision, error=err(ERR_INVALID_AUTH_TOKEN))
            username, revision = found
            return Caller(username, identity, token, BY_TOKEN, revision,
                          pinned=self.tokens is not None and self.tokens.kind == TOKEN_JWT)
        if self.use_cn and identity.common_name and not token:
            return Caller(identity.common_name, identity, "", BY_CERT, state.revision)
        return Caller("", identity, token, BY_NOTHING, state.revision)

    def peer_caller(self, member_id: int) -> Caller:
        """Another member calling over the (mutual-TLS, CN-checked) peer transport."""
        return Caller("", Identity(f"member {member_id:x}", "", True), how=BY_PEER,
                      auth_revision=self.source.auth_state().revision, member_id=member_id)

    # -- authorisation ----------------------------------------------------------------------
    def authorize(self, caller: Caller, method: str, request: object) -> None:
        """Allow, or raise the EtcdError etcd would answer (deny by default)."""
        self._decide(caller, full_name(method), request, message=False)

    def authorize_message(self, caller: Caller, method: str, message: object) -> None:
        """One request message of an open stream (a watch create, a keepalive)."""
        self._decide(caller, full_name(method), message, message=True)

    def admit(self, identity: Identity, token: str, method: str, request: object) -> Caller:
        caller = self.caller_for(identity, token)
        self.authorize(caller, method, request)
        return caller

    def refresh(self, caller: Caller, method: str, request: object) -> Caller:
        """The same caller against the current auth state (after ``revision of auth store is
        old``, or a wait during which auth changed). A JWT's revision is fixed by the token:
        its holder gets the error and logs in again, as with etcd."""
        state = self.source.auth_state()
        if caller.auth_revision == state.revision or caller.is_peer:
            return caller
        if caller.pinned:
            raise err(ERR_AUTH_OLD_REVISION)
        fresh = self.caller_for(caller.identity, caller.token)
        self.authorize(fresh, method, request)
        return fresh

    def _decide(self, caller: Caller, method: str, request: object, *, message: bool) -> None:
        rule = RULES.get(method)
        try:
            if rule is None:
                raise err(ERR_PERMISSION_DENIED)  # a method nobody wrote a rule for
            self._check(rule, caller, request, message)
        except EtcdError as exc:
            if self.audit is not None:
                self._record(caller, method, rule, request, "deny", exc.message)
            raise
        if self.audit is not None:
            self._record(caller, method, rule, request, "allow", rule.kind if rule is not None else "")

    def _check(self, rule: Rule, caller: Caller, request: object, message: bool) -> None:
        if rule.peer:
            if not caller.is_peer:
                raise err(ERR_PERMISSION_DENIED)
            return
        if caller.is_peer:
            raise err(ERR_PERMISSION_DENIED)  # a member identity is for peer calls only
        state = self.source.auth_state()
        check = rule.message if message else rule.check
        if check is None:
            raise err(ERR_PERMISSION_DENIED)  # a stream message the rule does not expect
        if caller.error is not None and state.enabled and not rule.public:
            raise raw(caller.error) if rule.kind == "maintenance" else caller.error
        check(state, caller.info(), request, self.source)

    def note(self, caller: Caller, method: str, decision: str, reason: str, *, username: str | None = None,
             how: str | None = None) -> None:
        """An audit line for a decision made outside the rules (a password check, an entry
        refused when applied)."""
        if self.audit is None:
            return
        if username is not None or how is not None:
            caller = attrs.evolve(caller, username=caller.username if username is None else username,
                                  how=caller.how if how is None else how)
        self._record(caller, full_name(method), None, None, decision, reason)

    def _record(self, caller: Caller, method: str, rule: Rule | None, request: object, decision: str,
                reason: str) -> None:
        keys = ""
        if rule is not None and rule.keys is not None and request is not None:
            try:
                keys = rule.keys(request)
            except Exception:  # a malformed request still gets its decision logged
                keys = ""
        assert self.audit is not None
        self.audit.record({
            "time": self._wall(),
            "identity": caller.username,
            "how": caller.how,
            "remote": caller.identity.remote,
            "rpc": method,
            "keys": keys,
            "decision": decision,
            "reason": reason,
        })


__all__ = ["AuditSink", "AuthGate", "SERVER_CALLER", "BY_CERT", "BY_NOTHING", "BY_PEER", "BY_TOKEN", "Caller", "GateSource",
           "token_from"]
