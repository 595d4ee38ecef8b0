"""securekv's one TLS policy: contexts, cipher suites, CRLs, remote identity — for the client
port, the peer port and the PKI's checks.

Every listener and dialer builds its ``ssl.SSLContext`` here and, after each handshake, asks
this package who the remote is and whether it may stay. The pieces:

``TLSFiles(cert_file, key_file, trusted_ca_file="", crl_file="", client_cert_auth=True, role="client",
cipher_suites=())``
    the operator's files for one endpoint (``role`` "client"/"peer" names the flags in errors;
    ``cipher_suites``: etcd's ``--cipher-suites`` Go names, mapped by ``ciphers.py``).

``ServerTLS(files)`` — a client-port (or metrics) listener::

    tls = ServerTLS(files)                 # UsageError names a bad file; CRL parsed and verified
    ssl_stream = trio.SSLStream(tcp, tls.current, server_side=True)
    await ssl_stream.do_handshake()
    peer = tls.admit(ssl_stream, remote)   # VerifiedPeer; PeerError if a CRL revokes its chain
    with tls.live.track(peer, close):      # close(reason) is called if a reloaded CRL revokes it
        ...serve the connection (peer.common_name is the RBAC user)...
    tls.check()                            # about once a second: reload files, close revoked,
                                           # log an expired CRL every minute

``PeerTLS.from_files(cert, key, ca, crl, allowed_cn=, allowed_hostname=,
insecure_skip_client_cert_auth=False, cipher_suites=(), skip_client_san_verification=False)`` —
the peer port, both directions: ``server_context`` / ``client_context``; ``admit(conn, remote)``
after the handshake (certificate required, not revoked, peer profile = server auth + client
auth, etcd's allowed CN / hostname); ``client_san_refusal(peer, remote_host)`` on the listening
side (etcd's check that a client certificate's SANs cover its address; DNS lookups, so call it
from a worker thread);
``bind(peer, claimed_member_id, names)`` after the HELLO (the certificate names that member);
``live`` and ``maybe_reload()`` as above.

``VerifiedPeer``: ``chain`` (leaf first), ``common_name``, ``member_name`` (URI SAN
``securekv://member/<name>``, else CN), ``describe()``. ``member_uri(name)`` builds that SAN.

CRLs (``crl``): ``load_revocation_list(path, issuers)``, ``RevocationList`` (``revoked_certificate(
chain)``, ``next_update``, ``expired()``), ``CRLWatcher``. A CRL file holds CRLs only, each
verified against a trusted CA; revoked serials are enforced for leaf and intermediates; an
expired CRL stays enforced and is reported every minute.

Contexts (``contexts``): TLS 1.2+, ECDHE AEAD suites only, no compression, renegotiation or
tickets; ``server_context``, ``peer_server_context``, ``peer_client_context``, and the PKI
helpers ``simple_server_context`` / ``simple_client_context``.

No trio and no grpc here: the package is plain ``ssl`` + ``cryptography`` (``securekv pki``
imports it too).
"""

from __future__ import annotations

from securekv.tlspolicy.contexts import (
    CLIENT_ALPN,
    PEER_ALPN,
    TLS12_CIPHERS,
    TLSFiles,
    harden,
    peer_client_context,
    peer_server_context,
    server_context,
    simple_client_context,
    simple_server_context,
)
from securekv.tlspolicy.crl import (
    CRLInfo,
    CRLWatcher,
    RevocationList,
    build_revocation_list,
    load_revocation_list,
    split_crl_file,
)
from securekv.tlspolicy.endpoint import ReloadingContext, ServerTLS, trusted_issuers
from securekv.tlspolicy.identity import (
    MEMBER_URI_PREFIX,
    VerifiedPeer,
    binding_refusal,
    cn_matches,
    hostname_matches,
    member_uri,
    verified_chain,
    verified_peer,
)
from securekv.tlspolicy.live import LiveConnections
from securekv.tlspolicy.peer import PeerTLS

__all__ = [
    "CLIENT_ALPN", "PEER_ALPN", "TLS12_CIPHERS", "TLSFiles", "harden", "server_context", "peer_server_context",
    "peer_client_context", "simple_server_context", "simple_client_context",
    "CRLInfo", "CRLWatcher", "RevocationList", "build_revocation_list", "load_revocation_list", "split_crl_file",
    "ReloadingContext", "ServerTLS", "trusted_issuers",
    "MEMBER_URI_PREFIX", "VerifiedPeer", "binding_refusal", "cn_matches", "hostname_matches", "member_uri",
    "verified_chain", "verified_peer", "LiveConnections", "PeerTLS",
]
