"""A listener's TLS policy: its context (hot-reloaded), its CRL (enforced) and its live connections."""

from __future__ import annotations

import logging
import ssl
from typing import Any, Callable

from cryptography import x509

from securekv.errors import PeerError, UsageError
from securekv.fsutil import file_stamps
from securekv.tlspolicy.contexts import TLSFiles, server_context
from securekv.tlspolicy.crl import CRLWatcher, RevocationList
from securekv.tlspolicy.identity import VerifiedPeer, verified_peer
from securekv.tlspolicy.live import LiveConnections

log = logging.getLogger(__name__)


def trusted_issuers(files: TLSFiles) -> list[x509.Certificate]:
    """Certificates allowed to sign this endpoint's CRLs: the trusted CA file's, plus the
    intermediate CAs of our own certificate chain that lead to one of them (the CRL of an
    intermediate CA that issues the leaves; clients often trust only the root)."""
    from securekv.pki.verify import is_ca, load_cert_chain, verify_chain

    if not files.trusted_ca_file:
        raise UsageError(f"{files.flag(3)} needs {files.flag(2)} (a CRL is checked against the CA that signed it)")
    try:
        anchors = load_cert_chain(files.trusted_ca_file)
    except UsageError as exc:
        raise UsageError(f"{files.flag(2)}: {exc}") from None
    issuers = list(anchors)
    try:
        own = load_cert_chain(files.cert_file)[1:]
    except UsageError:
        own = []
    for i, cert in enumerate(own):
        if not is_ca(cert):
            continue
        try:
            verify_chain(own[i:], anchors)
        except UsageError:
            continue
        issuers.append(cert)
    return issuers


def crl_watcher(files: TLSFiles) -> CRLWatcher | None:
    if not files.crl_file:
        return None
    return CRLWatcher(files.crl_file, lambda: trusted_issuers(files),
                      watch=tuple(p for p in (files.trusted_ca_file, files.cert_file) if p), flag=files.flag(3))


class ReloadingContext:
    """Holds the current context; ``check()`` swaps in a new one when the files changed.

    New connections pick up ``current``; live connections keep the context they started with.
    A file that fails to load leaves the old context in place (logged once per change), so a
    half-written certificate never takes the listener down.
    """

    def __init__(self, files: TLSFiles, builder: Callable[[TLSFiles], ssl.SSLContext] = server_context) -> None:
        self.files = files
        self._builder = builder
        self._paths = tuple(p for p in (files.cert_file, files.key_file, files.trusted_ca_file) if p)
        self.current = builder(files)
        self._stamp = file_stamps(self._paths)
        self._bad_stamp: tuple | None = None
        self.reloads = 0

    def check(self) -> bool:
        stamp = file_stamps(self._paths)
        if stamp == self._stamp or stamp == self._bad_stamp:
            return False
        try:
            ctx = self._builder(self.files)
        except UsageError as exc:
            self._bad_stamp = stamp
            log.error("TLS files changed but are not usable; keeping the previous ones: %s", exc)
            return False
        self.current = ctx
        self._stamp = stamp
        self._bad_stamp = None
        self.reloads += 1
        log.info("TLS files reloaded: %s", ", ".join(self._paths))
        return True


class ServerTLS:
    """The client port's (or metrics listener's) TLS policy.

    ``current`` is the context for a new connection; after its handshake, ``admit(conn)`` gives
    the :class:`VerifiedPeer` or raises :class:`PeerError` (revoked certificate); register the
    connection with ``live.track(peer, close)`` for its lifetime; call ``check()`` about once a
    second (reloads files, closes connections of newly revoked certificates, reports an expired
    CRL every minute).
    """

    def __init__(self, files: TLSFiles, builder: Callable[[TLSFiles], ssl.SSLContext] = server_context) -> None:
        self.files = files
        self._contexts = ReloadingContext(files, builder)
        self.crl = crl_watcher(files)
        self.live = LiveConnections()

    @property
    def current(self) -> ssl.SSLContext:
        return self._contexts.current

    @property
    def reloads(self) -> int:
        return self._contexts.reloads

    @property
    def revocations(self) -> RevocationList | None:
        return self.crl.current if self.crl is not None else None

    def check(self) -> bool:
        changed = self._contexts.check()
        if self.crl is not None:
            new = self.crl.check()
            if new is not None:
                self.live.close_revoked(new)
                changed = True
        return changed

    def admit(self, conn: Any, remote: str = "") -> VerifiedPeer:
        """The verified remote of a handshaken connection; PeerError if a CRL revokes its chain."""
        peer = verified_peer(conn, remote)
        revocations = self.revocations
        if revocations is not None and peer.chain:
            cert = revocations.revoked_certificate(peer.chain)
            if cert is not None:
                raise PeerError(f"{peer.describe()}: certificate serial {cert.serial_number:x} is revoked")
        return peer
