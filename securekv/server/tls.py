"""Server-side TLS contexts for the client front door, and their hot reload.

Why Python ``ssl`` and not grpcio's SSL credentials: grpcio cannot check a CRL, cannot bound
the handshake time, and does not hand the verified client certificate to a sync handler in a
usable form. Terminating TLS ourselves gives all three (see docs/server.md).
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Callable

import attrs

from securekv.errors import UsageError

log = logging.getLogger(__name__)

# TLS 1.2 suites allowed: forward-secret AEAD only. TLS 1.3 suites are all AEAD already.
# --cipher-suites narrows them (server/ciphers.py maps etcd's Go names).
from securekv.server.ciphers import DEFAULT as TLS12_CIPHERS, cipher_string  # noqa: E402
# HTTP/1.1 first: a client that offers both (curl, browsers, requests) is not a gRPC client
# (gRPC offers h2 only), and HTTP/1.1 is where /health, /version, /metrics and the JSON gateway
# are served; gRPC clients still get h2.
ALPN = ["http/1.1", "h2"]


@attrs.frozen
class TLSFiles:
    cert_file: str
    key_file: str
    trusted_ca_file: str = ""
    crl_file: str = ""
    client_cert_auth: bool = False
    cipher_suites: tuple[str, ...] = ()  # --cipher-suites (Go names); () = TLS12_CIPHERS

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.trusted_ca_file, self.crl_file) if p)


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """Build a hardened server context; raises UsageError naming the bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher_string(files.cipher_suites))
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE
    ctx.options |= ssl.OP_NO_TICKET
    try:
        ctx.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load --cert-file {files.cert_file} / --key-file {files.key_file}: {exc}") from None
    if files.trusted_ca_file:
        try:
            ctx.load_verify_locations(cafile=files.trusted_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load --trusted-ca-file {files.trusted_ca_file}: {exc}") from None
    if files.client_cert_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif files.trusted_ca_file:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if files.crl_file:
        try:
            with open(files.crl_file, "rb") as fh:
                data = fh.read()
            if b"-----BEGIN X509 CRL-----" not in data:
                raise UsageError(f"--client-crl-file {files.crl_file} is not a PEM CRL")
            ctx.load_verify_locations(cafile=files.crl_file)  # cadata= accepts certificates only
        except (ssl.SSLError, OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot load --client-crl-file {files.crl_file}: {exc}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.set_alpn_protocols(ALPN)
    return ctx


def _stamp(paths: tuple[str, ...]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None, None))
    return tuple(out)


class ReloadingContext:
    """Holds the current context; ``check()`` swaps in a new one when the files changed.

    New connections pick up ``current``; live connections keep the context they started with.
    A file that fails to load or validate leaves the old context in place (and is logged once
    per change), so a half-written certificate never takes the listener down.
    """

    def __init__(self, files: TLSFiles, builder: Callable[[TLSFiles], ssl.SSLContext] = server_context) -> None:
        self.files = files
        self._builder = builder
        self.current = builder(files)
        self._stamp = _stamp(files.paths())
        self._bad_stamp: tuple | None = None
        self.reloads = 0

    def check(self) -> bool:
        stamp = _stamp(self.files.paths())
        if stamp == self._stamp or stamp == self._bad_stamp:
            return False
        try:
            ctx = self._builder(self.files)
        except UsageError as exc:
            self._bad_stamp = stamp
            log.error("TLS files changed but are not usable; keeping the previous ones: %s", exc)
            return False
        self.current = ctx
        self._stamp = stamp
        self._bad_stamp = None
        self.reloads += 1
        log.info("TLS files reloaded: %s", ", ".join(self.files.paths()))
        return True


def peer_common_name(cert: dict | None) -> str:
    """CN of a verified peer certificate as returned by ``getpeercert()``, or ""."""
    if not cert:
        return ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""
