"""Who is on the other end of a TLS connection: the verified chain and the names it carries.

* ``VerifiedPeer``: the chain OpenSSL verified (leaf first), read from the SSL object after the
  handshake; its CN (the RBAC user on the client port) and its member name (peer port).
* Member names live in a peer certificate twice: the CN and a URI SAN
  ``securekv://member/<percent-encoded name>`` (what ``securekv pki issue peer NAME`` writes).
  The URI SAN wins when present, so a CN can stay free for other conventions.
* ``allowed_cn`` / ``allowed_hostname`` are etcd's ``--peer-cert-allowed-cn`` /
  ``--peer-cert-allowed-hostname``: an exact CN match, or Go's ``Certificate.VerifyHostname``
  (IP literals against IP SANs only; DNS SANs case-insensitively, trailing dots ignored, ``*``
  only as the whole leftmost label matching one label; no CN fallback).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, unquote

import attrs
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MEMBER_URI_PREFIX = "securekv://member/"


def member_uri(name: str) -> str:
    """The URI SAN naming a cluster member in its peer certificate."""
    return MEMBER_URI_PREFIX + quote(name, safe="")


@attrs.frozen
class VerifiedPeer:
    """The remote's verified certificate chain (leaf first; empty: no certificate) and address."""

    chain: tuple[x509.Certificate, ...] = ()
    remote: str = ""

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @property
    def common_name(self) -> str:
        leaf = self.leaf
        if leaf is None:
            return ""
        values = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(values[0].value) if values else ""

    @property
    def member_name(self) -> str | None:
        """The member this certificate names: its ``securekv://member/`` URI SAN, else its CN."""
        leaf = self.leaf
        if leaf is None:
            return None
        sans = _sans(leaf)
        if sans is not None:
            for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
                if uri.startswith(MEMBER_URI_PREFIX) and len(uri) > len(MEMBER_URI_PREFIX):
                    return unquote(uri[len(MEMBER_URI_PREFIX):])
        return self.common_name or None

    def describe(self) -> str:
        leaf = self.leaf
        if leaf is None:
            return "no certificate"
        return f"certificate CN {self.common_name!r} (serial {leaf.serial_number:x})"

    def has_peer_usages(self) -> bool:
        """Both server auth and client auth in the leaf's extended key usage (the peer profile)."""
        leaf = self.leaf
        if leaf is None:
            return False
        try:
            eku = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            return False
        return ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def ssl_object(conn: Any) -> Any:
    """The ``ssl.SSLObject``/``SSLSocket`` behind ``conn``: the client port's ``TLSStream``
    shows it, a trio ``SSLStream`` keeps it private."""
    obj = getattr(conn, "ssl_object", None)
    if obj is not None:
        return obj
    return getattr(conn, "_ssl_object", conn)


def verified_chain(conn: Any) -> tuple[x509.Certificate, ...]:
    """The chain OpenSSL verified for the remote (leaf first), or just the leaf, or ()."""
    obj = ssl_object(conn)
    ders: list[bytes] = []
    public = getattr(obj, "get_verified_chain", None)  # Python >= 3.13: DER bytes
    try:
        if public is not None:
            ders = [bytes(d) for d in (public() or [])]
        elif getattr(obj, "_sslobj", None) is not None and hasattr(obj._sslobj, "get_verified_chain"):
            import _ssl  # the same C method 3.13 made public; present since 3.10

            ders = [c.public_bytes(_ssl.ENCODING_DER) for c in (obj._sslobj.get_verified_chain() or [])]
    except (ssl.SSLError, ValueError):
        ders = []
    if not ders:
        leaf = obj.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return tuple(x509.load_der_x509_certificate(d) for d in ders)


def verified_peer(conn: Any, remote: str = "") -> VerifiedPeer:
    return VerifiedPeer(verified_chain(conn), remote)


