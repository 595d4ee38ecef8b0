"""TLS contexts from securekv PKI files (tests, embedders): mutual TLS by default, TLS 1.2+ only.

Thin helpers over :mod:`securekv.tlspolicy`, which owns the cipher suites and options for every
securekv endpoint. Revocation is enforced by ``securekv.tlspolicy.ServerTLS`` after the
handshake (CRLs are never loaded into OpenSSL: see ``securekv/tlspolicy/crl.py``).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from securekv.tlspolicy.contexts import simple_client_context, simple_server_context


def server_context(
    cert: str | os.PathLike,
    key: str | os.PathLike,
    ca: str | os.PathLike | None,
    *,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """Server side: present cert/key; with ``ca``, verify clients (required unless told not to)."""
    return simple_server_context(cert, key, ca, require_client_cert=require_client_cert)


def client_context(
    ca: str | os.PathLike,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Client side: trust ``ca``; present cert/key when given (mutual TLS)."""
    return simple_client_context(ca, cert, key, check_hostname=check_hostname)


def read_pem(path: str | os.PathLike) -> bytes:
    """File bytes for grpc.ssl_*_credentials (which take PEM bytes, not paths)."""
    return Path(path).read_bytes()
