"""A member bundle: everything one member needs, in one file, checked before anything is installed.

Why one file: the seeds' way is a page of cfssl JSON, certificates copied by hand, an env file,
a unit and firewall commands per machine; every copy is a chance to mix up two members' files or
leave a key world-readable. A bundle is one 0600 file per member that ``securekv cluster plan``
writes and ``securekv install bundle`` installs, and the install refuses it unless it is whole
and belongs together.

Format (version 1), a JSON document::

    {"format": "securekv-bundle", "version": 1, "cluster": ..., "member": ..., "created": ...,
     "ca": PEM, "server-cert": PEM, "server-key": PEM, "peer-cert": PEM, "peer-key": PEM,
     "config": YAML (etcd config-file keys), "unit": ..., "sysusers": ..., "user": ...,
     "firewall": {"peers": [...], "clients": [...], "client-port": N, "peer-port": N},
     "sha256": hex digest of the canonical JSON of every other field}

The digest catches a damaged or hand-edited file. What makes the contents trustworthy is the
certificate checks (every certificate signed by the bundle's CA, each key matching its
certificate, the peer certificate naming this member, the server and peer certificates covering
the advertised addresses, nothing expired) and, against a bundle forged whole, pinning the CA
with ``--ca-fingerprint`` (``plan`` prints it). Sealed with ``--passphrase-file``, the document
is wrapped in the encrypted snapshot construction (``securekv.snapcrypt.format``: scrypt,
AES-256-GCM, every byte authenticated) behind a first line of its own, so a snapshot tool never
mistakes it for a snapshot.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from securekv.deploy import firewall as fw
from securekv.deploy.config import CONFIG_DIR, MemberConfig, parse_config
from securekv.deploy.firewall import RenderedFile
from securekv.deploy.systemd import CONFIG_PATH, SYSUSERS_PATH, UNIT_PATH, check_user
from securekv.deploy.values import check_name
from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.names import cert_sans, sans_cover
from securekv.pki.verify import is_ca, load_certs_pem, utcnow, verify_chain

FORMAT = "securekv-bundle"
VERSION = 1
SEALED_MAGIC = b"securekv sealed bundle v1\n"
PKI_DIR = f"{CONFIG_DIR}/pki"
EXPIRY_WARNING = timedelta(days=30)
MAX_BUNDLE = 4 * 1024 * 1024  # a bundle is a few KiB; anything this large is the wrong file
FINGERPRINT_PREFIX = "sha256:"


class BundleError(UsageError):
    """The bundle cannot be installed: damaged, inconsistent, expired, not this member's, ..."""


def ca_fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the CA's SubjectPublicKeyInfo (kubeadm's CA pin: it survives reissuing
    the CA certificate with the same key)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return FINGERPRINT_PREFIX + hashlib.sha256(spki).hexdigest()


def pki_paths(member: str) -> dict[str, str]:
    """Where each certificate and key of ``member`` is installed (the config refers to these)."""
    return {
        "ca": f"{PKI_DIR}/ca.pem",
        "server-cert": f"{PKI_DIR}/{member}.pem",
        "server-key": f"{PKI_DIR}/{member}-key.pem",
        "peer-cert": f"{PKI_DIR}/{member}-peer.pem",
        "peer-key": f"{PKI_DIR}/{member}-peer-key.pem",
    }


PEM_FIELDS = ("ca", "server-cert", "server-key", "peer-cert", "peer-key")
KEY_FIELDS = ("server-key", "peer-key")


@attrs.frozen
class FirewallPlan:
    """The sources one member admits: the other members (peer port), the client networks."""

    peers: tuple[str, ...]
    clients: tuple[str, ...]
    client_port: int
    peer_port: int

    def spec(self) -> fw.FirewallSpec:
        client_port = fw.check_port(self.client_port, "firewall client-port")
        peer_port = fw.check_port(self.peer_port, "firewall peer-port")
        if client_port == peer_port:
            raise BundleError(f"firewall: client and peer port are both {client_port}")
        # A one-member cluster has no other member: its peer port admits nobody but loopback.
        peers = fw.parse_peers(self.peers) if self.peers else ()
        return fw.FirewallSpec(peers, fw.parse_clients(self.clients), client_port, peer_port)

    def to_json(self) -> dict:
        return {"peers": list(self.peers), "clients": list(self.clients), "client-port": self.client_port,
                "peer-port": self.peer_port}


