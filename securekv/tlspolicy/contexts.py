"""Hardened ``ssl.SSLContext``s for every securekv listener and dialer.

One place decides protocol versions, cipher suites and options, so the client port, the peer
port and the PKI's test helpers cannot drift apart. Revocation is *not* loaded into OpenSSL
(``VERIFY_CRL_CHECK_*``): OpenSSL would also trust a CA certificate hidden in the CRL file and
would lock every client out the moment the CRL expires. securekv parses and enforces CRLs itself
(:mod:`securekv.tlspolicy.crl`), after the handshake, on the verified chain.
"""

from __future__ import annotations

import os
import ssl
from typing import Sequence

import attrs

from securekv.errors import UsageError
from securekv.tlspolicy.ciphers import DEFAULT as TLS12_CIPHERS, cipher_string  # noqa: F401 (TLS12_CIPHERS: API)

# TLS 1.2 suites allowed: forward-secret AEAD only (TLS 1.3 suites are all AEAD already);
# --cipher-suites narrows them (tlspolicy/ciphers.py maps etcd's Go names).
# Client port: HTTP/1.1 first. A client that offers both (curl, browsers, requests) is not a gRPC
# client (gRPC offers h2 only), and HTTP/1.1 is where /health, /version, /metrics and the JSON
# gateway are served; gRPC clients still get h2.
CLIENT_ALPN = ("http/1.1", "h2")
PEER_ALPN = ("securekv-peer/1",)

_FLAGS = {
    "client": ("--cert-file", "--key-file", "--trusted-ca-file", "--client-crl-file"),
    "peer": ("--peer-cert-file", "--peer-key-file", "--peer-trusted-ca-file", "--peer-crl-file"),
    "metrics": ("--cert-file", "--key-file", "--trusted-ca-file", "--client-crl-file"),
}


@attrs.frozen
class TLSFiles:
    """The PEM files of one TLS endpoint, as the operator named them.

    ``client_cert_auth``: the listening side requires a certificate chaining to
    ``trusted_ca_file`` (securekv's default on every port; turning it off is an explicit,
    logged opt-out). ``role`` ("client" or "peer") only chooses the flag names in errors.
    """

    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    crl_file: str = ""
    client_cert_auth: bool = True
    role: str = "client"
    cipher_suites: tuple[str, ...] = ()  # --cipher-suites (Go names); () = TLS12_CIPHERS
    # A member with a signing CA lets a connection without a certificate finish its handshake,
    # for the join endpoints only (server/listener.py refuses it everything else).
    anonymous_join: bool = False

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.trusted_ca_file, self.crl_file) if p)

    def flag(self, index: int) -> str:
        """0 cert, 1 key, 2 trusted CA, 3 CRL: the option naming that file."""
        return _FLAGS.get(self.role, _FLAGS["client"])[index]


def harden(ctx: ssl.SSLContext, cipher_suites: Sequence[str] = ()) -> None:
    """TLS 1.2+, AEAD forward-secret suites, no compression, renegotiation or session tickets."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.set_ciphers(cipher_string(cipher_suites))
    except (ValueError, ssl.SSLError) as exc:
        raise UsageError(f"--cipher-suites: {exc}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET | ssl.OP_SINGLE_ECDH_USE


def _load_identity(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load {files.flag(0)} {files.cert_file} / {files.flag(1)} {files.key_file}: "
                         f"{exc}") from None


def _load_trust(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    try:
        ctx.load_verify_locations(cafile=files.trusted_ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load {files.flag(2)} {files.trusted_ca_file}: {exc}") from None


def server_context(files: TLSFiles, alpn: Sequence[str] = CLIENT_ALPN) -> ssl.SSLContext:
    """Listening side: present cert/key; require (or, opted out, verify if presented) client certs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    harden(ctx, files.cipher_suites)
    _load_identity(ctx, files)
    if files.trusted_ca_file:
        _load_trust(ctx, files)
    if files.client_cert_auth:
        if not files.trusted_ca_file:
            raise UsageError(f"client certificates are required but {files.flag(2)} is not set")
        # CERT_OPTIONAL still verifies a certificate that is presented; the listener serves a
        # connection without one nothing but the join endpoints (docs/security.md).
        ctx.verify_mode = ssl.CERT_OPTIONAL if files.anonymous_join else ssl.CERT_REQUIRED
    elif files.trusted_ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def peer_server_context(files: TLSFiles) -> ssl.SSLContext:
    return server_context(files, PEER_ALPN)


def peer_client_context(files: TLSFiles) -> ssl.SSLContext:
    """Dialing side: verify the listener's chain to the CA and its SAN against the URL host.

    Without a CA (``--peer-auto-tls`` with the explicit insecure opt-out) there is nothing to
    verify against: encrypted, not authenticated.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx, files.cipher_suites)
    _load_identity(ctx, files)
    if files.trusted_ca_file:
        _load_trust(ctx, files)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(PEER_ALPN))
    return ctx


def simple_server_context(cert: str | os.PathLike, key: str | os.PathLike, ca: str | os.PathLike | None, *,
                          require_client_cert: bool = True) -> ssl.SSLContext:
    """The PKI helper's server context (tests, embedders): same hardening, no ALPN."""
    files = TLSFiles(os.fspath(cert), os.fspath(key), os.fspath(ca) if ca is not None else "",
                     client_cert_auth=require_client_cert and ca is not None)
    return server_context(files, alpn=())


def simple_client_context(ca: str | os.PathLike, cert: str | os.PathLike | None = None,
                          key: str | os.PathLike | None = None, *, check_hostname: bool = True) -> ssl.SSLContext:
    """The PKI helper's client context: trust ``ca``; present cert/key when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    ctx.load_verify_locations(cafile=os.fspath(ca))
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return ctx
