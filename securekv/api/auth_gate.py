"""The one place where every request gets its identity and is authorised.

Identity: the CN of the verified client certificate of the connection the call arrived on
(:class:`securekv.api.identity.Identity`, filled by the listener). The RBAC issue adds tokens
(``token``/``authorization`` metadata, which win over the CN, as in etcd) and real permission
checks in :meth:`AuthGate.authorize`. Every RPC of every service passes here: the gRPC
dispatcher (``api/dispatch.py``) and the JSON gateway (``api/gateway.py``) call
``identify``/``caller_for`` and ``authorize(caller, method, request)``; the rule each method
needs is in the API table (``api.table.rule_of``).
"""

from __future__ import annotations

from typing import Iterable

import attrs

from securekv.api.identity import Identity


@attrs.frozen
class Caller:
    """An authenticated caller: what apply-time checks and the proposal header see."""

    username: str  # "" = anonymous (auth off, no certificate)
    identity: Identity
    token: str = ""


class AuthGate:
    def __init__(self, use_cn: bool = True) -> None:
        self.use_cn = use_cn

    def identify(self, identity: Identity, metadata: Iterable[tuple[str, str]]) -> Caller:
        """The caller of a gRPC call: its connection's identity plus a token from metadata."""
        token = ""
        for key, value in metadata:
            if key == "token" or key == "authorization":
                token = value
        return self.caller_for(identity, token)

    def caller_for(self, identity: Identity, token: str) -> Caller:
        """The caller of a request that arrived on ``identity``'s connection (gRPC or gateway)."""
        username = identity.common_name if (self.use_cn and not token) else ""
        return Caller(username=username, identity=identity, token=token)

    def authorize(self, caller: Caller, method: str, request: object) -> None:
        """Allow everything until the RBAC issue fills this in (raise EtcdError to deny)."""
        return None
