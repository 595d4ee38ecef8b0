"""The joining side: get a new member's certificates from the cluster with a join token.

``securekv cluster join`` runs on the new machine, which holds no CA key and trusts nothing yet
except the CA fingerprint in the token. The order of steps is what makes that safe:

1. ask a member for its CA bundle (``POST /v3/securekv/join/ca-bundle``) over TLS *without*
   verifying the member yet: the answer is only a candidate;
2. keep the certificate whose SubjectPublicKeyInfo hashes to the pinned ``sha256:<hex>``, or
   stop ("wrong CA fingerprint") -- nothing secret has been sent;
3. connect again, now verifying the member's certificate chain against that CA and its host
   name, and only then send the token secret with two CSRs (server and peer keys made here,
   never sent) -- so the secret only reaches a member of the pinned CA;
4. check the returned certificates chain to the pinned CA and carry our public keys, then
   write keys, certificates, the member config (``initial-cluster-state: existing``) and the
   hardened unit, all at once and laid out as ``install bundle`` does
   (``securekv.deploy.install.write_files``; under ``--root`` staged, DESTDIR-style). A refusal
   writes nothing, and everything that can be refused locally (not root, already a member,
   a bad service user) is refused before the token is spent.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format

from securekv.cluster.token import JoinToken, spki_hash
from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import pem
from securekv.pki.verify import load_certs_pem, verify_chain
from securekv.proto import join_pb2
from securekv.tlspolicy.contexts import harden

DATA_DIR = "/var/lib/securekv"  # securekv.deploy.config.STATE_DIR
TIMEOUT = 30.0


class JoinRefused(UsageError):
    """The cluster (or the pinned CA check) refused the join; nothing was written."""


@attrs.frozen
class JoinResult:
    member_id: int
    files: tuple[Path, ...]
    members: tuple[str, ...]


def _endpoint(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"--endpoints {url!r}: a member's https:// client URL is needed (the join runs over TLS)")
    return parts.hostname, parts.port or 2379


def _post(host: str, port: int, ctx: ssl.SSLContext, path: str, message: Any, reply: type, timeout: float) -> Any:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        try:
            text = json.loads(data).get("message") or data.decode(errors="replace")
        except (ValueError, AttributeError):
            text = data.decode(errors="replace").strip()
        raise JoinRefused(f"{host}:{port} refused the join: {text}")
    return json_format.Parse(data, reply(), ignore_unknown_fields=True)


def _discovery_context() -> ssl.SSLContext:
    """Step 1 only: the member is not verified yet (its CA is what we are fetching)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _pinned_context(ca: x509.Certificate) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    ctx.load_verify_locations(cadata=pem(ca).decode())
    if ca.issuer != ca.subject:  # a pinned intermediate is a trust anchor of its own
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def pinned_ca(bundle_pem: str, ca_cert_hash: str, where: str) -> x509.Certificate:
    try:
        certs = load_certs_pem(bundle_pem.encode(), source=f"{where}'s CA bundle")
    except UsageError as exc:
        raise JoinRefused(str(exc)) from None
    for cert in certs:
        if spki_hash(cert) == ca_cert_hash:
            return cert
    offered = ", ".join(spki_hash(c) for c in certs) or "none"
    raise JoinRefused(f"wrong CA fingerprint: {where} offers CA {offered}, not the pinned {ca_cert_hash}; "
                      "nothing was sent (check the token, or that --endpoints names this cluster)")


