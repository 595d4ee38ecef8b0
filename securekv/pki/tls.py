"""TLS contexts from securekv PKI files: mutual TLS by default, TLS 1.2+ only."""

from __future__ import annotations

import os
import ssl
from pathlib import Path


def server_context(
    cert: str | os.PathLike,
    key: str | os.PathLike,
    ca: str | os.PathLike | None,
    *,
    require_client_cert: bool = True,
    crl: str | os.PathLike | None = None,
) -> ssl.SSLContext:
    """Server side: present cert/key; with ``ca``, verify clients (required unless told not to)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    if ca is not None:
        ctx.load_verify_locations(cafile=os.fspath(ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        if crl is not None:
            ctx.load_verify_locations(cafile=os.fspath(crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(
    ca: str | os.PathLike,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Client side: trust ``ca``; present cert/key when given (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=os.fspath(ca))
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return ctx


def read_pem(path: str | os.PathLike) -> bytes:
    """File bytes for grpc.ssl_*_credentials (which take PEM bytes, not paths)."""
    return Path(path).read_bytes()
