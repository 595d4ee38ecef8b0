"""Subject names and subject-alternative names, validated before anything is signed.

The most common TLS failure in the field is a SAN that misses an address, so hosts are parsed
strictly: IPv4/IPv6 literals become IP SANs, ``scheme://...`` becomes a URI SAN, everything
else must be a valid DNS name (letters, digits, hyphens; ``*`` only as the whole leftmost label).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from securekv.errors import UsageError

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class SANs:
    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    uris: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dns or self.ips or self.uris)

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        names += [x509.IPAddress(ip) for ip in self.ips]
        names += [x509.UniformResourceIdentifier(u) for u in self.uris]
        return names

    def as_strings(self) -> list[str]:
        return list(self.dns) + [str(ip) for ip in self.ips] + list(self.uris)


def validate_dns_name(name: str) -> str:
    """Return ``name`` lower-cased if it is a valid DNS SAN, else raise UsageError."""
    if not name or len(name) > 253:
        raise UsageError(f"malformed host {name!r}: a DNS name must be 1-253 characters")
    labels = name.split(".")
    for index, label in enumerate(labels):
        if label == "*":
            if index != 0:
                raise UsageError(f"malformed host {name!r}: a wildcard is allowed only as the leftmost label")
            if len(labels) < 3:
                raise UsageError(f"malformed host {name!r}: a wildcard needs at least two labels after it")
            continue
        if not _LABEL.match(label):
            if "*" in label:
                raise UsageError(f"malformed host {name!r}: a wildcard must be a whole label ('*.example.com')")
            raise UsageError(
                f"malformed host {name!r}: label {label!r} must be 1-63 letters, digits or hyphens, not starting or ending with a hyphen"
            )
    if labels[-1].isdigit():
        raise UsageError(f"malformed host {name!r}: not an IP address and not a DNS name (all-numeric last label)")
    return name.lower()


def parse_ip(text: str) -> IPAddress | None:
    candidate = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


def parse_uri(text: str) -> str:
    parts = urlsplit(text)
    if not parts.scheme or not (parts.netloc or parts.path) or any(c.isspace() for c in text):
        raise UsageError(f"malformed URI {text!r}: expected scheme://authority/path")
    return text


def parse_hosts(hosts: Iterable[str], uris: Iterable[str] = ()) -> SANs:
    """Split operator-given hosts into DNS/IP/URI SANs (deduplicated, order kept)."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    out_uris: list[str] = []
    for raw in hosts:
        if not isinstance(raw, str):
            raise UsageError(f"malformed host {raw!r}: not a string")
        host = raw.strip()
        if not host:
            raise UsageError("malformed host '': empty host name (check for a stray comma)")
        ip = parse_ip(host)
        if ip is not None:
            if ip not in ips:
                ips.append(ip)
        elif "://" in host:
            uri = parse_uri(host)
            if uri not in out_uris:
                out_uris.append(uri)
        else:
            name = validate_dns_name(host)
            if name not in dns:
                dns.append(name)
    for raw in uris:
        uri = parse_uri(raw.strip())
        if uri not in out_uris:
            out_uris.append(uri)
    return SANs(tuple(dns), tuple(ips), tuple(out_uris))


def split_host_port(text: str) -> str:
    """``host:port`` / ``[v6]:port`` / bare host -> host (for advertised URLs/addresses)."""
    if "://" in text:
        text = urlsplit(text).netloc or text
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.split(":", 1)[0]
    return text


def split_csv(values: Iterable[str]) -> list[str]:
    """``--hosts a,b --hosts c`` -> [a, b, c] (empty items kept so they can be reported)."""
    out: list[str] = []
    for value in values:
        out.extend(value.split(","))
    return out


@attrs.frozen
class NameEntry:
    """One element of cfssl's CSR ``names`` list."""

    C: str = ""
    ST: str = ""
    L: str = ""
    O: str = ""  # noqa: E741 - cfssl's field name
    OU: str = ""


_ORDER = (("C", NameOID.COUNTRY_NAME), ("ST", NameOID.STATE_OR_PROVINCE_NAME), ("L", NameOID.LOCALITY_NAME),
          ("O", NameOID.ORGANIZATION_NAME), ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME))


def build_subject(cn: str | None, names: Iterable[NameEntry] = ()) -> x509.Name:
    """Subject in the attribute order cfssl (Go's pkix) emits: C, ST, L, O, OU, CN."""
    entries = list(names)
    attrs_out = []
    for field, oid in _ORDER:
        for entry in entries:
            value = getattr(entry, field)
            if value:
                if field == "C" and len(value) != 2:
                    raise UsageError(f"invalid country {value!r} in names: C must be a two-letter code")
                attrs_out.append(x509.NameAttribute(oid, value))
    if cn:
        if len(cn) > 64:
            raise UsageError(f"common name {cn[:20]!r}... is longer than 64 characters")
        attrs_out.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs_out)


def common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def cert_sans(cert: x509.Certificate) -> SANs:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SANs()
    return SANs(
        tuple(ext.get_values_for_type(x509.DNSName)),
        tuple(ext.get_values_for_type(x509.IPAddress)),
        tuple(ext.get_values_for_type(x509.UniformResourceIdentifier)),
    )


def sans_cover(sans: SANs, host: str) -> bool:
    """Would a TLS client connecting to ``host`` accept these SANs (RFC 6125 wildcard rules)?"""
    ip = parse_ip(host)
    if ip is not None:
        return ip in sans.ips
    host = host.lower().rstrip(".")
    for name in sans.dns:
        name = name.lower()
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False
