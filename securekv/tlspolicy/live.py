"""The revocation hook: live TLS connections by certificate, closed when a CRL revokes them.

A connection that passed the handshake registers its verified chain and a ``close(reason)``
callback; when a reloaded CRL revokes any certificate of a registered chain (leaf or
intermediate), the callback is called once, from the thread that reloaded the CRL (the trio
thread in securekv). The callback must not block: cancel a scope, set an event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

from securekv.tlspolicy.crl import RevocationList
from securekv.tlspolicy.identity import VerifiedPeer

log = logging.getLogger(__name__)

CloseCallback = Callable[[str], None]


class LiveConnections:
    """Registry of live connections (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1
        self._live: dict[int, tuple[VerifiedPeer, CloseCallback]] = {}

    def register(self, peer: VerifiedPeer, close: CloseCallback) -> int:
        """Track ``peer``'s connection; returns the token for :meth:`unregister`."""
        with self._lock:
            token = self._next
            self._next += 1
            self._live[token] = (peer, close)
            return token

    def unregister(self, token: int) -> None:
        with self._lock:
            self._live.pop(token, None)

    @contextlib.contextmanager
    def track(self, peer: VerifiedPeer, close: CloseCallback) -> Iterator[int]:
        """``with live.track(peer, close):`` for the lifetime of one connection."""
        token = self.register(peer, close)
        try:
            yield token
        finally:
            self.unregister(token)

    def close_revoked(self, revocations: RevocationList) -> int:
        """Call ``close`` for every live connection whose chain ``revocations`` revokes."""
        with self._lock:
            doomed = [(tok, peer, close) for tok, (peer, close) in self._live.items()
                      if revocations.revoked_certificate(peer.chain) is not None]
            for tok, _, _ in doomed:
                self._live.pop(tok, None)
        for _, peer, close in doomed:
            cert = revocations.revoked_certificate(peer.chain)
            reason = f"certificate serial {cert.serial_number:x} was revoked" if cert is not None else "revoked"
            log.warning("closing the connection of %s from %s: %s", peer.describe(), peer.remote or "?", reason)
            try:
                close(reason)
            except Exception:  # one bad callback must not keep the others open
                log.exception("closing a revoked connection failed")
        return len(doomed)

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)
