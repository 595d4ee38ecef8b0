"""``securekv cluster plan``: one command from a member list to a bundle per member.

Everything is validated before the first byte is written (names and addresses unique, ports,
networks, DNS names, the CA readable and able to sign, no bundle overwritten without
``--force``); then the CA is created if needed, every certificate is issued in memory, and all
files are written at once. A refused plan writes nothing.

What each member gets (see ``securekv.cluster.bundle`` for the file format):
  * a server certificate (client port) and a peer certificate (CN and ``securekv://member/NAME``
    URI SAN: the peer port binds it to the member, docs/peer.md), both covering the member's
    address, its ``--dns`` names and, when the member is not on loopback itself, 127.0.0.1 and
    localhost (the extra loopback client listener for local tools);
  * its config in etcd config-file keys (``initial-cluster`` of every member, mutual TLS on both
    ports), the hardened unit and the sysusers.d entry ``install systemd`` renders;
  * its firewall plan: the peer port admits the *other* members only, the client port the client
    networks only (default: the members' addresses).

``DIR/admin/`` gets a client certificate with CN ``root`` and ``securekv.env`` with the
ETCDCTL_* variables (``securekv ctl`` reads them too).
"""

from __future__ import annotations

import ipaddress
import secrets
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import attrs

from securekv.cluster.bundle import Bundle, FirewallPlan, ca_fingerprint, encode, pki_paths, seal
from securekv.deploy import firewall as fw
from securekv.deploy.config import STATE_DIR
from securekv.deploy.systemd import CONFIG_PATH, UnitOptions, check_exec_start, check_user, render_config, render_sysusers, render_unit
from securekv.deploy.values import check_name
from securekv.errors import UsageError
from securekv.pki import keys
from securekv.pki.ca import CA, CA_CERT, CA_CONFIG, CA_KEY, init_ca, load_ca, pem, validity
from securekv.pki.cfssl import SigningConfig, default_config, load_config
from securekv.pki.issue import build_leaf, check_name_constraints
from securekv.pki.names import build_subject, parse_hosts, validate_dns_name
from securekv.pki.verify import utcnow
from securekv.tlspolicy.identity import member_uri

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ADMIN_USER = "root"  # the RBAC superuser's name: a client certificate with this CN acts as root
ENV_FILE = "securekv.env"
LOCAL_HOSTS = ("127.0.0.1", "localhost")  # the extra local client listener's names


@attrs.frozen
class Member:
    name: str
    address: IPAddress
    dns: tuple[str, ...] = ()

    def host(self) -> str:
        return f"[{self.address}]" if self.address.version == 6 else str(self.address)

    def client_url(self, port: int) -> str:
        return f"https://{self.host()}:{port}"

    def peer_url(self, port: int) -> str:
        return f"https://{self.host()}:{port}"

    def cert_hosts(self, loopback_members: Sequence[IPAddress] = (), local: bool = True) -> list[str]:
        """The SANs of both certificates. A member on a loopback address shares its machine with
        every other loopback member, and a connection to 127.0.0.x leaves from 127.0.0.x (the
        kernel picks the destination as source), so the peer port's check that a client
        certificate covers the address it connects from (etcd's checkCertSAN) needs all of them."""
        hosts = [str(self.address), *self.dns]
        if self.address.is_loopback:
            hosts += [str(a) for a in loopback_members if a != self.address]
        elif local:
            hosts += list(LOCAL_HOSTS)
        return hosts


@attrs.frozen
class ClusterSpec:
    """A validated cluster: what ``--dry-run`` shows and what the bundles are made from."""

    name: str
    members: tuple[Member, ...]
    clients: tuple[IPNetwork, ...]
    client_port: int = 2379
    peer_port: int = 2380
    user: str = "securekv"
    exec_start: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url(self.peer_port)}" for m in self.members)

    def endpoints(self) -> str:
        return ",".join(m.client_url(self.client_port) for m in self.members)

    def peers_of(self, member: Member) -> tuple[str, ...]:
        return tuple(str(m.address) for m in self.members if m is not member)


def _split_pair(item: str, option: str, what: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"{option} {item!r} is not NAME={what}")
    return name.strip(), value.strip()


