"""etcd's ``--auto-tls`` / ``--peer-auto-tls`` building block: a self-signed certificate for a
node's advertised hosts, made once under a data dir and reused while it still fits.

Unlike etcd 3.4 (which reuses whatever cert.pem it finds), a stored certificate is reused only
while it is valid, its key matches, and its SANs still cover every host; otherwise it is
replaced atomically.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from securekv.errors import UsageError
from securekv.fsutil import fsync_dir
from securekv.pki import keys
from securekv.pki.ca import BACKDATE, pem
from securekv.pki.files import check_targets, write_files
from securekv.pki.names import cert_sans, parse_hosts, sans_cover, split_host_port
from securekv.pki.verify import utcnow

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


@attrs.frozen
class AutoTLS:
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    created: bool
    reason: str  # why it was (re)made, or "reused"


def ensure_self_signed(
    dir: str | os.PathLike,
    hosts: Iterable[str],
    validity_years: int = 1,
    now: datetime | None = None,
    *,
    min_remaining: timedelta = timedelta(0),
) -> AutoTLS:
    """Make or reuse ``dir/cert.pem`` + ``dir/key.pem`` (0600) covering ``hosts``.

    ``hosts`` may be bare hosts, ``host:port`` or URLs (ports and schemes are dropped).
    Usages: serverAuth + clientAuth, so the same pair serves peer links in both directions.
    """
    if not isinstance(validity_years, int) or validity_years < 1:
        raise UsageError(f"invalid self-signed certificate validity {validity_years!r}: must be a whole number of years >= 1")
    names = [split_host_port(h.strip()) for h in hosts if h and h.strip()]
    if not names:
        raise UsageError("auto TLS needs at least one advertised host")
    sans = parse_hosts(names)
    directory = Path(dir)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    moment = utcnow(now)
    check_targets((cert_path, key_path))
    reason = _reuse_problem(cert_path, key_path, names, moment, min_remaining)
    if reason is None:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return AutoTLS(cert_path, key_path, cert, False, "reused")
    key = keys.generate_key(keys.key_spec("ecdsa", 256))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securekv"),
                         x509.NameAttribute(NameOID.COMMON_NAME, (sans.dns or [str(sans.ips[0])])[0] if sans.dns or sans.ips else "securekv")])
    not_before = moment - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=365 * validity_years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans.general_names()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, keys.signing_hash(key))
    )
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        fsync_dir(directory.parent)
    write_files([(cert_path, pem(cert), 0o644), (key_path, keys.key_to_pem(key), 0o600)])
    return AutoTLS(cert_path, key_path, cert, True, reason)


def _reuse_problem(cert_path: Path, key_path: Path, hosts: list[str], moment: datetime,
                   min_remaining: timedelta) -> str | None:
    if not cert_path.exists() or not key_path.exists():
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = keys.load_private_key(key_path)
    except (ValueError, UsageError):
        return "stored certificate or key unreadable"
    if not keys.same_public_key(key, cert.public_key()):
        return "stored key does not match certificate"
    if moment < cert.not_valid_before_utc or moment + min_remaining >= cert.not_valid_after_utc:
        return "stored certificate expired or not yet valid"
    sans = cert_sans(cert)
    missing = [h for h in hosts if not sans_cover(sans, h)]
    if missing:
        return f"stored certificate does not cover {', '.join(missing)}"
    return None