def cn_matches(cert: x509.Certificate, allowed_cn: str) -> bool:
    """etcd's AllowedCN: the subject CN equals it exactly."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return bool(values) and str(values[0].value) == allowed_cn


def hostname_matches(cert: x509.Certificate, host: str) -> bool:
    """Go's ``x509.Certificate.VerifyHostname`` (what etcd's AllowedHostname calls)."""
    sans = _sans(cert)
    candidate = host[1:-1] if len(host) >= 3 and host[0] == "[" and host[-1] == "]" else host
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        ip = None
    if ip is not None:
        if sans is None:
            return False
        return any(_ip_equal(ip, other) for other in sans.get_values_for_type(x509.IPAddress))
    if sans is None:
        return False
    name = host.lower()
    valid = _valid_hostname_input(name)
    for pattern in sans.get_values_for_type(x509.DNSName):
        if valid and _valid_hostname_pattern(pattern):
            if _match_hostnames(pattern.lower(), name):
                return True
        elif _match_exactly(pattern, name):
            return True
    return False


def _ip_equal(a: ipaddress.IPv4Address | ipaddress.IPv6Address, b: Any) -> bool:
    def norm(x: Any) -> Any:
        if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
            return x.ipv4_mapped
        return x

    return bool(norm(a) == norm(b))


def _valid_hostname(host: str, pattern: bool) -> bool:
    if not pattern:
        host = host[:-1] if host.endswith(".") else host
    if not host:
        return False
    for i, part in enumerate(host.split(".")):
        if not part:
            return False
        if pattern and i == 0 and part == "*":
            continue
        for j, c in enumerate(part):
            if c.isascii() and c.isalnum():
                continue
            if c == "-" and j != 0:
                continue
            if c == "_":
                continue
            return False
    return True


def _valid_hostname_input(host: str) -> bool:
    return _valid_hostname(host, pattern=False)


def _valid_hostname_pattern(host: str) -> bool:
    return _valid_hostname(host, pattern=True)


def _match_exactly(a: str, b: str) -> bool:
    if a in ("", ".") or b in ("", "."):
        return False
    return a.lower() == b.lower()


def _match_hostnames(pattern: str, host: str) -> bool:
    pattern = pattern.lower()
    host = host[:-1].lower() if host.endswith(".") else host.lower()
    if not pattern or not host:
        return False
    p_parts, h_parts = pattern.split("."), host.split(".")
    if len(p_parts) != len(h_parts):
        return False
    for i, (p, h) in enumerate(zip(p_parts, h_parts)):
        if i == 0 and p == "*":
            continue
        if p != h:
            return False
    return True


def client_san_refusal(cert: x509.Certificate, remote_host: str, *,
                       reverse: Callable[[str], Any] = socket.gethostbyaddr,
                       forward: Callable[..., Any] = socket.getaddrinfo) -> str:
    """etcd's peer-listener check (``checkCertSAN``, skipped by
    ``--experimental-peer-skip-client-san-verification``): a client certificate with SANs must
    cover the address it connects from — by an IP SAN, or by a DNS SAN that the address
    reverse-resolves to or that forward-resolves to the address. "" = it does (or has no SANs).

    Blocking (DNS lookups): call it from a worker thread.
    """
    sans = _sans(cert)
    if sans is None:
        return ""
    ips = sans.get_values_for_type(x509.IPAddress)
    names = sans.get_values_for_type(x509.DNSName)
    if not ips and not names:
        return ""
    if ips:
        if hostname_matches(cert, remote_host):
            return ""
        if not names:
            return (f"tls: the certificate is valid for {', '.join(str(ip) for ip in ips)}, not for {remote_host}, "
                    "the address the connection comes from")
    if _host_in_dns(remote_host, names, reverse, forward):
        return ""
    return f'tls: "{remote_host}" does not match any of DNSNames {names}'


def _host_in_dns(host: str, names: list[str], reverse: Callable[[str], Any], forward: Callable[..., Any]) -> bool:
    wildcards = [n[1:] for n in names if n.startswith("*.")]
    exact = [n for n in names if not n.startswith("*.")]
    try:
        primary, aliases, _ = reverse(host)
        for name in [primary, *aliases]:
            name = name[:-1] if name.endswith(".") else name
            if any(name.endswith(w) for w in wildcards) or name in exact:
                return True
    except OSError:
        pass
    for name in exact:
        try:
            infos = forward(name, None)
        except OSError:
            continue
        if any(info[4][0] == host for info in infos):
            return True
    return False


def binding_refusal(cert_name: str | None, claimed: int, names: Mapping[int, str]) -> str:
    """Why a certificate naming ``cert_name`` may not speak for member ``claimed`` ("" = it may).

    ``names`` is the applied membership (member ID -> name, "" for a member added but not yet
    started, whose name is published when it first joins). A named member must present its own
    name. An unnamed one accepts any certificate that does not name another member, so an
    existing member can never claim a newcomer's ID. Texts carry names, never IDs.
    """
    if not cert_name:
        return "the certificate names no member (neither a securekv://member/ URI SAN nor a CN)"
    want = names.get(claimed, "")
    if want:
        if cert_name == want:
            return ""
        return f"the certificate is for member {cert_name!r}, not for the member the connection claims to be"
    others = {n for mid, n in names.items() if n and mid != claimed}
    if cert_name in others:
        return f"the certificate is for member {cert_name!r}, not for the member the connection claims to be"
    return ""


def known_member(cert_name: str | None, names: Iterable[str]) -> bool:
    return bool(cert_name) and cert_name in set(names)
