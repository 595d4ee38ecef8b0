"""Load PEM certificates and check that a chain leads to a trusted anchor.

``verify_chain`` is the structural check ``pki check`` and auto-TLS reuse need (signatures,
validity windows, CA flags); the real TLS stacks (OpenSSL, Go) are exercised by the tests.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from securekv.errors import UsageError
from securekv.pki.names import common_name

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def utcnow(now: datetime | None = None) -> datetime:
    """``now`` as an aware UTC datetime (naive values are taken to be UTC), whole seconds."""
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc).replace(microsecond=0)


def load_certs_pem(data: bytes, *, source: str = "input") -> list[x509.Certificate]:
    if PEM_BEGIN not in data:
        raise UsageError(f"{source} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise UsageError(f"{source} holds a malformed certificate ({exc})") from None


def load_cert_chain(path: str | Path) -> list[x509.Certificate]:
    """All certificates in a PEM file, leaf first (cfssl/securekv bundle order)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"certificate file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read certificate file {path}: {exc.strerror}") from None
    return load_certs_pem(data, source=str(path))


def load_cert(path: str | Path) -> x509.Certificate:
    return load_cert_chain(path)[0]


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    now: datetime | None = None,
) -> list[x509.Certificate]:
    """Check that ``chain[0]`` leads through ``chain[1:]`` to one of ``anchors``.

    Returns the path (leaf .. anchor). Raises UsageError with the first reason it fails:
    bad signature, unknown issuer, expired / not yet valid certificate, issuer not a CA.
    """
    if not chain:
        raise UsageError("empty certificate chain")
    moment = utcnow(now)
    pool = list(chain[1:]) + list(anchors)
    path = [chain[0]]
    current = chain[0]
    for _ in range(len(pool) + 1):
        _check_time(current, moment)
        if any(current == anchor for anchor in anchors):
            return path
        issuer = next((c for c in pool if c != current and issued_by(current, c)), None)
        if issuer is None:
            if any(current.issuer == a.subject for a in anchors):
                raise UsageError(f"certificate {_cn(current)} has an issuer name matching the CA but a bad signature (signed by a different key)")
            raise UsageError(f"certificate {_cn(current)} is not signed by the trusted CA (issuer: {current.issuer.rfc4514_string()})")
        if not is_ca(issuer):
            raise UsageError(f"issuer {_cn(issuer)} of {_cn(current)} is not a CA")
        path.append(issuer)
        if any(issuer == anchor for anchor in anchors):
            _check_time(issuer, moment)
            return path
        current = issuer
    raise UsageError("certificate chain loops")


def _check_time(cert: x509.Certificate, moment: datetime) -> None:
    if moment < cert.not_valid_before_utc:
        raise UsageError(f"certificate {_cn(cert)} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}")
    if moment > cert.not_valid_after_utc:
        raise UsageError(f"certificate {_cn(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")


def _cn(cert: x509.Certificate) -> str:
    cn = common_name(cert.subject)
    return repr(cn) if cn else f"serial {cert.serial_number:x}"
