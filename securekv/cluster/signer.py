"""The member side of joining without the CA key: join tokens and signing new members' CSRs.

A member started with ``--signing-ca-cert-file/--signing-ca-key-file`` answers
``/securekvpb.Cluster/Join``: a new member sends two certificate signing requests (server and
peer keys it made itself) with a join token; this member checks the CSRs and the token, marks
the token used through the log (single use is decided when the entry is applied, on every
member alike), signs the certificates with its signing CA (peer certificate naming the member:
CN and ``securekv://member/<name>`` URI SAN, as ``securekv pki issue peer`` does), adds the new
member as a learner, and promotes it once it has caught up. The CA key never leaves this member.

Order matters for "refused changes nothing": everything that can be checked locally (CSR
signatures, names, addresses, URLs, the token against the replicated state) is checked before
the token is consumed; a refused join leaves the token usable and the membership unchanged.
Every token creation, revocation and admitted or refused join is written to the audit log.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from securekv.api.auth_gate import SERVER_CALLER, Caller
from securekv.cluster.token import spki_hash
from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import CA, pem
from securekv.pki.cfssl import default_config
from securekv.pki.issue import build_leaf, check_name_constraints
from securekv.pki.names import parse_hosts
from securekv.pki.verify import load_cert_chain, load_certs_pem, utcnow
from securekv.proto import join_pb2, rpc_pb2
from securekv.rpctypes import EtcdError
from securekv.tlspolicy.identity import member_uri

log = logging.getLogger(__name__)

JOIN = "/securekvpb.Cluster/Join"
RENEW = "/securekvpb.Cluster/Renew"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
PROMOTE_FOR = 600.0  # seconds the admitting member keeps trying to promote the learner
MAX_CSR = 16 * 1024

ERR_NO_SIGNER = EtcdError("FAILED_PRECONDITION", "securekv: this member cannot sign join requests (it was started "
                          "without --signing-ca-cert-file/--signing-ca-key-file); use a member that has them")


def _bad(message: str) -> EtcdError:
    return EtcdError("INVALID_ARGUMENT", f"securekv: join refused: {message}")


class Signer:
    """The signing CA of this member (``--signing-ca-*``), reloaded when its files change.

    A CA rotation replaces the files (new CA certificate and key) while the member runs; the
    next join or renewal signs with the new CA. A half-replaced pair (new certificate, old key)
    is not loaded: the previous CA stays in use until both files agree.
    """

    def __init__(self, cert_file: str, key_file: str, trusted_ca_files: tuple[str, ...] = ()) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.trusted_ca_files = tuple(f for f in trusted_ca_files if f)
        self._load()
        self._stamp = self._stamp_now()
        self._bad: tuple = ()

    def _stamp_now(self) -> tuple:
        out = []
        for p in (self.cert_file, self.key_file, *self.trusted_ca_files):
            try:
                st = Path(p).stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def check(self) -> None:
        """Reload if a file changed (a few stats; called before each signature)."""
        stamp = self._stamp_now()
        if stamp == self._stamp or stamp == self._bad:
            return
        try:
            self._load()
        except (UsageError, ValueError, OSError) as exc:
            self._bad = stamp
            log.error("signing CA files changed but are not usable; still signing with the previous CA: %s", exc)
            return
        self._stamp = stamp
        log.info("signing CA reloaded: %s (%s)", self.cert_file, self.ca_cert_hash)

    def _load(self) -> None:
        cert_file, key_file = self.cert_file, self.key_file
        chain = load_cert_chain(cert_file)
        cert = chain[0]
        key = keys.load_private_key(key_file)
        if not keys.same_public_key(key, cert.public_key()):
            raise UsageError(f"--signing-ca-key-file {key_file} does not match --signing-ca-cert-file {cert_file}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise UsageError(f"--signing-ca-cert-file {cert_file} is not a CA certificate")
        bundle: list[x509.Certificate] = []
        for c in [*chain, *(c for f in self.trusted_ca_files for c in load_cert_chain(f))]:
            if c not in bundle:
                bundle.append(c)
        self.ca = CA(Path(cert_file).parent, cert, key, tuple(chain) if cert.issuer != cert.subject else (), chain[-1])
        self.bundle = bundle
        self.ca_cert_hash = spki_hash(cert)

    def bundle_pem(self) -> str:
        return b"".join(pem(c) for c in self.bundle).decode()

    def sign(self, csr_pem: str, profile: str, name: str, hosts: list[str], uris: list[str]) -> x509.Certificate:
        if not csr_pem or len(csr_pem) > MAX_CSR:
            raise _bad(f"the {profile} CSR is missing or too large")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise _bad(f"the {profile} CSR is not a PEM certificate request ({exc})") from None
        if not csr.is_signature_valid:
            raise _bad(f"the {profile} CSR's signature does not verify (its key did not sign it)")
        public = csr.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            if public.key_size < 2048:
                raise _bad(f"the {profile} CSR's RSA key has {public.key_size} bits (at least 2048)")
        elif isinstance(public, ec.EllipticCurvePublicKey):
            if public.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
                raise _bad(f"the {profile} CSR's curve {public.curve.name} is not accepted")
        elif not isinstance(public, ed25519.Ed25519PublicKey):
            raise _bad(f"the {profile} CSR's key type is not accepted (RSA, ECDSA or Ed25519)")
        prof = default_config().profile(profile, source="built-in signing config")
        try:
            sans = parse_hosts(hosts, uris)
            check_name_constraints(self.ca, sans)
        except UsageError as exc:
            raise _bad(str(exc)) from None
        now = utcnow()
        not_after = min(now + prof.expiry, self.ca.cert.not_valid_after_utc)
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
        return build_leaf(self.ca, subject, public, sans, prof.usages, now - timedelta(minutes=5), not_after)

    def chain_pem(self, cert: x509.Certificate) -> str:
        return (pem(cert) + b"".join(pem(c) for c in self.ca.chain)).decode()


def _check_request(req: join_pb2.JoinRequest) -> tuple[list[str], list[str]]:
    """(IP addresses, DNS names) of a well-formed request; EtcdError for the first problem."""
    if not _NAME.match(req.name):
        raise _bad(f"member name {req.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    ips = []
    for a in req.addresses:
        try:
            ips.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise _bad(f"address {a!r} is not an IP address") from None
    dns = []
    for d in req.dns_names:
        if not _DNS.match(d):
            raise _bad(f"DNS name {d!r} is not a host name")
        dns.append(d.lower())
    if not ips and not dns:
        raise _bad("the new member needs at least one address or DNS name")
    if not req.peer_urls:
        raise _bad("the new member needs a peer URL")
    for label, urls in (("peer", req.peer_urls), ("client", req.client_urls)):
        for u in urls:
            parts = urlsplit(u)
            host = (parts.hostname or "").lower()
            if parts.scheme != "https" or not parts.port:
                raise _bad(f"{label} URL {u!r} must be https://HOST:PORT (members speak TLS only)")
            if host not in ips and host not in dns:
                raise _bad(f"{label} URL {u!r} names a host the certificates would not cover ({', '.join(ips + dns)})")
    return ips, dns


class JoinService:
    """The join handlers of one member (wired to the API table by ``EtcdServer``)."""

    def __init__(self, etcd: Any, signer: Signer | None, spawn: Callable[..., None],
                 trusted_ca_file: str = "", clock: Callable[[], float] = time.time,
                 files: tuple[tuple[str, str], ...] = ()) -> None:
        self.etcd = etcd
        self.signer = signer
        self.spawn = spawn
        self.trusted_ca_file = trusted_ca_file
        self.clock = clock
        self.files = files  # (role, path) of every certificate/CRL file this member serves with

    @property
    def tokens(self) -> Any:
        return self.etcd.applier.join_tokens

    def _signer(self) -> Signer | None:
        if self.signer is not None:
            self.signer.check()
        return self.signer

    def _ca_cert_hash(self) -> str:
        if self._signer() is not None:
            return self.signer.ca_cert_hash
        if self.trusted_ca_file:
            return spki_hash(load_cert_chain(self.trusted_ca_file)[0])
        return ""

    def _note(self, caller: Caller, method: str, decision: str, reason: str) -> None:
        gate = getattr(self.etcd, "gate", None)
        if gate is not None:
            gate.note(caller, method, decision, reason)
        log.info("%s %s: %s", method, decision, reason)

    # -- tokens (an administrator with a client certificate) ---------------------------------
    async def token_create(self, req: join_pb2.JoinTokenCreateRequest, caller: Caller) -> join_pb2.JoinTokenCreateResponse:
        entry = join_pb2.JoinTokenCreateRequest()
        entry.CopyFrom(req)
        entry.now_unix = int(self.clock())
        entry.created_by = caller.username or caller.identity.common_name
        result = await self.etcd._propose(caller, join_token_create=entry)
        resp = self.etcd.fill(result.response, self.etcd.store.current_revision)
        resp.ca_cert_hash = self._ca_cert_hash()
        self._note(caller, "/securekvpb.Cluster/JoinTokenCreate", "allow",
                   f"join token {req.id} created, expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(resp.expires_unix))}")
        return resp

    async def token_list(self, req: join_pb2.JoinTokenListRequest, caller: Caller) -> join_pb2.JoinTokenListResponse:
        resp = join_pb2.JoinTokenListResponse(tokens=self.tokens.listing())
        return self.etcd.fill(resp)

    async def token_revoke(self, req: join_pb2.JoinTokenRevokeRequest, caller: Caller) -> join_pb2.JoinTokenRevokeResponse:
        result = await self.etcd._propose(caller, join_token_revoke=req)
        self._note(caller, "/securekvpb.Cluster/JoinTokenRevoke", "allow", f"join token {req.id} revoked")
        return self.etcd.fill(result.response, self.etcd.store.current_revision)

    # -- the join itself (anonymous TLS; authenticated by the token) -------------------------
    async def ca_bundle(self, req: join_pb2.JoinCABundleRequest, caller: Caller) -> join_pb2.JoinCABundleResponse:
        if self._signer() is None:
            raise EtcdError(ERR_NO_SIGNER.code, ERR_NO_SIGNER.message)
        return join_pb2.JoinCABundleResponse(ca_bundle=self.signer.bundle_pem())

    async def join(self, req: join_pb2.JoinRequest, caller: Caller) -> join_pb2.JoinResponse:
        try:
            return await self._join(req, caller)
        except EtcdError as exc:
            self._note(caller, JOIN, "deny", f"join token {req.token_id or '?'} for member {req.name!r}: {exc.message}")
            raise

    async def _join(self, req: join_pb2.JoinRequest, caller: Caller) -> join_pb2.JoinResponse:
        from securekv.cluster.token import secret_hash

        signer = self._signer()
        if signer is None:
            raise EtcdError(ERR_NO_SIGNER.code, ERR_NO_SIGNER.message)
        ips, dns = _check_request(req)
        hosts = ips + dns
        members = self.etcd.node.membership.members.values()
        if any(m.name == req.name for m in members) or req.name == self.etcd.name:
            raise _bad(f"a member named {req.name!r} is already in the cluster")
        for m in members:
            if set(m.peer_urls) & set(req.peer_urls):
                raise _bad(f"peer URL {', '.join(sorted(set(m.peer_urls) & set(req.peer_urls)))} is already "
                           f"member {m.name or format(m.id, 'x')}'s")
        digest = secret_hash(req.token_secret)
        now = int(self.clock())
        # A clear answer without a log entry, and before any signature: no token, no work.
        self.tokens.check(req.token_id, digest, now)
        server = signer.sign(req.server_csr, "server", req.name, hosts, [])
        peer = signer.sign(req.peer_csr, "peer", req.name, hosts, [member_uri(req.name)])
        # The decision that counts: applied on every member in log order (single use).
        await self.etcd._propose_unchecked(SERVER_CALLER, join_token_consume=join_pb2.JoinTokenConsumeRequest(
            id=req.token_id, secret_hash=digest, now_unix=now, member_name=req.name))
        added = await self.etcd.member_add(rpc_pb2.MemberAddRequest(peerURLs=list(req.peer_urls), isLearner=True),
                                           SERVER_CALLER)
        member_id = added.member.ID
        self._note(caller, JOIN, "allow",
                   f"join token {req.token_id} admitted member {req.name} ({member_id:x}) as a learner; "
                   f"signed server certificate serial {server.serial_number:x} and peer certificate serial "
                   f"{peer.serial_number:x} for {', '.join(hosts)}")
        self.spawn(self._promote, member_id, req.name)
        resp = join_pb2.JoinResponse(server_cert=signer.chain_pem(server), peer_cert=signer.chain_pem(peer),
                                     ca_bundle=signer.bundle_pem(), member_id=member_id,
                                     cluster_id=self.etcd.cluster_id, cluster_token=self.etcd.cluster_token)
        for m in added.members:
            resp.members.add(name=m.name, peer_urls=list(m.peerURLs), client_urls=list(m.clientURLs), id=m.ID,
                             is_learner=m.isLearner)
        return resp

    # -- renewal (a member, by its current peer certificate) ----------------------------------
    async def renew(self, req: join_pb2.RenewRequest, caller: Caller) -> join_pb2.RenewResponse:
        try:
            resp = self._renew(req, caller)
        except EtcdError as exc:
            self._note(caller, RENEW, "deny", exc.message)
            raise
        return resp

    def _renew(self, req: join_pb2.RenewRequest, caller: Caller) -> join_pb2.RenewResponse:
        signer = self._signer()
        if signer is None:
            raise EtcdError(ERR_NO_SIGNER.code, ERR_NO_SIGNER.message)
        identity = caller.identity
        name = identity.member_name
        if not name:
            raise EtcdError("PERMISSION_DENIED", "securekv: renewal needs the member's current peer certificate as "
                            "the client certificate (--cert/--key: a peer-profile certificate naming the member)")
        members = [m for m in self.etcd.node.membership.members.values()
                   if (m.name or (self.etcd.name if m.id == self.etcd.member_id else "")) == name]
        if not members:
            raise EtcdError("PERMISSION_DENIED", f"securekv: {name!r} is not a member of this cluster")
        allowed = set(identity.sans)
        for m in members:
            for u in (*m.peer_urls, *m.client_urls):
                host = (urlsplit(u).hostname or "").lower()
                if host:
                    allowed.add(host)
        for label, hosts in (("server", req.server_hosts), ("peer", req.peer_hosts)):
            if not hosts:
                raise _bad(f"no hosts for the {label} certificate")
            extra = [h for h in hosts if h.lower() not in allowed]
            if extra:
                raise EtcdError("PERMISSION_DENIED", f"securekv: renewal may not add names: {', '.join(extra)} "
                                f"(not in the presented certificate nor member {name}'s URLs)")
        server = signer.sign(req.server_csr, "server", name, list(req.server_hosts), [])
        peer = signer.sign(req.peer_csr, "peer", name, list(req.peer_hosts), [member_uri(name)])
        self._note(caller, RENEW, "allow", f"renewed member {name}'s certificates: server serial "
                   f"{server.serial_number:x}, peer serial {peer.serial_number:x}")
        return join_pb2.RenewResponse(server_cert=signer.chain_pem(server), peer_cert=signer.chain_pem(peer),
                                      ca_bundle=signer.bundle_pem())

    async def cert_status(self, req: join_pb2.CertStatusRequest, caller: Caller) -> join_pb2.CertStatusResponse:
        resp = join_pb2.CertStatusResponse(name=self.etcd.name, certs=cert_infos(self.files))
        return self.etcd.fill(resp)

    async def _promote(self, member_id: int, name: str) -> None:
        """Learner add -> catch up -> promote: retried until the learner is ready (bounded)."""
        import trio

        from securekv.rpctypes import ERR_MEMBER_NOT_FOUND, ERR_MEMBER_NOT_LEARNER

        deadline = trio.current_time() + PROMOTE_FOR
        last = ""
        while trio.current_time() < deadline:
            try:
                await self.etcd.member_promote(rpc_pb2.MemberPromoteRequest(ID=member_id), SERVER_CALLER)
                log.info("joined member %s (%x) caught up and was promoted to a voting member", name, member_id)
                return
            except EtcdError as exc:
                if exc in (ERR_MEMBER_NOT_LEARNER,):
                    return
                if exc == ERR_MEMBER_NOT_FOUND:
                    log.warning("joined member %s (%x) was removed before its promotion", name, member_id)
                    return
                if exc.message != last:
                    last = exc.message
                    log.info("joined member %s (%x) not promoted yet: %s", name, member_id, exc.message)
            except Exception as exc:  # a leader change mid-call etc.: try again
                log.info("joined member %s (%x) not promoted yet: %s", name, member_id, exc)
            await trio.sleep(0.5)
        log.warning("joined member %s (%x) did not catch up within %ds: promote it with `securekv ctl member "
                    "promote %x`", name, member_id, int(PROMOTE_FOR), member_id)


def cert_infos(files: tuple[tuple[str, str], ...]) -> list[join_pb2.CertInfo]:
    """Each file's certificates (a CA bundle: each CA) or CRL, with its end of validity."""
    out = []
    for role, path in files:
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
            if role.endswith("crl"):
                crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
                nu = crl.next_update_utc
                out.append(join_pb2.CertInfo(role=role, file=path, issuer=crl.issuer.rfc4514_string(),
                                             not_after_unix=int(nu.timestamp()) if nu is not None else 0))
                continue
            certs = load_certs_pem(data, source=path)
        except (OSError, ValueError, UsageError) as exc:
            out.append(join_pb2.CertInfo(role=role, file=path, error=str(exc)))
            continue
        if not role.endswith("ca"):
            certs = certs[:1]  # a leaf file: the leaf (its chain is the CA's)
        for cert in certs:
            out.append(join_pb2.CertInfo(role=role, file=path, subject=cert.subject.rfc4514_string(),
                                         issuer=cert.issuer.rfc4514_string(), serial=f"{cert.serial_number:x}",
                                         not_after_unix=int(cert.not_valid_after_utc.timestamp())))
    return out


__all__ = ["JOIN", "JoinService", "RENEW", "Signer", "cert_infos"]
