"""Join tokens as the operator handles them: kubeadm's shape plus the pinned CA.

A token is ``<id>.<secret>`` (6 and 16 characters of [a-z0-9], as ``kubeadm token create``
prints): the id names it in ``token list``/``revoke`` and in the audit log; the secret
authenticates the joiner and is never stored (the cluster keeps its SHA-256). The joiner also
needs the CA to trust before it sends anything: ``sha256:<hex>``, the SHA-256 of the CA
certificate's SubjectPublicKeyInfo (kubeadm's ``--discovery-token-ca-cert-hash``). Both travel
together as ``<id>.<secret>@sha256:<hex>``, or apart (``--token`` and ``--ca-cert-hash``).
"""

from __future__ import annotations

import hashlib
import re
import secrets

import attrs
from cryptography import x509

from securekv.errors import UsageError

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})(?:@(sha256:[0-9a-f]{64}))?$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


@attrs.frozen
class JoinToken:
    id: str
    secret: str = attrs.field(repr=False)  # never logged
    ca_cert_hash: str = ""

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}" + (f"@{self.ca_cert_hash}" if self.ca_cert_hash else "")

    @property
    def secret_hash(self) -> bytes:
        return secret_hash(self.secret)


def new_token(ca_cert_hash: str = "") -> JoinToken:
    return JoinToken("".join(secrets.choice(_ALPHABET) for _ in range(6)),
                     "".join(secrets.choice(_ALPHABET) for _ in range(16)), ca_cert_hash)


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(text: str, ca_cert_hash: str = "") -> JoinToken:
    """``id.secret[@sha256:hex]``; ``ca_cert_hash`` (``--ca-cert-hash``) wins over the embedded one."""
    m = _TOKEN.match((text or "").strip())
    if m is None:
        raise UsageError("--token must look like abcdef.0123456789abcdef[@sha256:<64 hex digits>] "
                         "(what `securekv cluster token create` printed)")
    pinned = (ca_cert_hash or m.group(3) or "").strip().lower()
    if not pinned:
        raise UsageError("the CA to trust is missing: give --ca-cert-hash sha256:<hex> or the token with "
                         "@sha256:<hex> (joining without pinning the CA would send the token to anyone)")
    if not _HASH.match(pinned):
        raise UsageError(f"--ca-cert-hash {pinned!r} must be sha256: followed by 64 hex digits")
    return JoinToken(m.group(1), m.group(2), pinned)


def spki_hash(cert: x509.Certificate) -> str:
    """kubeadm's CA pin, ``sha256:<hex>`` of the SubjectPublicKeyInfo: the same fingerprint a
    planned bundle records (``securekv.cluster.bundle.ca_fingerprint``)."""
    from securekv.cluster.bundle import ca_fingerprint

    return ca_fingerprint(cert)


__all__ = ["JoinToken", "new_token", "parse_token", "secret_hash", "spki_hash"]