@attrs.frozen
class Bundle:
    cluster: str
    member: str
    created: str
    pems: Mapping[str, str]  # PEM_FIELDS -> PEM text
    config: str
    unit: str
    sysusers: str
    user: str
    firewall: FirewallPlan

    def body(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION, "cluster": self.cluster, "member": self.member,
            "created": self.created, **{k: self.pems[k] for k in PEM_FIELDS}, "config": self.config,
            "unit": self.unit, "sysusers": self.sysusers, "user": self.user, "firewall": self.firewall.to_json(),
        }


def _digest(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return hashlib.sha256(canonical).hexdigest()


def encode(bundle: Bundle) -> bytes:
    body = bundle.body()
    return (json.dumps({**body, "sha256": _digest(body)}, indent=1) + "\n").encode()


def seal(data: bytes, passphrase: bytes) -> bytes:
    """``data`` encrypted and authenticated under ``passphrase`` (scrypt + AES-256-GCM)."""
    from securekv.snapcrypt.format import Passphrase, SnapshotMeta, encrypt_stream

    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, SnapshotMeta(plaintext_size=len(data)), Passphrase(passphrase), os.urandom)
    return SEALED_MAGIC + out.getvalue()


def unseal(data: bytes, passphrase: bytes | None, source: str) -> bytes:
    from securekv.snapcrypt.format import (Passphrase, SnapshotCryptError, SnapshotKeyError, SnapshotTampered,
                                           decrypt_stream)

    if passphrase is None:
        raise BundleError(f"{source} is sealed with a passphrase; give --passphrase-file")
    out = io.BytesIO()
    try:
        decrypt_stream(io.BytesIO(data[len(SEALED_MAGIC):]), out, Passphrase(passphrase), digest=False)
    except SnapshotKeyError:
        raise BundleError(f"wrong passphrase: it does not open {source}") from None
    except SnapshotTampered:
        raise BundleError(f"{source} is damaged or was modified (the sealed bundle fails authentication)") from None
    except SnapshotCryptError as exc:
        raise BundleError(f"{source} is not a readable sealed bundle ({exc})") from None
    return out.getvalue()