def parse_members(values: Sequence[str]) -> list[tuple[str, IPAddress]]:
    out: list[tuple[str, IPAddress]] = []
    seen_names: set[str] = set()
    seen_addresses: dict[IPAddress, str] = {}
    for item in values:
        name, text = _split_pair(item, "--member", "ADDRESS")
        check_name("--member name", name)
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            raise UsageError(f"--member {item!r}: {text!r} is not an IP address (members listen on IP addresses; "
                             "give DNS names with --dns NAME=HOST)") from None
        try:  # the firewall's rules for addresses: no zone index, not IPv4-mapped, unspecified or multicast
            fw.parse_peers([bare])
        except UsageError as exc:
            raise UsageError(f"--member {item!r}: " + str(exc).removeprefix("--peers: ")) from None
        if name in seen_names:
            raise UsageError(f"member name {name!r} is given twice: every member needs its own name")
        if address in seen_addresses:
            raise UsageError(f"address {address} is given to both {seen_addresses[address]} and {name}: "
                             "every member needs its own address")
        seen_names.add(name)
        seen_addresses[address] = name
        out.append((name, address))
    if not out:
        raise UsageError("give at least one --member NAME=ADDRESS")
    return out


def parse_dns(values: Sequence[str], names: Iterable[str]) -> dict[str, list[str]]:
    known = list(names)
    out: dict[str, list[str]] = {}
    for item in values:
        name, host = _split_pair(item, "--dns", "HOST")
        if name not in known:
            raise UsageError(f"--dns {item!r}: no member is called {name!r} (members: {', '.join(known)})")
        host = validate_dns_name(host)
        if host not in out.setdefault(name, []):
            out[name].append(host)
    return out


def make_spec(name: str, members: Sequence[str], *, dns: Sequence[str] = (), client_networks: Sequence[str] = (),
              client_port: int = 2379, peer_port: int = 2380, user: str = "securekv",
              exec_start: Sequence[str] = ()) -> ClusterSpec:
    check_name("--name", name)
    pairs = parse_members(members)
    names = [n for n, _ in pairs]
    hosts = parse_dns(dns, names)
    all_dns = [h for hs in hosts.values() for h in hs]
    for host in all_dns:
        owners = [n for n, hs in hosts.items() if host in hs]
        if len(owners) > 1:
            raise UsageError(f"DNS name {host} is given to both {owners[0]} and {owners[1]}")
    fw.check_port(client_port, "--client-port")
    fw.check_port(peer_port, "--peer-port")
    if client_port == peer_port:
        raise UsageError(f"port {client_port} is used twice: --client-port and --peer-port must differ")
    if client_networks:
        clients = fw.parse_clients(list(client_networks))
    else:
        clients = fw.parse_clients([f"{a}/{a.max_prefixlen}" for _, a in pairs])
    warnings = []
    if len(pairs) % 2 == 0:
        n = len(pairs)
        warnings.append(f"{n} members (an even count) need a quorum of {n // 2 + 1} and survive {(n - 1) // 2} "
                        f"failure(s), as {n - 1} would: the extra member adds load, not fault tolerance; "
                        "use an odd number of members")
    if not client_networks:
        warnings.append("no --client-network: the client port admits only the members' own addresses (and loopback)")
    return ClusterSpec(name, tuple(Member(n, a, tuple(hosts.get(n, ()))) for n, a in pairs), clients, client_port,
                       peer_port, check_user(user), check_exec_start(tuple(exec_start)), tuple(warnings))


def member_config(spec: ClusterSpec, member: Member, token: str, local: bool = True) -> dict:
    """The member's config. ``local``: also listen on 127.0.0.1 for tools on the machine (off when
    the CA's name constraints do not permit 127.0.0.1/localhost in a certificate)."""
    paths = pki_paths(member.name)
    client_url = member.client_url(spec.client_port)
    listen = [client_url]
    if local and not member.address.is_loopback:
        listen.append(f"https://127.0.0.1:{spec.client_port}")  # local etcdctl and health checks
    return {
        "name": member.name,
        "data-dir": f"{STATE_DIR}/{member.name}",
        "listen-client-urls": ",".join(listen),
        "advertise-client-urls": client_url,
        "listen-peer-urls": member.peer_url(spec.peer_port),
        "initial-advertise-peer-urls": member.peer_url(spec.peer_port),
        "initial-cluster": spec.initial_cluster(),
        "initial-cluster-state": "new",
        "initial-cluster-token": token,
        "client-transport-security": {
            "cert-file": paths["server-cert"], "key-file": paths["server-key"], "trusted-ca-file": paths["ca"],
            "client-cert-auth": True,
        },
        "peer-transport-security": {
            "cert-file": paths["peer-cert"], "key-file": paths["peer-key"], "trusted-ca-file": paths["ca"],
            "client-cert-auth": True,
        },
    }


