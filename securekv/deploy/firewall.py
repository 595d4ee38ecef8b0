"""Render firewall rules that open the peer port to members only and the client port to clients only.

One validated :class:`FirewallSpec` renders to four backends. Each rendering is idempotent by
construction — it owns a dedicated object (nftables table, iptables chain, firewalld policy, ufw
rules that ufw itself de-duplicates) and replaces it whole — so applying twice adds nothing.

Semantics, the same on every backend, IPv4 and IPv6:
  * traffic arriving on the loopback interface is left alone (local etcdctl, health checks);
  * tcp/peer-port is accepted from the member addresses, tcp/client-port from the client networks;
  * every other packet to either port is dropped.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

import attrs

from securekv.errors import UsageError

BACKENDS = ("nftables", "iptables", "firewalld", "ufw")
CHAIN = "SECUREKV"  # iptables chain
TABLE = "securekv"  # nftables table (family inet)
POLICY = "securekv"  # firewalld policy name (file name limit: 17 characters)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class FirewallSpec:
    peers: tuple[IPAddress, ...]
    clients: tuple[IPNetwork, ...]
    client_port: int = 2379
    peer_port: int = 2380

    def peers_of(self, version: int) -> tuple[IPAddress, ...]:
        return tuple(a for a in self.peers if a.version == version)

    def clients_of(self, version: int) -> tuple[IPNetwork, ...]:
        return tuple(n for n in self.clients if n.version == version)


@attrs.frozen
class RenderedFile:
    path: str  # absolute path on the target system
    content: str
    mode: int = 0o644


# --------------------------------------------------------------------------- validation


def _split(values: str | Iterable[str]) -> list[str]:
    items = values.split(",") if isinstance(values, str) else list(values)
    return [item.strip() for item in items]


def parse_peers(values: str | Iterable[str]) -> tuple[IPAddress, ...]:
    found: set[IPAddress] = set()
    for item in _split(values):
        if not item:
            raise UsageError("--peers has an empty entry (check for a stray comma)")
        text = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise UsageError(f"--peers: {item!r} is not an IPv4 or IPv6 address") from None
        _check_plain(address, address.max_prefixlen, "--peers", item)
        if address.is_unspecified or address.is_multicast:
            raise UsageError(f"--peers: {item} is not a member's address")
        found.add(address)
    if not found:
        raise UsageError("--peers needs at least one member address")
    return tuple(sorted(found, key=lambda a: (a.version, a)))


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _check_plain(address: IPAddress, prefixlen: int, option: str, item: str) -> None:
    """Refuse forms no firewall rule can match: a zone index, an IPv4-mapped IPv6 address.

    A zone (``fe80::1%eth0``) is not part of a packet's address and breaks nft's syntax; a packet
    from an IPv4 host carries its IPv4 address, so an ``::ffff:a.b.c.d`` rule would never match.
    """
    if address.version == 6 and address.scope_id:
        bare = ipaddress.IPv6Address(int(address))
        plain = str(bare) if "/" not in item else str(ipaddress.ip_network((int(bare), prefixlen), strict=False))
        raise UsageError(f"{option}: {item} has a zone index (%{address.scope_id}); firewall rules match "
                         f"addresses only, give {plain}")
    if address.version == 6 and address in _MAPPED and prefixlen >= 96:
        v4 = ipaddress.ip_network((int(address) & 0xFFFFFFFF, prefixlen - 96), strict=False)
        plain = str(v4.network_address) if "/" not in item else str(v4)
        raise UsageError(f"{option}: {item} is an IPv4-mapped IPv6 address; packets from it arrive as IPv4, give {plain}")


def parse_port(value: str | int, what: str) -> int:
    """A port from the command line: digits only, 1-65535 (click's int would accept '+1', ' 1')."""
    if isinstance(value, str):
        if not value.isdigit():
            raise UsageError(f"{what} must be a TCP port between 1 and 65535, got {value!r}")
        value = int(value)
    return check_port(value, what)


def parse_clients(values: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    found: set[IPNetwork] = set()
    for item in _split(values):
        if not item:
            raise UsageError("--clients has an empty entry (check for a stray comma)")
        try:
            network = ipaddress.ip_network(item, strict=False)
            host = ipaddress.ip_address(item.split("/", 1)[0])
        except ValueError:
            raise UsageError(f"--clients: {item!r} is not an IPv4 or IPv6 network (CIDR)") from None
        _check_plain(host, network.prefixlen, "--clients", item)
        if host != network.network_address:
            raise UsageError(f"--clients: {item} has host bits set; did you mean {network}?")
        found.add(network)
    if not found:
        raise UsageError("--clients needs at least one network")
    # Drop networks contained in another listed network: same effect, shorter rule sets.
    kept = [n for n in found if not any(o != n and o.version == n.version and n.subnet_of(o) for o in found)]
    return tuple(sorted(kept, key=lambda n: (n.version, n)))


def check_port(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise UsageError(f"{what} must be a TCP port between 1 and 65535, got {value!r}")
    return value


def make_spec(peers: str | Iterable[str], clients: str | Iterable[str], client_port: int = 2379, peer_port: int = 2380) -> FirewallSpec:
    client_port = check_port(client_port, "--client-port")
    peer_port = check_port(peer_port, "--peer-port")
    if client_port == peer_port:
        raise UsageError(f"port {client_port} is used twice: --client-port and --peer-port must differ")
    return FirewallSpec(parse_peers(peers), parse_clients(clients), client_port, peer_port)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UsageError(f"unknown firewall backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


# --------------------------------------------------------------------------- renderers

_HEADER = "rendered by `securekv install firewall`; do not edit, re-render instead"


def describe(spec: FirewallSpec) -> list[str]:
    return [
        f"peers   tcp/{spec.peer_port}: {', '.join(map(str, spec.peers))}",
        f"clients tcp/{spec.client_port}: {', '.join(map(str, spec.clients))}",
    ]


def render_nftables(spec: FirewallSpec) -> list[RenderedFile]:
    """One ``inet`` table, deleted and recreated in the same atomic nft transaction."""
    out = ["#!/usr/sbin/nft -f", f"# securekv firewall ({_HEADER})"]
    out += [f"# {line}" for line in describe(spec)]
    out += [
        "",
        "# Declaring the table first makes the delete succeed on a first run; nft -f applies the",
        "# whole file as one transaction, so there is no moment without the rules.",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        "",
        f"table inet {TABLE} {{",
    ]
    sets: list[tuple[str, str, Sequence[object], bool]] = [
        ("peers_v4", "ipv4_addr", spec.peers_of(4), False),
        ("peers_v6", "ipv6_addr", spec.peers_of(6), False),
        ("clients_v4", "ipv4_addr", spec.clients_of(4), True),
        ("clients_v6", "ipv6_addr", spec.clients_of(6), True),
    ]
    for name, kind, elements, interval in sets:
        if not elements:
            continue
        out.append(f"\tset {name} {{")
        out.append(f"\t\ttype {kind}")
        if interval:
            out.append("\t\tflags interval")
        out.append(f"\t\telements = {{ {', '.join(map(str, elements))} }}")
        out.append("\t}")
        out.append("")
    out += [
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        '\t\tiifname "lo" accept',
    ]
    rules = [
        ("peers_v4", "ip", spec.peer_port),
        ("peers_v6", "ip6", spec.peer_port),
        ("clients_v4", "ip", spec.client_port),
        ("clients_v6", "ip6", spec.client_port),
    ]
    present = {name for name, _, elements, _ in sets if elements}
    for name, family, port in rules:
        if name in present:
            out.append(f"\t\ttcp dport {port} {family} saddr @{name} accept")
    out += [
        f"\t\ttcp dport {{ {spec.client_port}, {spec.peer_port} }} drop",
        "\t}",
        "}",
        "",
    ]
    return [RenderedFile("/etc/nftables.d/securekv.nft", "\n".join(out))]


def _iptables_file(spec: FirewallSpec, version: int) -> str:
    host = 32 if version == 4 else 128
    out = [
        f"# securekv firewall for {'iptables' if version == 4 else 'ip6tables'}-restore --noflush ({_HEADER})",
        *[f"# {line}" for line in describe(spec)],
        f"# The chain is created or flushed here; the INPUT jump is added once: -I INPUT -j {CHAIN}",
        "*filter",
        f":{CHAIN} - [0:0]",
        f"-F {CHAIN}",
        f"-A {CHAIN} -i lo -j RETURN",
    ]
    for address in spec.peers_of(version):
        out.append(f"-A {CHAIN} -s {address}/{host} -p tcp -m tcp --dport {spec.peer_port} -j ACCEPT")
    for network in spec.clients_of(version):
        out.append(f"-A {CHAIN} -s {network} -p tcp -m tcp --dport {spec.client_port} -j ACCEPT")
    out += [
        f"-A {CHAIN} -p tcp -m tcp --dport {spec.peer_port} -j DROP",
        f"-A {CHAIN} -p tcp -m tcp --dport {spec.client_port} -j DROP",
        "COMMIT",
        "",
    ]
    return "\n".join(out)


def render_iptables(spec: FirewallSpec) -> list[RenderedFile]:
    """A dedicated chain per family, loaded with iptables-restore/ip6tables-restore --noflush."""
    return [
        RenderedFile("/etc/iptables/securekv.rules", _iptables_file(spec, 4)),
        RenderedFile("/etc/iptables/securekv6.rules", _iptables_file(spec, 6)),
    ]


def render_firewalld(spec: FirewallSpec) -> list[RenderedFile]:
    """A firewalld policy (ingress ANY → HOST) of rich rules: accepts at priority -2, drops at -1.

    Rich rules are sorted by priority first, so the explicit priorities guarantee accept before
    drop; a negative policy priority runs it before the zones' own rules.
    """
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<policy target="CONTINUE" priority="-100">',
        '  <ingress-zone name="ANY"/>',
        '  <egress-zone name="HOST"/>',
        f"  <short>{POLICY}</short>",
        f"  <description>{escape(_HEADER + '. ' + '; '.join(describe(spec)))}</description>",
    ]

    def rule(family: str | None, source: str | None, port: int, action: str, priority: int) -> None:
        fam = f" family={quoteattr(family)}" if family else ""
        out.append(f'  <rule{fam} priority="{priority}">')
        if source is not None:
            out.append(f"    <source address={quoteattr(source)}/>")
        out.append(f'    <port port="{port}" protocol="tcp"/>')
        out.append(f"    <{action}/>")
        out.append("  </rule>")

    for address in spec.peers:
        rule(f"ipv{address.version}", str(address), spec.peer_port, "accept", -2)
    for network in spec.clients:
        rule(f"ipv{network.version}", str(network), spec.client_port, "accept", -2)
    rule(None, None, spec.peer_port, "drop", -1)
    rule(None, None, spec.client_port, "drop", -1)
    out += ["</policy>", ""]
    return [RenderedFile(f"/etc/firewalld/policies/{POLICY}.xml", "\n".join(out))]


def ufw_commands(spec: FirewallSpec) -> list[list[str]]:
    """ufw rule commands, in the order to run them.

    ``prepend`` puts each rule at the top of ufw's list (ahead of any broader allow the host
    already has), so the denies go first and the allows after them end up above the denies.
    ufw skips a rule that already exists, which makes re-running add nothing.
    """
    commands: list[list[str]] = []
    for port, what in ((spec.client_port, "client"), (spec.peer_port, "peer")):
        commands.append(["ufw", "prepend", "deny", "proto", "tcp", "from", "any", "to", "any", "port", str(port), "comment", f"securekv {what} default deny"])
    allows: list[list[str]] = []
    for address in spec.peers:
        allows.append(["ufw", "prepend", "allow", "proto", "tcp", "from", str(address), "to", "any", "port", str(spec.peer_port), "comment", "securekv peer"])
    for network in spec.clients:
        allows.append(["ufw", "prepend", "allow", "proto", "tcp", "from", str(network), "to", "any", "port", str(spec.client_port), "comment", "securekv client"])
    commands.extend(reversed(allows))
    return commands


def _shell_word(word: str) -> str:
    return f"'{word}'" if " " in word else word


def render_ufw(spec: FirewallSpec) -> list[RenderedFile]:
    lines = ["#!/bin/sh", f"# securekv firewall for ufw ({_HEADER})", *[f"# {line}" for line in describe(spec)], "set -e"]
    lines += [" ".join(_shell_word(w) for w in cmd) for cmd in ufw_commands(spec)]
    return [RenderedFile("/etc/securekv/firewall/ufw.sh", "\n".join(lines) + "\n", 0o755)]


RENDERERS = {
    "nftables": render_nftables,
    "iptables": render_iptables,
    "firewalld": render_firewalld,
    "ufw": render_ufw,
}


def render(backend: str, spec: FirewallSpec) -> list[RenderedFile]:
    return RENDERERS[check_backend(backend)](spec)
