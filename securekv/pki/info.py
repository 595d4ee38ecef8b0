"""Describe a certificate from any tool (securekv, cfssl, openssl) as a dict or text."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from securekv.errors import UsageError
from securekv.pki.keys import describe_key
from securekv.pki.names import cert_sans
from securekv.pki.usages import ext_key_usage_names, key_usage_names
from securekv.pki.verify import PEM_BEGIN, is_ca, load_cert_chain, utcnow


def colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _ext(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def cert_info(cert: x509.Certificate, *, now: datetime | None = None) -> dict:
    sans = cert_sans(cert)
    ku = _ext(cert, x509.KeyUsage)
    eku = _ext(cert, x509.ExtendedKeyUsage)
    bc = _ext(cert, x509.BasicConstraints)
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    nc = _ext(cert, x509.NameConstraints)
    sig = cert.signature_algorithm_oid._name if cert.signature_algorithm_oid else "unknown"
    moment = utcnow(now)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": colon_hex(cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8 or 1, "big")),
        "sans": {"dns": list(sans.dns), "ip": [str(ip) for ip in sans.ips], "uri": list(sans.uris)},
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expired": moment > cert.not_valid_after_utc,
        "signature_algorithm": sig,
        "public_key": describe_key(cert.public_key()),
        "key_usage": key_usage_names(ku) if ku else [],
        "extended_key_usage": ext_key_usage_names(eku) if eku else [],
        "is_ca": is_ca(cert),
        "path_len": bc.path_length if bc else None,
        "name_constraints": [str(n.value) for n in (nc.permitted_subtrees or [])] if nc else [],
        "subject_key_id": colon_hex(ski.digest) if ski else None,
        "authority_key_id": colon_hex(aki.key_identifier) if aki and aki.key_identifier else None,
        "sha256_fingerprint": colon_hex(cert.fingerprint(hashes.SHA256())),
    }


def load_any(path: str | Path) -> list[x509.Certificate]:
    """A PEM bundle (leaf first) or one DER certificate (``openssl x509 -outform DER``)."""
    if _looks_pem(path):
        return load_cert_chain(path)
    try:
        return [x509.load_der_x509_certificate(Path(path).read_bytes())]
    except ValueError:
        raise UsageError(f"{path} holds no PEM or DER certificate") from None


def _looks_pem(path: str | Path) -> bool:
    """True unless ``path`` is a readable file without a PEM certificate in it."""
    try:
        return PEM_BEGIN in Path(path).read_bytes()
    except OSError:
        return True  # let load_cert_chain report the missing/unreadable file


def file_info(path: str | Path, *, now: datetime | None = None) -> dict:
    """Info for the first certificate in ``path``; the rest of the bundle under "chain"."""
    certs = load_any(path)
    info = cert_info(certs[0], now=now)
    info["file"] = str(path)
    info["chain"] = [cert_info(c, now=now) for c in certs[1:]]
    return info


def format_info(info: dict) -> str:
    sans = info["sans"]
    san_text = ", ".join([f"DNS:{d}" for d in sans["dns"]] + [f"IP:{i}" for i in sans["ip"]] + [f"URI:{u}" for u in sans["uri"]])
    lines = [
        f"Subject:             {info['subject']}",
        f"Issuer:              {info['issuer']}",
        f"Serial:              {info['serial']}",
        f"SANs:                {san_text or '(none)'}",
        f"Not before:          {info['not_before']}",
        f"Not after:           {info['not_after']}{'  (EXPIRED)' if info['expired'] else ''}",
        f"Signature algorithm: {info['signature_algorithm']}",
        f"Public key:          {info['public_key']}",
        f"Key usage:           {', '.join(info['key_usage']) or '(none)'}",
        f"Extended key usage:  {', '.join(info['extended_key_usage']) or '(none)'}",
        f"CA:                  {_ca_text(info)}",
    ]
    if info["name_constraints"]:
        lines.append(f"Name constraints:    permitted {', '.join(info['name_constraints'])}")
    lines.append(f"SHA-256 fingerprint: {info['sha256_fingerprint']}")
    for index, extra in enumerate(info.get("chain", []), 1):
        lines.append(f"Chain [{index}]:           {extra['subject']} (issuer {extra['issuer']}, not after {extra['not_after']})")
    return "\n".join(lines)


def _ca_text(info: dict) -> str:
    if not info["is_ca"]:
        return "no"
    return "yes" if info["path_len"] is None else f"yes (pathlen {info['path_len']})"