# --------------------------------------------------------------------------- certificates in memory


def _signing(ca: CA) -> SigningConfig:
    path = ca.dir / CA_CONFIG
    return load_config(path) if path.exists() else default_config()


@attrs.frozen
class Leaf:
    cert_pem: str  # leaf, then the CA's intermediates
    key_pem: str
    not_after: datetime
    warning: str | None = None


def issue_leaf(ca: CA, signing: SigningConfig, profile: str, cn: str, hosts: Sequence[str],
               uris: Sequence[str] = (), now: datetime | None = None) -> Leaf:
    """Like ``securekv pki issue`` but returns the certificate and key instead of writing them."""
    prof = signing.profile(profile, source=str(ca.dir / CA_CONFIG))
    sans = parse_hosts(hosts, uris)
    check_name_constraints(ca, sans)
    not_before, not_after, warning = validity(utcnow(now), prof.expiry, ca.cert.not_valid_after_utc, "CA",
                                             ca.cert.not_valid_before_utc)
    key = keys.generate_key(keys.key_spec(None, None))
    cert = build_leaf(ca, build_subject(cn), key.public_key(), sans, prof.usages, not_before, not_after)
    body = pem(cert) + b"".join(pem(c) for c in ca.chain)
    return Leaf(body.decode(), keys.key_to_pem(key).decode(), not_after, warning)


def _permits_local(ca: CA) -> bool:
    try:
        check_name_constraints(ca, parse_hosts(LOCAL_HOSTS))
    except UsageError:
        return False
    return True


# --------------------------------------------------------------------------- the plan


@attrs.frozen
class PlannedFile:
    path: Path
    content: bytes
    mode: int


@attrs.frozen
class PlanResult:
    spec: ClusterSpec
    files: tuple[PlannedFile, ...]
    fingerprint: str
    ca_created: bool
    ca_dir: Path
    warnings: tuple[str, ...]


def check_out_dir(out: Path, spec: ClusterSpec, force: bool) -> None:
    """Refuse before writing: an ``--out`` that is a file, or bundles that would be replaced."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if force:
        return
    existing = [str(out / f"{m.name}.bundle") for m in spec.members if (out / f"{m.name}.bundle").exists()]
    if (out / "admin" / "root-key.pem").exists():
        existing.append(str(out / "admin"))
    if existing:
        raise UsageError(f"{', '.join(existing)} already exist; pass --force to plan again (new keys and certificates)")


def load_signing_ca(ca_dir: Path, passphrase: bytes | None) -> CA:
    """The CA that signs the cluster's certificates; every problem is one clear UsageError."""
    key_path = ca_dir / CA_KEY
    if passphrase is None and key_path.is_file():
        try:
            head = key_path.read_bytes()[:200]
        except OSError as exc:
            raise UsageError(f"cannot use the CA in {ca_dir}: cannot read {key_path}: {exc.strerror}") from None
        if keys.is_encrypted_pem(head):
            raise UsageError(f"the CA key {key_path} is passphrase-protected; give --ca-passphrase-file")
    try:
        ca = load_ca(ca_dir, passphrase=passphrase)
    except UsageError as exc:
        raise UsageError(f"cannot use the CA in {ca_dir}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use the CA in {ca_dir}: {exc}") from None
    return ca


def signing_ca(out: Path, ca_dir: Path | None, passphrase: bytes | None, cluster: str) -> tuple[CA, bool]:
    """(the CA to sign with, whether it was created now): ``--ca DIR``, else ``OUT/ca`` of an
    earlier plan, else a new CA in ``OUT/ca``. Call it only after every other check passed."""
    if ca_dir is not None:
        return load_signing_ca(ca_dir, passphrase), False
    own = out / "ca"
    if (own / CA_CERT).exists():
        return load_signing_ca(own, passphrase), False
    if own.exists() and not own.is_dir():
        raise UsageError(f"{own} exists and is not a directory")
    init_ca(own, cn=f"securekv {cluster} CA", passphrase=passphrase)
    return load_ca(own, passphrase=passphrase), True