def _csr(key: Any, name: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _check_issued(chain_pem: str, key: Any, ca: x509.Certificate, what: str) -> None:
    chain = load_certs_pem(chain_pem.encode(), source=f"the {what} certificate")
    if not keys.same_public_key(key, chain[0].public_key()):
        raise JoinRefused(f"the {what} certificate the cluster returned is not for our key")
    try:
        verify_chain(chain, [ca])
    except UsageError as exc:
        raise JoinRefused(f"the {what} certificate does not chain to the pinned CA: {exc}") from None


@attrs.frozen
class JoinSpec:
    token: JoinToken
    endpoints: tuple[str, ...]
    name: str
    addresses: tuple[str, ...]
    dns_names: tuple[str, ...] = ()
    client_port: int = 2379
    peer_port: int = 2380
    root: str = ""  # write under this directory instead of /
    data_dir: str = DATA_DIR
    user: str = "securekv"
    exec_start: tuple[str, ...] = ()

    def host(self) -> str:
        return self.addresses[0] if self.addresses else self.dns_names[0]

    def url(self, port: int) -> str:
        host = self.host()
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def join(spec: JoinSpec, timeout: float = TIMEOUT) -> JoinResult:
    from securekv.deploy import install as deploy
    from securekv.deploy.install import default_exec_start
    from securekv.deploy.systemd import CONFIG_PATH, UNIT_PATH, check_exec_start, check_user

    if not spec.addresses and not spec.dns_names:
        raise UsageError("--address (or --dns) is needed: the new member's certificates name it")
    if not spec.endpoints:
        raise UsageError("--endpoints: at least one member's client URL is needed")
    check_user(spec.user)
    check_exec_start(spec.exec_start or default_exec_start())
    # Everything that can refuse locally refuses before the token is spent.
    if not spec.root:
        deploy.require_root()
    for p in (CONFIG_PATH, UNIT_PATH):
        t = deploy.resolve_under_root(spec.root or "/", p)
        if t.exists():
            raise UsageError(f"{t} already exists: this machine is already set up as a member (remove it first)")
    deploy.check_data_dirs((spec.data_dir,), spec.root or None)
    errors = []
    for endpoint in spec.endpoints:
        host, port = _endpoint(endpoint)
        where = f"{host}:{port}"
        try:
            bundle = _post(host, port, _discovery_context(), "/v3/securekv/join/ca-bundle",
                           join_pb2.JoinCABundleRequest(), join_pb2.JoinCABundleResponse, timeout)
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        ca = pinned_ca(bundle.ca_bundle, spec.token.ca_cert_hash, where)
        server_key = ec.generate_private_key(ec.SECP256R1())
        peer_key = ec.generate_private_key(ec.SECP256R1())
        request = join_pb2.JoinRequest(
            token_id=spec.token.id, token_secret=spec.token.secret, name=spec.name, addresses=list(spec.addresses),
            dns_names=list(spec.dns_names), server_csr=_csr(server_key, spec.name), peer_csr=_csr(peer_key, spec.name),
            peer_urls=[spec.url(spec.peer_port)], client_urls=[spec.url(spec.client_port)])
        try:
            reply = _post(host, port, _pinned_context(ca), "/v3/securekv/join", request, join_pb2.JoinResponse, timeout)
        except ssl.SSLCertVerificationError as exc:
            raise JoinRefused(f"{where} is not a member of the pinned CA's cluster: {exc.verify_message}; "
                              "the token was not sent") from None
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        _check_issued(reply.server_cert, server_key, ca, "server")
        _check_issued(reply.peer_cert, peer_key, ca, "peer")
        return _write(spec, reply, server_key, peer_key)
    raise JoinRefused("no member could be reached: " + "; ".join(errors) + " (--endpoints must name a member "
                      "started with --signing-ca-cert-file/--signing-ca-key-file: the others require a client "
                      "certificate)")


def _write(spec: JoinSpec, reply: join_pb2.JoinResponse, server_key: Any, peer_key: Any) -> JoinResult:
    """The member's files, as ``install bundle`` lays them out: under ``--root`` staged
    (DESTDIR: the config names the target system's paths), else installed on this machine with
    the service user and data directory created and the keys handed to it (0600)."""
    from securekv.cluster import renew_timer
    from securekv.cluster.bundle import owned_by_service, pki_paths
    from securekv.cluster.install import service_owner
    from securekv.deploy import install as deploy
    from securekv.deploy.firewall import RenderedFile
    from securekv.deploy.systemd import (CONFIG_PATH, SYSUSERS_PATH, UNIT_PATH, UnitOptions, render_config,
                                         render_sysusers, render_unit)
    from securekv.deploy.install import default_exec_start

    paths = pki_paths(spec.name)
    me = spec.url(spec.peer_port)
    cluster = [f"{m.name or spec.name}={u}" for m in reply.members for u in m.peer_urls if m.name or u == me]
    config = {
        "name": spec.name,
        "data-dir": spec.data_dir,
        "listen-client-urls": spec.url(spec.client_port),
        "advertise-client-urls": spec.url(spec.client_port),
        "listen-peer-urls": spec.url(spec.peer_port),
        "initial-advertise-peer-urls": spec.url(spec.peer_port),
        "initial-cluster": ",".join(cluster),
        "initial-cluster-state": "existing",
        "initial-cluster-token": reply.cluster_token,
        "client-transport-security": {"cert-file": paths["server-cert"], "key-file": paths["server-key"],
                                      "trusted-ca-file": paths["ca"], "client-cert-auth": True},
        "peer-transport-security": {"cert-file": paths["peer-cert"], "key-file": paths["peer-key"],
                                    "trusted-ca-file": paths["ca"], "client-cert-auth": True},
    }
    unit = render_unit(UnitOptions(exec_start=spec.exec_start or default_exec_start(), user=spec.user,
                                   config_file=CONFIG_PATH, writable_paths=(spec.data_dir,)))
    files = (
        RenderedFile(paths["ca"], reply.ca_bundle, 0o644),
        RenderedFile(paths["server-cert"], reply.server_cert, 0o644),
        RenderedFile(paths["server-key"], keys.key_to_pem(server_key).decode(), 0o600),
        RenderedFile(paths["peer-cert"], reply.peer_cert, 0o644),
        RenderedFile(paths["peer-key"], keys.key_to_pem(peer_key).decode(), 0o600),
        RenderedFile(CONFIG_PATH, render_config(config), 0o644),
        RenderedFile(UNIT_PATH, unit, 0o644),
        RenderedFile(SYSUSERS_PATH, render_sysusers(spec.user), 0o644),
        # Renewal before expiry, through the member that signed (docs/pki.md).
        RenderedFile(renew_timer.SERVICE_PATH, renew_timer.render_service(
            spec.exec_start or default_exec_start(), spec.endpoints, paths, os.path.dirname(paths["ca"])), 0o644),
        RenderedFile(renew_timer.TIMER_PATH, renew_timer.render_timer(), 0o644),
    )
    if spec.root:
        written = deploy.write_files(files, spec.root)
        return JoinResult(reply.member_id, tuple(written), tuple(cluster))
    written = deploy.write_files(files, "/")
    deploy.apply_systemd(deploy.Plan(files), spec.user, (spec.data_dir,))
    owner = service_owner(spec.user)
    if owner is None:
        raise UsageError(f"the service user {spec.user!r} was not created")
    for f in files:
        if owned_by_service(f.path):
            os.chown(f.path, owner[0], owner[1], follow_symlinks=False)
    return JoinResult(reply.member_id, tuple(written), tuple(cluster))


# -- renewal: the same CSR path, authenticated by the member's current peer certificate --------

@attrs.frozen
class RenewSpec:
    endpoints: tuple[str, ...]
    cacert: str  # the CA bundle this member trusts (verifies the signing member and the result)
    server_cert: str
    server_key: str
    peer_cert: str
    peer_key: str


def _host_sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName), *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))]


