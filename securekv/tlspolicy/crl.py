"""Certificate revocation lists: parsed with ``cryptography``, verified, enforced by securekv.

Why not OpenSSL's ``load_verify_locations(crl)`` + ``VERIFY_CRL_CHECK_LEAF`` (what this code did
before): that call loads *every* PEM object in the file, so a CA certificate appended to the CRL
file became a trusted CA (a rogue client was admitted); an expired CRL made every handshake fail
(a total lock-out, with no warning); and only the leaf was checked.

Here a CRL file must hold CRLs and nothing else (PEM ``X509 CRL`` blocks, or one DER CRL); each
CRL's signature must verify against a trusted CA certificate that may sign CRLs; revoked
serials are enforced for every certificate of the verified chain (leaf and intermediates), keyed
by (issuer, serial). An expired CRL stays enforced — the last good list is never dropped, so it
is neither an open door nor a lock-out — and :class:`CRLWatcher` logs an error every minute
until a fresh one is published. A reload that fails, or that would go back to a lower CRL
number for an issuer, keeps the list in force and logs why.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import attrs
from cryptography import x509

from securekv.errors import UsageError
from securekv.fsutil import file_stamps

log = logging.getLogger(__name__)

#: How often an expired CRL is reported while it stays in force.
EXPIRED_LOG_EVERY = 60.0

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_BEGIN = re.compile(rb"-----BEGIN ")


@attrs.frozen
class CRLInfo:
    """One CRL of a file, as the metrics and ``pki check`` report it."""

    issuer: str
    number: int | None
    this_update: datetime
    next_update: datetime | None
    revoked: int


@attrs.frozen
class RevocationList:
    """The revocations in force: (issuer name DER, serial) pairs from every CRL of one file."""

    path: str
    revoked: frozenset[tuple[bytes, int]]
    crls: tuple[CRLInfo, ...]
    numbers: tuple[tuple[bytes, int], ...] = ()  # (issuer DER, CRL number) for rollback checks

    @property
    def next_update(self) -> datetime | None:
        """The earliest nextUpdate of the file's CRLs (None: no CRL says when it expires)."""
        times = [c.next_update for c in self.crls if c.next_update is not None]
        return min(times) if times else None

    def expired(self, now: datetime | None = None) -> bool:
        nxt = self.next_update
        return nxt is not None and (now or datetime.now(timezone.utc)) > nxt

    def revoked_certificate(self, chain: Iterable[x509.Certificate]) -> x509.Certificate | None:
        """The first certificate of ``chain`` (leaf first) that a CRL revokes, or None."""
        for cert in chain:
            if (cert.issuer.public_bytes(), cert.serial_number) in self.revoked:
                return cert
        return None


def split_crl_file(data: bytes, source: str) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM (one or more ``X509 CRL`` blocks) or DER file; UsageError on anything else."""
    blocks = list(_BLOCK.finditer(data))
    if len(_BEGIN.findall(data)) != len(blocks):
        raise UsageError(f"{source} has a malformed PEM block (a BEGIN line without its END)")
    if not blocks:
        try:
            return [x509.load_der_x509_crl(data)]
        except ValueError:
            raise UsageError(f"{source} is not a CRL (neither PEM 'X509 CRL' blocks nor a DER CRL)") from None
    crls = []
    for block in blocks:
        label = block.group(1).decode()
        if label != "X509 CRL":
            raise UsageError(f"{source} contains a {label} block: a CRL file must contain only CRLs "
                             "(OpenSSL-based servers would trust a CA certificate hidden there); refusing it")
        try:
            crls.append(x509.load_pem_x509_crl(block.group(0)))
        except ValueError as exc:
            raise UsageError(f"{source} holds a malformed CRL ({exc})") from None
    return crls


def _may_sign_crls(cert: x509.Certificate) -> bool:
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign)
    except x509.ExtensionNotFound:
        return True  # no KeyUsage: any use, as RFC 5280 allows


def build_revocation_list(crls: Sequence[x509.CertificateRevocationList], issuers: Sequence[x509.Certificate],
                          source: str, path: str = "") -> RevocationList:
    """Verify each CRL's signature against ``issuers`` (trusted CA certificates) and merge them."""
    revoked: set[tuple[bytes, int]] = set()
    infos: list[CRLInfo] = []
    numbers: dict[bytes, int] = {}
    for crl in crls:
        name = crl.issuer.rfc4514_string() or "(empty name)"
        candidates = [c for c in issuers if c.subject == crl.issuer]
        if not candidates:
            raise UsageError(f"{source}: the CRL issued by {name!r} is not from a trusted CA "
                             "(its issuer is not in the trusted CA file)")
        signer = next((c for c in candidates if _signature_ok(crl, c)), None)
        if signer is None:
            raise UsageError(f"{source}: the CRL issued by {name!r} has a bad signature (not signed by the "
                             "trusted CA of that name)")
        if not _may_sign_crls(signer):
            raise UsageError(f"{source}: the CRL issuer {name!r} is not allowed to sign CRLs (keyUsage)")
        issuer_der = crl.issuer.public_bytes()
        for entry in crl:
            revoked.add((issuer_der, entry.serial_number))
        number = _crl_number(crl)
        if number is not None:
            numbers[issuer_der] = max(number, numbers.get(issuer_der, number))
        infos.append(CRLInfo(name, number, crl.last_update_utc, crl.next_update_utc, len(crl)))
    return RevocationList(path, frozenset(revoked), tuple(infos), tuple(sorted(numbers.items())))


