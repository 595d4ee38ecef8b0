"""The embedded default PKI for ``securekv serve``: a private CA plus server and client
certificates under the data dir, created on first start and reused while they still fit.

Layout under ``dir``: the CA files (see ``securekv.pki.ca``), ``server.pem``/``server-key.pem``
(profile ``etcd``: serverAuth + clientAuth), one ``NAME.pem``/``NAME-key.pem`` per client name
(profile ``client``; CN = NAME = RBAC user) and, with ``--peer-auto-tls``, ``peer.pem`` (profile
``peer``, named after the member) for the peer port.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs

from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import CA_CERT, init_ca, load_ca
from securekv.pki.issue import issue_cert
from securekv.pki.names import cert_sans, sans_cover, split_host_port
from securekv.pki.verify import issued_by, load_cert_chain, utcnow

RENEW_BEFORE = timedelta(days=30)


@attrs.frozen
class LocalPKI:
    dir: Path
    ca_path: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)
    created: tuple[str, ...]  # file stems made on this call


def ensure_local_pki(
    dir: str | os.PathLike,
    hosts: Iterable[str],
    *,
    client_names: Iterable[str] = ("root",),
    server_name: str = "server",
    now: datetime | None = None,
) -> LocalPKI:
    """Create or reuse a local CA, a server cert covering ``hosts`` and client certs.

    A leaf is re-issued when missing, not signed by this CA, within RENEW_BEFORE of expiry,
    or (server) not covering every host. The CA is created only if ``dir/ca.pem`` is absent.
    """
    directory = Path(dir)
    names = [split_host_port(h.strip()) for h in hosts if h and h.strip()]
    if not names:
        raise UsageError("the local PKI needs at least one host for the server certificate")
    moment = utcnow(now)
    created: list[str] = []
    if not (directory / CA_CERT).exists():
        init_ca(directory, cn="securekv local CA", now=moment)
        created.append("ca")
    ca = load_ca(directory)
    if not _fits(directory / f"{server_name}.pem", directory / f"{server_name}-key.pem", ca.cert, moment, names):
        issue_cert(directory, "etcd", server_name, hosts=names, ca=ca, now=moment)
        created.append(server_name)
    clients = {}
    for name in client_names:
        cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
        if not _fits(cert, key, ca.cert, moment, ()):
            issue_cert(directory, "client", name, ca=ca, now=moment)
            created.append(name)
        clients[name] = (cert, key)
    return LocalPKI(directory, directory / CA_CERT, directory / f"{server_name}.pem",
                    directory / f"{server_name}-key.pem", clients, tuple(created))


def _fits(cert_path: Path, key_path: Path, ca_cert, moment: datetime, hosts) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return False
    try:
        cert = load_cert_chain(cert_path)[0]
        key = keys.load_private_key(key_path)
    except UsageError:
        return False
    if not issued_by(cert, ca_cert) or not keys.same_public_key(key, cert.public_key()):
        return False
    if moment < cert.not_valid_before_utc or cert.not_valid_after_utc - moment <= RENEW_BEFORE:
        return False
    sans = cert_sans(cert)
    return all(sans_cover(sans, h) for h in hosts)


def ensure_peer_cert(dir: str | os.PathLike, member: str, hosts: Iterable[str], *,
                     now: datetime | None = None) -> tuple[Path, Path, Path]:
    """``--peer-auto-tls`` with the embedded default: ``peer.pem`` from the local CA, named after
    ``member`` (CN and URI SAN) and covering ``hosts``; re-issued when it does not fit.
    Returns (cert, key, CA)."""
    from securekv.tlspolicy.identity import VerifiedPeer

    directory = Path(dir)
    names = [split_host_port(h.strip()) for h in hosts if h and h.strip()]
    moment = utcnow(now)
    if not (directory / CA_CERT).exists():
        init_ca(directory, cn="securekv local CA", now=moment)
    ca = load_ca(directory)
    cert, key = directory / "peer.pem", directory / "peer-key.pem"
    fits = _fits(cert, key, ca.cert, moment, names)
    if fits:
        fits = VerifiedPeer((load_cert_chain(cert)[0],)).member_name == member
    if not fits:
        issue_cert(directory, "peer", "peer", cn=member, hosts=names, ca=ca, now=moment)
    return cert, key, directory / CA_CERT