def renew(spec: RenewSpec, timeout: float = TIMEOUT) -> tuple[Path, ...]:
    """New keys and certificates for this member, written over the old ones at once.

    The member's listeners reload changed certificate files by themselves (about once a
    second): live connections keep their session, new ones get the new certificate; a half
    written pair (new certificate, old key) is not loaded, so nothing is ever served broken.
    """
    import os

    from securekv.fsutil import atomic_write_many
    from securekv.pki.verify import load_cert_chain

    old_server = load_cert_chain(spec.server_cert)[0]
    old_peer = load_cert_chain(spec.peer_cert)[0]
    anchors = load_certs_pem(Path(spec.cacert).read_bytes(), source=spec.cacert)
    server_key = ec.generate_private_key(ec.SECP256R1())
    peer_key = ec.generate_private_key(ec.SECP256R1())
    name = old_peer.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    cn = str(name[0].value) if name else "member"
    request = join_pb2.RenewRequest(server_csr=_csr(server_key, cn), peer_csr=_csr(peer_key, cn),
                                    server_hosts=_host_sans(old_server), peer_hosts=_host_sans(old_peer))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    harden(ctx)
    ctx.load_verify_locations(cafile=spec.cacert)
    ctx.load_cert_chain(spec.peer_cert, spec.peer_key)
    ctx.set_alpn_protocols(["http/1.1"])
    errors = []
    for endpoint in spec.endpoints:
        host, port = _endpoint(endpoint)
        try:
            reply = _post(host, port, ctx, "/v3/securekv/renew", request, join_pb2.RenewResponse, timeout)
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        for chain_pem, key, what in ((reply.server_cert, server_key, "server"), (reply.peer_cert, peer_key, "peer")):
            chain = load_certs_pem(chain_pem.encode(), source=f"the {what} certificate")
            if not keys.same_public_key(key, chain[0].public_key()):
                raise JoinRefused(f"the {what} certificate the cluster returned is not for our key")
            try:
                verify_chain(chain, anchors)
            except UsageError as exc:
                raise JoinRefused(f"the renewed {what} certificate does not chain to {spec.cacert}: {exc}") from None

        def mode(path: str, default: int) -> int:
            try:
                return os.stat(path).st_mode & 0o777
            except OSError:
                return default

        writes = [
            (Path(spec.server_key), keys.key_to_pem(server_key), 0o600),
            (Path(spec.server_cert), reply.server_cert.encode(), mode(spec.server_cert, 0o644)),
            (Path(spec.peer_key), keys.key_to_pem(peer_key), 0o600),
            (Path(spec.peer_cert), reply.peer_cert.encode(), mode(spec.peer_cert, 0o644)),
        ]
        atomic_write_many(writes, keep_owner=True)  # run by root for a service user's files
        return tuple(p for p, _, _ in writes)
    raise JoinRefused("no signing member could be reached: " + "; ".join(errors))

__all__ = ["JoinRefused", "JoinResult", "JoinSpec", "RenewSpec", "join", "pinned_ca", "renew"]