def _signature_ok(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(cert.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def load_revocation_list(path: str, issuers: Sequence[x509.Certificate], flag: str = "CRL file") -> RevocationList:
    """Read, split, verify and merge the CRL file at ``path``; UsageError names ``flag`` and why."""
    source = f"{flag} {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    return build_revocation_list(split_crl_file(data, source), issuers, source, path)


class CRLWatcher:
    """Holds the revocation list in force for one endpoint and reloads it when its files change.

    ``issuers`` is called at every (re)load, so a changed trusted-CA file is picked up too.
    ``check()`` returns the new list when one was swapped in (the caller closes live connections
    of newly revoked certificates), else None. ``clock`` is a monotonic clock (tests inject one).
    """

    def __init__(self, path: str, issuers: Callable[[], Sequence[x509.Certificate]], watch: Sequence[str] = (),
                 flag: str = "CRL file", clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.flag = flag
        self._issuers = issuers
        self._paths = tuple(dict.fromkeys((path, *watch)))
        self._clock = clock
        self.current = load_revocation_list(path, issuers(), flag)
        self._stamp = file_stamps(self._paths)
        self._bad_stamp: tuple | None = None
        self._expired_logged: float | None = None
        self.reloads = 0
        self.errors = 0
        self._report_expiry()

    def check(self, now: datetime | None = None) -> RevocationList | None:
        changed: RevocationList | None = None
        stamp = file_stamps(self._paths)
        if stamp != self._stamp and stamp != self._bad_stamp:
            try:
                new = load_revocation_list(self.path, self._issuers(), self.flag)
                _check_no_rollback(self.current, new, f"{self.flag} {self.path}")
            except UsageError as exc:
                self._bad_stamp = stamp
                self.errors += 1
                log.error("%s changed but is not usable; keeping the last good revocation list (%d revoked): %s",
                          self.flag, len(self.current.revoked), exc)
            else:
                self.current = new
                self._stamp = stamp
                self._bad_stamp = None
                self.reloads += 1
                self._expired_logged = None
                log.info("%s %s reloaded: %d revoked certificate(s)", self.flag, self.path, len(new.revoked))
                changed = new
        self._report_expiry(now)
        return changed

    def _report_expiry(self, now: datetime | None = None) -> None:
        if not self.current.expired(now):
            return
        tick = self._clock()
        if self._expired_logged is not None and tick - self._expired_logged < EXPIRED_LOG_EVERY:
            return
        self._expired_logged = tick
        log.error("%s %s expired at %s (nextUpdate); its %d revocation(s) stay enforced, but publish a fresh "
                  "CRL (securekv pki crl) so newly revoked certificates are refused too",
                  self.flag, self.path, f"{self.current.next_update:%Y-%m-%d %H:%M:%SZ}",
                  len(self.current.revoked))


def _check_no_rollback(old: RevocationList, new: RevocationList, source: str) -> None:
    before = dict(old.numbers)
    for issuer, number in new.numbers:
        if issuer in before and number < before[issuer]:
            raise UsageError(f"{source} has CRL number {number}, older than the {before[issuer]} in force "
                             "(an old CRL would un-revoke certificates)")
