"""cfssl's usage names (as written in ``ca-config.json`` profiles) mapped to X.509 extensions."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from securekv.errors import UsageError

# name -> KeyUsage constructor argument
KEY_USAGE_NAMES = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "key encipherment": "key_encipherment",
    "data encipherment": "data_encipherment",
    "key agreement": "key_agreement",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}

EXT_USAGE_NAMES = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft sgc": ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape sgc": ObjectIdentifier("2.16.840.1.113730.4.1"),
}

_EXT_NAME_BY_OID = {
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "any",
    ExtendedKeyUsageOID.SERVER_AUTH: "server auth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "client auth",
    ExtendedKeyUsageOID.CODE_SIGNING: "code signing",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "email protection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timestamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "ocsp signing",
}

_KU_FIELDS = (
    ("digital_signature", "digital signature"),
    ("content_commitment", "content commitment"),
    ("key_encipherment", "key encipherment"),
    ("data_encipherment", "data encipherment"),
    ("key_agreement", "key agreement"),
    ("key_cert_sign", "cert sign"),
    ("crl_sign", "crl sign"),
)


def validate_usages(usages: list[str], *, source: str) -> tuple[str, ...]:
    out = []
    for raw in usages:
        if not isinstance(raw, str):
            raise UsageError(f"{source}: usage {raw!r} is not a string")
        name = raw.strip().lower()
        if name not in KEY_USAGE_NAMES and name not in EXT_USAGE_NAMES:
            raise UsageError(f"{source}: unknown usage {raw!r}")
        if name not in out:
            out.append(name)
    return tuple(out)


def build_key_usage(usages: tuple[str, ...]) -> x509.KeyUsage | None:
    flags = {field: False for field in set(KEY_USAGE_NAMES.values())}
    any_set = False
    for name in usages:
        field = KEY_USAGE_NAMES.get(name)
        if field:
            flags[field] = True
            any_set = True
    if not any_set:
        return None
    if not flags["key_agreement"]:
        flags["encipher_only"] = flags["decipher_only"] = False
    return x509.KeyUsage(**flags)


def build_ext_key_usage(usages: tuple[str, ...]) -> x509.ExtendedKeyUsage | None:
    oids = []
    for name in usages:
        oid = EXT_USAGE_NAMES.get(name)
        if oid is not None and oid not in oids:
            oids.append(oid)
    return x509.ExtendedKeyUsage(oids) if oids else None


def key_usage_names(ku: x509.KeyUsage) -> list[str]:
    names = [label for field, label in _KU_FIELDS if getattr(ku, field)]
    if ku.key_agreement:
        if ku.encipher_only:
            names.append("encipher only")
        if ku.decipher_only:
            names.append("decipher only")
    return names


def ext_key_usage_names(eku: x509.ExtendedKeyUsage) -> list[str]:
    names = []
    for oid in eku:
        name = _EXT_NAME_BY_OID.get(oid)
        if name is None:
            name = next((n for n, o in EXT_USAGE_NAMES.items() if o == oid), oid.dotted_string)
        names.append(name)
    return names
