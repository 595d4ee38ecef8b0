"""The peer port's TLS policy: mutual TLS against the peer CA, and certificates bound to members.

Both directions present a certificate of the peer profile (server auth + client auth) chaining
to ``--peer-trusted-ca-file``; the listener always requires one (the only way around that is
the explicit, loudly logged ``--peer-insecure-skip-client-cert-auth``). After the HELLO names
the member a connection speaks for, :meth:`PeerTLS.bind` checks the certificate names that
member (see :func:`~securekv.tlspolicy.identity.binding_refusal`). ``allowed_cn`` /
``allowed_hostname`` are etcd's flags, checked in both directions as etcd's shared TLS config
does; a certificate they admit that names no member (a shared peer certificate) may speak for
any member, as in etcd.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from securekv.errors import PeerError, UsageError
from securekv.tlspolicy.contexts import TLSFiles, peer_client_context, peer_server_context
from securekv.tlspolicy.crl import CRLWatcher, RevocationList
from securekv.tlspolicy.endpoint import ReloadingContext, crl_watcher
from securekv.tlspolicy.identity import (
    VerifiedPeer,
    binding_refusal,
    client_san_refusal,
    cn_matches,
    hostname_matches,
    verified_chain,
)
from securekv.tlspolicy.live import LiveConnections

log = logging.getLogger(__name__)


class PeerTLS:
    """Server and client contexts for peer connections plus who may speak for which member."""

    def __init__(self, server: ReloadingContext | ssl.SSLContext, client: ReloadingContext | ssl.SSLContext, *,
                 allowed_cn: str | None = None, allowed_hostname: str | None = None, crl: CRLWatcher | None = None,
                 require_client_cert: bool = True, authenticated: bool = True,
                 skip_client_san_verification: bool = False) -> None:
        if allowed_cn and allowed_hostname:
            raise UsageError("--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive (as in etcd)")
        self._server = server
        self._client = client
        self.allowed_cn = allowed_cn or None
        self.allowed_hostname = allowed_hostname or None
        self.crl = crl
        self.require_client_cert = require_client_cert
        self.authenticated = authenticated
        self.skip_client_san_verification = skip_client_san_verification
        self.live = LiveConnections()

    @classmethod
    def from_files(cls, cert_file: str, key_file: str, trusted_ca_file: str | None, crl_file: str | None = None, *,
                   allowed_cn: str | None = None, allowed_hostname: str | None = None,
                   insecure_skip_client_cert_auth: bool = False, cipher_suites: tuple[str, ...] = (),
                   skip_client_san_verification: bool = False) -> PeerTLS:
        """Build (and later hot-reload) the contexts from ``--peer-*`` files; UsageError names a bad one."""
        if allowed_cn and allowed_hostname:
            raise UsageError("--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive (as in etcd)")
        if not trusted_ca_file and not insecure_skip_client_cert_auth:
            raise UsageError("the peer port needs --peer-trusted-ca-file: every member is authenticated by a "
                             "certificate of the cluster's peer CA")
        if (allowed_cn or allowed_hostname) and not trusted_ca_file:
            raise UsageError("--peer-cert-allowed-cn/--peer-cert-allowed-hostname need --peer-trusted-ca-file")
        if crl_file and not trusted_ca_file:
            raise UsageError("--peer-crl-file needs --peer-trusted-ca-file")
        files = TLSFiles(str(cert_file), str(key_file), str(trusted_ca_file or ""), str(crl_file or ""),
                         client_cert_auth=not insecure_skip_client_cert_auth, role="peer",
                         cipher_suites=tuple(cipher_suites))
        server = ReloadingContext(files, peer_server_context)
        client = ReloadingContext(files, peer_client_context)
        if trusted_ca_file:
            _check_own_certificate(files)
        if insecure_skip_client_cert_auth:
            log.warning("--peer-insecure-skip-client-cert-auth: the peer port accepts connections WITHOUT a "
                        "member certificate%s; anyone who reaches it can take part in Raft as any member",
                        "" if trusted_ca_file else " and members are not authenticated at all (no peer CA)")
        return cls(server, client, allowed_cn=allowed_cn, allowed_hostname=allowed_hostname,
                   crl=crl_watcher(files), require_client_cert=not insecure_skip_client_cert_auth,
                   authenticated=bool(trusted_ca_file), skip_client_san_verification=skip_client_san_verification)

    @classmethod
    def from_contexts(cls, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, allowed_cn: str | None = None,
                      allowed_hostname: str | None = None) -> PeerTLS:
        """Fixed, caller-built contexts (never reloaded, no CRL)."""
        return cls(server_ctx, client_ctx, allowed_cn=allowed_cn, allowed_hostname=allowed_hostname,
                   require_client_cert=server_ctx.verify_mode == ssl.CERT_REQUIRED,
                   authenticated=server_ctx.verify_mode != ssl.CERT_NONE)

    def maybe_reload(self) -> None:
        """Pick up changed files (cheap: a few stats); close live links of newly revoked certificates."""
        for rc in (self._server, self._client):
            if isinstance(rc, ReloadingContext):
                rc.check()
        if self.crl is not None:
            new = self.crl.check()
            if new is not None:
                self.live.close_revoked(new)

    @property
    def server_context(self) -> ssl.SSLContext:
        return self._server.current if isinstance(self._server, ReloadingContext) else self._server

    @property
    def client_context(self) -> ssl.SSLContext:
        return self._client.current if isinstance(self._client, ReloadingContext) else self._client

    @property
    def revocations(self) -> RevocationList | None:
        return self.crl.current if self.crl is not None else None

    def admit(self, conn: Any, remote: str = "") -> VerifiedPeer:
        """Check the remote certificate of a handshaken peer connection (either direction).

        Raises PeerError with a reason that names no member or cluster ID.
        """
        if not self.authenticated:
            return VerifiedPeer((), remote)  # no CA: nothing was verified, nothing to check
        peer = VerifiedPeer(verified_chain(conn), remote)
        if not peer.chain:
            if self.require_client_cert:
                raise PeerError("no certificate: the peer port requires a member certificate of the peer CA")
            return peer
        revocations = self.revocations
        if revocations is not None:
            cert = revocations.revoked_certificate(peer.chain)
            if cert is not None:
                raise PeerError(f"{peer.describe()}: certificate serial {cert.serial_number:x} is revoked")
        if not peer.has_peer_usages():
            raise PeerError(f"{peer.describe()} is not a peer certificate: it needs both the server auth and the "
                            "client auth usages (issue it with `securekv pki issue peer NAME`)")
        leaf = peer.leaf
        assert leaf is not None
        if self.allowed_cn is not None and not cn_matches(leaf, self.allowed_cn):
            raise PeerError(f"certificate CN {peer.common_name!r} is not the allowed CN {self.allowed_cn!r}")
        if self.allowed_hostname is not None and not hostname_matches(leaf, self.allowed_hostname):
            raise PeerError(f"certificate (CN {peer.common_name!r}) has no SAN matching the allowed hostname "
                            f"{self.allowed_hostname!r}")
        return peer

    def client_san_refusal(self, peer: VerifiedPeer, remote_host: str) -> str:
        """Listening side, as etcd's peer listener: the client certificate's SANs must cover the
        address it connects from, unless ``--experimental-peer-skip-client-san-verification``.
        May resolve names: run it in a worker thread. "" = fine."""
        if self.skip_client_san_verification or not self.authenticated or peer.leaf is None:
            return ""
        return client_san_refusal(peer.leaf, remote_host)

    def bind(self, peer: VerifiedPeer, claimed: int, names: Mapping[int, str],
             urls: Sequence[str] | None = None) -> str:
        """Why ``peer`` may not speak for member ``claimed`` ("" = it may). ``names``: the applied
        membership, member ID -> name ("" for a member added but not started yet); ``urls``: the
        claimed member's peer URLs.

        A member added but not started has no name to bind to yet, so its certificate must at
        least be the one of the machine it was added as: it must cover the host of one of its
        peer URLs (the other members will dial that URL and check the same SAN, so the real
        newcomer's certificate always does). Without this, any peer certificate of the CA
        naming no member — a spare, or one for a member that does not exist — could take the
        newcomer's place."""
        if not peer.chain:
            return ""  # only possible with the explicit insecure opt-out (or no CA at all)
        cert_name = peer.member_name
        shared = self.allowed_cn is not None or self.allowed_hostname is not None
        if shared and cert_name not in {n for n in names.values() if n}:
            return ""  # a shared peer certificate admitted by --peer-cert-allowed-*: etcd's rule
        reason = binding_refusal(cert_name, claimed, names)
        if reason or names.get(claimed) or urls is None:
            return reason
        leaf = peer.leaf
        assert leaf is not None
        hosts = [urlsplit(u).hostname or "" for u in urls]
        if not any(h and hostname_matches(leaf, h) for h in hosts):
            return ("the certificate covers none of the peer URL hosts of the member the connection claims to be "
                    "(a member added but not started yet is bound to its peer URLs)")
        return ""


def _check_own_certificate(files: TLSFiles) -> None:
    """Our own peer certificate must be one the other members accept (both usages)."""
    from securekv.pki.verify import load_cert_chain

    try:
        leaf = load_cert_chain(files.cert_file)[0]
    except UsageError as exc:
        raise UsageError(f"{files.flag(0)}: {exc}") from None
    if not VerifiedPeer((leaf,)).has_peer_usages():
        raise UsageError(f"{files.flag(0)} {files.cert_file} is not a peer certificate: it needs both the server "
                         "auth and the client auth usages (issue it with `securekv pki issue peer NAME`)")