def build_plan(spec: ClusterSpec, out: Path, ca: CA, *, ca_created: bool, seal_passphrase: bytes | None = None,
               now: datetime | None = None) -> PlanResult:
    """Issue every certificate and render every bundle, in memory."""
    moment = utcnow(now)
    signing = _signing(ca)
    token = f"{spec.name}-{secrets.token_hex(8)}"
    anchor = pem(ca.root).decode()
    files: list[PlannedFile] = []
    warnings = list(spec.warnings)
    unit = render_unit(UnitOptions(exec_start=spec.exec_start, user=spec.user, config_file=CONFIG_PATH))
    sysusers = render_sysusers(spec.user)
    loopback = [m.address for m in spec.members if m.address.is_loopback]
    local = _permits_local(ca)
    if not local and not all(m.address.is_loopback for m in spec.members):
        warnings.append("the CA's name constraints do not permit 127.0.0.1/localhost: members get no local client "
                        "listener; local tools use the member's address")
    for member in spec.members:
        hosts = member.cert_hosts(loopback, local)
        server = issue_leaf(ca, signing, "server", member.name, hosts, now=moment)
        peer = issue_leaf(ca, signing, "peer", member.name, hosts, [member_uri(member.name)], now=moment)
        for leaf in (server, peer):
            if leaf.warning and leaf.warning not in warnings:
                warnings.append(leaf.warning)
        config = render_config(member_config(spec, member, token, local)).replace(
            "installed by `securekv install systemd`", f"from `securekv cluster plan` for cluster {spec.name}")
        bundle = Bundle(
            cluster=spec.name, member=member.name, created=moment.isoformat(),
            pems={"ca": anchor, "server-cert": server.cert_pem, "server-key": server.key_pem,
                  "peer-cert": peer.cert_pem, "peer-key": peer.key_pem},
            config=config, unit=unit, sysusers=sysusers, user=spec.user,
            firewall=FirewallPlan(spec.peers_of(member), tuple(map(str, spec.clients)), spec.client_port,
                                  spec.peer_port),
        )
        data = encode(bundle)
        if seal_passphrase is not None:
            data = seal(data, seal_passphrase)
        files.append(PlannedFile(out / f"{member.name}.bundle", data, 0o600))
    admin = issue_leaf(ca, signing, "client", ADMIN_USER, [], now=moment)
    admin_dir = out.absolute() / "admin"
    files += [
        PlannedFile(out / "admin" / "ca.pem", anchor.encode(), 0o644),
        PlannedFile(out / "admin" / f"{ADMIN_USER}.pem", admin.cert_pem.encode(), 0o644),
        PlannedFile(out / "admin" / f"{ADMIN_USER}-key.pem", admin.key_pem.encode(), 0o600),
        PlannedFile(out / "admin" / ENV_FILE, env_file(spec, admin_dir).encode(), 0o644),
    ]
    return PlanResult(spec, tuple(files), ca_fingerprint(ca.root), ca_created, ca.dir, tuple(warnings))


def env_file(spec: ClusterSpec, admin_dir: Path) -> str:
    """ETCDCTL_* for etcdctl and ``securekv ctl`` (which reads them as well)."""
    d = admin_dir.absolute()
    return "\n".join([
        f"# securekv cluster {spec.name}: client settings for etcdctl and `securekv ctl` (user {ADMIN_USER}).",
        "# In a shell: set -a; . ./securekv.env; set +a   (also a systemd EnvironmentFile=)",
        "ETCDCTL_API=3",
        f"ETCDCTL_ENDPOINTS={spec.endpoints()}",
        f"ETCDCTL_CACERT={d / 'ca.pem'}",
        f"ETCDCTL_CERT={d / f'{ADMIN_USER}.pem'}",
        f"ETCDCTL_KEY={d / f'{ADMIN_USER}-key.pem'}",
        "",
    ])


def write_plan(result: PlanResult) -> None:
    """All planned files at once (the ``--out`` and ``admin`` directories 0700)."""
    from securekv.fsutil import atomic_write_many, fsync_dir
    from securekv.pki.files import check_targets

    check_targets(f.path for f in result.files)
    for directory in sorted({f.path.parent for f in result.files}, key=lambda p: len(p.parts)):
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
            fsync_dir(directory.parent)
    atomic_write_many([(f.path, f.content, f.mode) for f in result.files])
