"""TLS for the peer port: both directions are mutual TLS against the peer CA.

Contexts come from ``--peer-*`` files and are rebuilt when the files change (the client port's
:class:`~securekv.server.tls.ReloadingContext`, with peer-specific builders so errors name the
``--peer-*`` flags). ``allowed_cn`` / ``allowed_hostname`` (etcd's ``--peer-cert-allowed-cn`` /
``--peer-cert-allowed-hostname``) are checked on the remote certificate after the handshake, in
both directions, as etcd does.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID

from securekv.errors import PeerError, UsageError
from securekv.server.tls import TLS12_CIPHERS, ReloadingContext, TLSFiles, cipher_string

log = logging.getLogger(__name__)

ALPN = ["securekv-peer/1"]


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET


def _load_common(ctx: ssl.SSLContext, files: TLSFiles) -> None:
    if files.cipher_suites:
        ctx.set_ciphers(cipher_string(files.cipher_suites))
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"cannot load --peer-cert-file {files.cert_file} / --peer-key-file {files.key_file}: {exc}") from None
    if files.trusted_ca_file:
        try:
            ctx.load_verify_locations(cafile=files.trusted_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load --peer-trusted-ca-file {files.trusted_ca_file}: {exc}") from None
    if files.crl_file:
        try:
            with open(files.crl_file, "rb") as fh:
                data = fh.read()
            if b"-----BEGIN X509 CRL-----" not in data:
                raise UsageError(f"--peer-crl-file {files.crl_file} is not a PEM CRL")
            ctx.load_verify_locations(cafile=files.crl_file)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load --peer-crl-file {files.crl_file}: {exc}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.set_alpn_protocols(ALPN)


def peer_server_context(files: TLSFiles) -> ssl.SSLContext:
    """Listening side: requires a client certificate chaining to the peer CA (client_cert_auth)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    _load_common(ctx, files)
    if files.client_cert_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif files.trusted_ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def peer_client_context(files: TLSFiles) -> ssl.SSLContext:
    """Dialing side: verifies the listener's chain to the peer CA and its SAN against the URL host.

    Without a trusted CA (``--peer-auto-tls``: every member self-signs) there is nothing to verify
    against, so the link is encrypted but not authenticated, as with etcd.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    _load_common(ctx, files)
    if not files.trusted_ca_file:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class PeerTLS:
    """Server and client contexts for peer connections plus the remote-identity policy."""

    def __init__(self, server: ReloadingContext | ssl.SSLContext, client: ReloadingContext | ssl.SSLContext,
                 allowed_cn: str | None = None, allowed_hostname: str | None = None) -> None:
        self._server = server
        self._client = client
        self.allowed_cn = allowed_cn or None
        self.allowed_hostname = allowed_hostname or None

    @classmethod
    def from_files(cls, cert_file: str, key_file: str, trusted_ca_file: str | None, crl_file: str | None = None,
                   client_cert_auth: bool = True, allowed_cn: str | None = None,
                   allowed_hostname: str | None = None, cipher_suites: tuple[str, ...] = ()) -> PeerTLS:
        """Build (and later hot-reload) contexts from ``--peer-*`` files; UsageError names a bad file."""
        if client_cert_auth and not trusted_ca_file:
            raise UsageError("--peer-client-cert-auth needs --peer-trusted-ca-file")
        if (allowed_cn or allowed_hostname) and not trusted_ca_file:
            raise UsageError("--peer-cert-allowed-cn/--peer-cert-allowed-hostname need --peer-trusted-ca-file")
        files = TLSFiles(str(cert_file), str(key_file), str(trusted_ca_file or ""), str(crl_file or ""),
                         client_cert_auth, tuple(cipher_suites))
        if not trusted_ca_file:
            log.warning("peer TLS without --peer-trusted-ca-file: peer connections are encrypted "
                        "but members are not authenticated")
        return cls(ReloadingContext(files, peer_server_context), ReloadingContext(files, peer_client_context),
                   allowed_cn, allowed_hostname)

    @classmethod
    def from_contexts(cls, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, allowed_cn: str | None = None,
                      allowed_hostname: str | None = None) -> PeerTLS:
        """Fixed, caller-built contexts (never reloaded)."""
        return cls(server_ctx, client_ctx, allowed_cn, allowed_hostname)

    def maybe_reload(self) -> None:
        """Pick up changed certificate/CA/CRL files for the next connections (cheap: a few stats)."""
        for rc in (self._server, self._client):
            if isinstance(rc, ReloadingContext):
                rc.check()

    @property
    def server_context(self) -> ssl.SSLContext:
        return self._server.current if isinstance(self._server, ReloadingContext) else self._server

    @property
    def client_context(self) -> ssl.SSLContext:
        return self._client.current if isinstance(self._client, ReloadingContext) else self._client

    def check_remote(self, der: bytes | None) -> str:
        """Enforce allowed_cn / allowed_hostname on the remote certificate; returns its CN.

        Raises PeerError with the reason. ``der`` is ``SSLObject.getpeercert(binary_form=True)``.
        """
        if der is None:
            if self.allowed_cn or self.allowed_hostname:
                raise PeerError("remote presented no certificate")
            return ""
        cert = x509.load_der_x509_certificate(der)
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        cn = str(cns[0]) if cns else ""
        if self.allowed_cn is not None and self.allowed_cn not in cns:
            raise PeerError(f"certificate CN {cn!r} is not the allowed CN {self.allowed_cn!r}")
        if self.allowed_hostname is not None and not _san_matches(cert, self.allowed_hostname):
            raise PeerError(f"certificate (CN {cn!r}) has no SAN matching the allowed hostname "
                            f"{self.allowed_hostname!r}")
        return cn


def _san_matches(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return ip in san.get_values_for_type(x509.IPAddress)
    want = host.lower().rstrip(".")
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == want:
            return True
        if name.startswith("*.") and "." in want and want.split(".", 1)[1] == name[2:]:
            return True
    return False