def read_bundle(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Bundle:
    """Read, unseal if needed and parse ``path``; BundleError names the file and the problem."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BUNDLE + 1)
    except OSError as exc:
        raise BundleError(f"cannot read bundle {source}: {exc.strerror or exc}") from None
    if len(raw) > MAX_BUNDLE:
        raise BundleError(f"{source} is larger than {MAX_BUNDLE >> 20} MiB: not a securekv bundle")
    if raw.startswith(SEALED_MAGIC):
        raw = unseal(raw, passphrase, source)
    elif passphrase is not None:
        raise BundleError(f"{source} is not sealed, but --passphrase-file was given; check you have the right file")
    return parse_bundle(raw, source)


def _field(doc: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or not value:
        raise BundleError(f"{source}: field {key!r} is missing or not a {kind.__name__}")
    return value


def parse_bundle(raw: bytes, source: str = "bundle") -> Bundle:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{source} is not a securekv bundle (neither a bundle document nor a sealed bundle)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"{source} is not a securekv bundle (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise BundleError(f"{source} is bundle format version {doc.get('version')!r}; this securekv reads version "
                          f"{VERSION} (plan the cluster with the same securekv version)")
    claimed = doc.pop("sha256", None)
    if not isinstance(claimed, str) or claimed != _digest(doc):
        raise BundleError(f"{source} is damaged or was edited: its sha256 does not match its contents")
    fwdoc = _field(doc, "firewall", dict, source)
    try:
        firewall = FirewallPlan(tuple(fwdoc.get("peers") or ()), tuple(fwdoc.get("clients") or ()),
                                int(fwdoc["client-port"]), int(fwdoc["peer-port"]))
    except (KeyError, TypeError, ValueError):
        raise BundleError(f"{source}: field 'firewall' is malformed") from None
    return Bundle(
        cluster=_field(doc, "cluster", str, source), member=_field(doc, "member", str, source),
        created=_field(doc, "created", str, source),
        pems={k: _field(doc, k, str, source) for k in PEM_FIELDS},
        config=_field(doc, "config", str, source), unit=_field(doc, "unit", str, source),
        sysusers=_field(doc, "sysusers", str, source), user=_field(doc, "user", str, source), firewall=firewall,
    )


# --------------------------------------------------------------------------- verification


@attrs.frozen
class Verified:
    """A bundle that passed every check, with what install needs from it."""

    bundle: Bundle
    config: MemberConfig
    fingerprint: str
    not_after: datetime  # the earliest expiry of its certificates
    spec: fw.FirewallSpec
    warnings: tuple[str, ...] = ()
    program: tuple[str, ...] = ()  # the unit's ExecStart= program (``cluster plan --exec``), for the renewal unit


def bundle_certs(bundle: Bundle, field: str) -> list[x509.Certificate]:
    try:
        return load_certs_pem(bundle.pems[field].encode(), source=f"the bundle's {field}")
    except UsageError as exc:
        raise BundleError(str(exc)) from None


def bundle_key(bundle: Bundle, field: str) -> keys.PrivateKey:
    data = bundle.pems[field].encode()
    if keys.is_encrypted_pem(data):
        raise BundleError(f"the bundle's {field} is passphrase-protected; a member key must be readable by the service")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BundleError(f"the bundle's {field} is not a PEM private key") from None
    return key  # type: ignore[return-value]


def _has_eku(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        return oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False


def _hosts(urls: Any) -> list[str]:
    items = urls if isinstance(urls, list) else str(urls or "").split(",")
    return [urlsplit(u.strip()).hostname or "" for u in items if u.strip()]


def verify(bundle: Bundle, *, now: datetime | None = None, member: str | None = None,
           expect_fingerprint: str | None = None) -> Verified:
    """Every check ``install bundle`` makes before it writes anything; BundleError on the first
    that fails. ``member``: the name this machine must be; ``expect_fingerprint``: the CA pin."""
    from securekv.tlspolicy import VerifiedPeer

    name = bundle.member
    check_name("bundle member", name)
    check_user(bundle.user)
    if member is not None and member != name:
        raise BundleError(f"this bundle is for member {name!r}, not {member!r}")
    try:
        config = parse_config(bundle.config, source=f"the bundle's config for {name}")
    except UsageError as exc:
        raise BundleError(str(exc)) from None
    if config.name != name:
        raise BundleError(f"the bundle is for member {name!r} but its config names {config.name!r}")
    paths = pki_paths(name)
    expected = {
        "client-transport-security": (paths["server-cert"], paths["server-key"]),
        "peer-transport-security": (paths["peer-cert"], paths["peer-key"]),
    }
    for section, (cert_file, key_file) in expected.items():
        sec = config.data.get(section) or {}
        if (sec.get("cert-file"), sec.get("key-file"), sec.get("trusted-ca-file")) != (cert_file, key_file, paths["ca"]):
            raise BundleError(f"the bundle's config {section} does not use the certificates the bundle installs "
                              f"({cert_file}, {key_file}, {paths['ca']})")
    program = _check_unit_files(bundle)

    anchors = bundle_certs(bundle, "ca")
    if len(anchors) != 1 or not is_ca(anchors[0]):
        raise BundleError("the bundle's ca must be exactly one CA certificate")
    ca = anchors[0]
    fingerprint = ca_fingerprint(ca)
    if expect_fingerprint is not None and expect_fingerprint.strip().lower() != fingerprint:
        raise BundleError(f"the bundle's CA is {fingerprint}, not the pinned {expect_fingerprint.strip()}: "
                          "this bundle was not made by your CA")
    moment = utcnow(now)
    earliest = ca.not_valid_after_utc
    for role, usages in (("server", (ExtendedKeyUsageOID.SERVER_AUTH,)),
                         ("peer", (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))):
        chain = bundle_certs(bundle, f"{role}-cert")
        try:
            verify_chain(chain, [ca], now=moment)  # signatures up to the CA, and validity periods
        except UsageError as exc:
            raise BundleError(f"the {role} certificate of {name}: {exc}") from None
        leaf = chain[0]
        if not keys.same_public_key(bundle_key(bundle, f"{role}-key"), leaf.public_key()):
            raise BundleError(f"the bundle's {role}-key does not match its {role} certificate")
        for oid in usages:
            if not _has_eku(leaf, oid):
                raise BundleError(f"the {role} certificate of {name} lacks the {oid._name} usage")
        earliest = min(earliest, leaf.not_valid_after_utc)
        sans = cert_sans(leaf)
        urls_key = "advertise-client-urls" if role == "server" else "initial-advertise-peer-urls"
        for host in _hosts(config.data.get(urls_key)):
            if not sans_cover(sans, host):
                raise BundleError(f"the {role} certificate of {name} does not cover {host} ({urls_key}); "
                                  f"it covers {', '.join(sans.as_strings()) or 'nothing'}")
        if role == "peer":
            named = VerifiedPeer((leaf,)).member_name
            if named != name:
                raise BundleError(f"the peer certificate names member {named!r}, not {name!r}: the other members "
                                  "would refuse it")
    warnings = []
    if earliest - moment < EXPIRY_WARNING:
        warnings.append(f"a certificate of {name} expires on {earliest:%Y-%m-%d %H:%M:%SZ}, in less than "
                        f"{EXPIRY_WARNING.days} days; renew it")
    try:
        spec = bundle.firewall.spec()
    except UsageError as exc:
        raise BundleError(f"the bundle's firewall plan: {exc}") from None
    others = _other_members(config)
    if others is not None and set(spec.peers) != others:
        raise BundleError(f"the bundle's firewall admits {', '.join(map(str, spec.peers)) or 'no member'} on the peer "
                          f"port, but the other members are {', '.join(map(str, sorted(others, key=str))) or 'none'}")
    ports = {port for _, port in config.listen_ports}
    if spec.client_port not in ports or spec.peer_port not in ports:
        raise BundleError(f"the bundle's firewall ports ({spec.client_port}, {spec.peer_port}) are not the ports its "
                          "config listens on")
    return Verified(bundle, config, fingerprint, earliest, spec, tuple(warnings), program)


def _check_unit_files(bundle: Bundle) -> tuple[str, ...]:
    """The unit and the sysusers entry must be exactly what securekv renders for the bundle's
    user and program. They are installed as root-owned system files: a line added to the unit
    (``ExecStartPre=+...``: a command run as root outside the sandbox) or to the sysusers entry
    is not caught by the digest (anyone can recompute it) nor by the certificate checks or the
    CA pin (the certificates can be the real ones), so the text itself is checked. Only the
    program (``--exec`` of ``cluster plan``) may vary; it is read back from the ExecStart= line
    and must pass the same checks as at plan time. Returns that program (the renewal unit runs it)."""
    import shlex

    from securekv.deploy.systemd import UnitOptions, render_sysusers, render_unit

    if bundle.sysusers != render_sysusers(bundle.user):
        raise BundleError("the bundle's sysusers entry is not the one securekv renders for user "
                          f"{bundle.user!r} (edited?); refusing to install it")
    lines = [line for line in bundle.unit.splitlines() if line.startswith("ExecStart=")]
    words: list[str] = []
    if len(lines) == 1:
        try:
            words = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(lines[0][len("ExecStart="):])]
        except ValueError:
            words = []
    for end in range(1, len(words) + 1):
        try:
            expected = render_unit(UnitOptions(exec_start=tuple(words[:end]), user=bundle.user,
                                               config_file=CONFIG_PATH))
        except UsageError:
            continue
        if expected == bundle.unit:
            return tuple(words[:end])
    raise BundleError(f"the bundle's unit is not the unit securekv renders for user {bundle.user!r} and its "
                      f"ExecStart= program (edited?); refusing to install it")


def _other_members(config: MemberConfig) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The addresses of the other members in ``initial-cluster`` (None if one is a DNS name)."""
    out = set()
    for entry in str(config.data.get("initial-cluster", "")).split(","):
        name, _, url = entry.strip().partition("=")
        if not url or name == config.name:
            continue
        try:
            out.add(ipaddress.ip_address(urlsplit(url).hostname or ""))
        except ValueError:
            return None
    return out


# --------------------------------------------------------------------------- installing


def renewal_endpoints(verified: Verified) -> tuple[str, ...]:
    """Where the renewal timer asks for new certificates by default: every member's client URL
    (its ``initial-cluster`` peer address on the plan's client port, which all members share);
    ``cluster renew`` tries them in turn until one with a signing CA answers."""
    port = verified.bundle.firewall.client_port
    out: list[str] = []
    for entry in str(verified.config.data.get("initial-cluster", "")).split(","):
        host = urlsplit(entry.strip().partition("=")[2]).hostname
        if host:
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            if url not in out:
                out.append(url)
    return tuple(out)


def install_files(verified: Verified, renew_endpoints: tuple[str, ...] = ()) -> tuple[RenderedFile, ...]:
    """The files ``install bundle`` puts in place (paths on the target system), firewall rules
    aside (they depend on the backend: ``securekv.deploy.firewall.render``).

    The renewal service and timer are the ones ``cluster join`` writes, rendered here at install
    time (not carried in the bundle): their text comes from securekv and the verified bundle
    (its program, its certificate paths), so there is nothing in them to forge, and a second
    install compares them byte for byte like every other file. ``renew_endpoints``: the signing
    members to renew through (default ``renewal_endpoints``)."""
    from securekv.cluster import renew_timer

    bundle = verified.bundle
    paths = pki_paths(bundle.member)
    files = [RenderedFile(paths[k], bundle.pems[k], 0o600 if k in KEY_FIELDS else 0o644) for k in PEM_FIELDS]
    files += [
        RenderedFile(CONFIG_PATH, bundle.config, 0o644),
        RenderedFile(UNIT_PATH, bundle.unit, 0o644),
        RenderedFile(SYSUSERS_PATH, bundle.sysusers, 0o644),
        RenderedFile(renew_timer.SERVICE_PATH, renew_timer.render_service(
            verified.program, renew_endpoints or renewal_endpoints(verified), paths, PKI_DIR), 0o644),
        RenderedFile(renew_timer.TIMER_PATH, renew_timer.render_timer(), 0o644),
    ]
    return tuple(files)


def owned_by_service(path: str) -> bool:
    """Certificates and keys belong to the service user (it must read its keys, 0600)."""
    return path.startswith(PKI_DIR + "/")


def pending(files: tuple[RenderedFile, ...], root: str, owner: tuple[int, int] | None
            ) -> tuple[list[RenderedFile], list[Path]]:
    """(files whose content or mode differs on disk, service-owned paths whose owner differs).

    Both empty: the bundle is installed already and a run changes nothing.
    """
    from securekv.deploy.install import resolve_under_root

    to_write: list[RenderedFile] = []
    to_chown: list[Path] = []
    for f in files:
        target = resolve_under_root(root, f.path)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            to_write.append(f)
            if owner is not None and owned_by_service(f.path):
                to_chown.append(target)
            continue
        if (not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != f.mode
                or target.read_bytes() != f.content.encode()):
            to_write.append(f)
        if owner is not None and owned_by_service(f.path) and (
                f in to_write or (st.st_uid, st.st_gid) != owner):
            to_chown.append(target)
    return to_write, to_chown


def listen_addresses(config: MemberConfig) -> list[str]:
    """The IP addresses the member binds (to tell the operator which must exist on the host)."""
    out = []
    for host, _ in config.listen_ports:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not address.is_loopback and str(address) not in out:
            out.append(str(address))
    return out


def firewall_load_hint(backend: str, files: tuple[RenderedFile, ...]) -> list[str]:
    """How to load the persistent rules into the running firewall (``--enable --now`` does it)."""
    paths = [f.path for f in files]
    if backend == "nftables":
        return [f"nft -f {paths[0]}   # and include it from /etc/nftables.conf to load it at boot"]
    if backend == "iptables":
        return [f"iptables-restore -w --noflush {paths[0]} && iptables -w -I INPUT 1 -j {fw.CHAIN}",
                f"ip6tables-restore -w --noflush {paths[1]} && ip6tables -w -I INPUT 1 -j {fw.CHAIN}"]
    if backend == "firewalld":
        return [f"firewall-cmd --permanent --new-policy-from-file={paths[0]} --name={fw.POLICY} && firewall-cmd --reload"]
    return [f"sh {paths[0]}"]


__all__ = ["Bundle", "BundleError", "FirewallPlan", "PKI_DIR", "Verified", "ca_fingerprint", "encode",
           "install_files", "parse_bundle", "pending", "pki_paths", "read_bundle", "renewal_endpoints", "seal",
           "verify"]
