"""The one place where every request gets its identity and is authorised.

Identity today: the CN of the verified client certificate (recorded by the TLS front door).
The RBAC issue adds tokens (``token``/``authorization`` metadata, which win over the CN, as in
etcd) and real permission checks in :meth:`AuthGate.authorize`; callers already pass the
method name and request so nothing else has to change.
"""

from __future__ import annotations

import attrs

from securekv.rpctypes import EtcdError
from securekv.server.frontdoor import Identity, IdentityRegistry

ERR_NOT_FRONT_DOOR = EtcdError("UNAUTHENTICATED", "securekv: connection did not come through the TLS front door")


@attrs.frozen
class Caller:
    """An authenticated caller: what apply-time checks and the proposal header see."""

    username: str  # "" = anonymous (auth off, no certificate)
    identity: Identity
    token: str = ""


class AuthGate:
    def __init__(self, registry: IdentityRegistry, use_cn: bool = True) -> None:
        self.registry = registry
        self.use_cn = use_cn

    def identify(self, peer: str, metadata: tuple[tuple[str, str], ...] | list) -> Caller:
        identity = self.registry.lookup_peer(peer)
        if identity is None:
            raise ERR_NOT_FRONT_DOOR
        token = ""
        for key, value in metadata or ():
            if key in ("token", "authorization"):
                token = value if isinstance(value, str) else value.decode()
        return self.caller_for(identity, token)

    def caller_for(self, identity: Identity, token: str) -> Caller:
        """The caller of a request that arrived on ``identity``'s connection (gRPC or gateway)."""
        username = identity.common_name if (self.use_cn and not token) else ""
        return Caller(username=username, identity=identity, token=token)

    def authorize(self, caller: Caller, method: str, request: object) -> None:
        """Allow everything until the RBAC issue fills this in (raise EtcdError to deny)."""
        return None
