"""DNS SRV discovery as etcd 3.4 does it (``--discovery-srv``, ``--discovery-srv-name``).

Server side (``get_cluster``, etcd's ``srv.GetCluster``): ``_etcd-server-ssl[-NAME]._tcp.DOMAIN``
(https) and ``_etcd-server[-NAME]._tcp.DOMAIN`` (http) list the founding members; each record
becomes ``name=scheme://target:port``, where a target that resolves to one of this member's
advertised peer addresses gets this member's ``--name`` and the others get ``0``, ``1``, ... as
etcd names them. The URLs keep the SRV target *names*, so every member computes the same
initial cluster (and member IDs), and TLS checks each peer's certificate against the name
DNS gave for it.

Client side (``get_client``, etcd's ``srv.GetClient``): ``_etcd-client-ssl[-NAME]._tcp.DOMAIN``
and ``_etcd-client[-NAME]._tcp.DOMAIN`` give the endpoints for ``securekv ctl --discovery-srv``.

Resolver: the system's (``/etc/resolv.conf``, via dnspython) unless ``$SECUREKV_DNS_RESOLVER``
names one (``host`` or ``host:port``); then SRV *and* address lookups go to that server (a
test's loopback DNS server, or a split-horizon resolver), and names it does not know fall back
to the system's resolver. ``TrioResolver`` makes trio's own name lookups (peer dials) use it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs

RESOLVER_ENV = "SECUREKV_DNS_RESOLVER"
TIMEOUT = 5.0


class DiscoveryError(Exception):
    """DNS did not give a usable answer (etcd's wording where etcd has one)."""


@attrs.frozen
class SRV:
    target: str  # without the trailing dot
    port: int
    priority: int = 0
    weight: int = 0


@attrs.frozen
class Resolver:
    nameserver: str | None = None  # "host[:port]"; None = the system's configuration

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Resolver:
        value = (environ if environ is not None else os.environ).get(RESOLVER_ENV, "").strip()
        return cls(value or None)

    def _dns(self) -> Any:
        import dns.resolver

        if self.nameserver is None:
            return dns.resolver.Resolver()
        host, port = _split(self.nameserver, 53)
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [host]
        r.port = port
        return r

    def lookup_srv(self, service: str, proto: str, domain: str) -> list[SRV]:
        """Go's net.LookupSRV(service, proto, domain): sorted by priority, then weight."""
        import dns.exception
        import dns.resolver

        name = f"_{service}._{proto}.{domain.rstrip('.')}."
        try:
            answer = self._dns().resolve(name, "SRV", lifetime=TIMEOUT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            raise DiscoveryError(f"lookup {name[:-1]} on {self._where()}: no such host") from None
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"lookup {name[:-1]} on {self._where()}: {exc}") from None
        records = [SRV(r.target.to_text().rstrip("."), r.port, r.priority, r.weight) for r in answer]
        return sorted(records, key=lambda r: (r.priority, -r.weight, r.target, r.port))

    def addresses(self, host: str) -> list[str]:
        """IP addresses of ``host`` (an IP literal is itself)."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        if self.nameserver is not None:
            found = self._query_addresses(host)
            if found:
                return found
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DiscoveryError(f"lookup {host}: {exc.strerror or exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _query_addresses(self, host: str) -> list[str]:
        import dns.exception

        out: list[str] = []
        resolver = self._dns()
        for rdtype in ("A", "AAAA"):
            try:
                out += [r.address for r in resolver.resolve(host.rstrip(".") + ".", rdtype, lifetime=TIMEOUT)]
            except dns.exception.DNSException:
                continue
        return out

    def _where(self) -> str:
        return self.nameserver or "the system resolver"


def _split(hostport: str, default_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if hostport.count(":") == 1:
        host, port = hostport.split(":")
        return host, int(port)
    return hostport, default_port


def srv_service(service: str, service_name: str, scheme: str) -> str:
    """etcd's GetSRVService: ``etcd-client`` → ``etcd-client-ssl[-NAME]`` for https."""
    if scheme == "https":
        service = f"{service}-ssl"
    return f"{service}-{service_name}" if service_name else service


def get_cluster(scheme: str, service: str, name: str, domain: str, advertised: list[str],
                resolver: Resolver) -> list[str]:
    """``name=scheme://target:port`` entries for one SRV service (etcd's GetCluster)."""
    mine: dict[tuple[str, int], str] = {}
    for url in advertised:
        parts = urlsplit(url)
        for ip in resolver.addresses(parts.hostname or ""):
            mine[(ip, parts.port or 0)] = url
    entries: list[str] = []
    last_error: Exception | None = None
    temp = 0
    for record in resolver.lookup_srv(service, "tcp", domain):
        try:
            ips = resolver.addresses(record.target)
        except DiscoveryError as exc:
            last_error = exc
            continue
        matched = next((mine[(ip, record.port)] for ip in ips if (ip, record.port) in mine), None)
        if matched is not None:
            member = name
        else:
            member, temp = str(temp), temp + 1
        host = f"[{record.target}]" if ":" in record.target else record.target
        if matched is not None and urlsplit(matched).scheme != scheme:
            last_error = DiscoveryError(f"bootstrap at {scheme}://{host}:{record.port} from DNS for {service} has "
                                        f"scheme mismatch with expected peer {matched}")
            continue
        entries.append(f"{member}={scheme}://{host}:{record.port}")
    if not entries and last_error is not None:
        raise last_error
    return entries


def discover_cluster(name: str, domain: str, service_name: str, advertised: list[str],
                     resolver: Resolver) -> list[str]:
    """etcd's GetDNSClusterNames: https records first, http ones added; refused without this member."""
    entries: list[str] = []
    errors: list[str] = []
    for scheme, service in (("https", "etcd-server-ssl"), ("http", "etcd-server")):
        full = service + (f"-{service_name}" if service_name else "")
        try:
            entries += get_cluster(scheme, full, name, domain, advertised, resolver)
        except DiscoveryError as exc:
            errors.append(f"error querying DNS SRV records for _{full} {exc}")
    if not entries:
        raise DiscoveryError("; ".join(errors) or f"no SRV records for {domain}")
    if not any(e.split("=", 1)[0] == name for e in entries):
        raise DiscoveryError(f'cannot find local etcd member "{name}" in SRV records')
    return entries


def get_client(service: str, domain: str, service_name: str, resolver: Resolver) -> tuple[list[str], list[SRV]]:
    """Endpoints from ``_etcd-client-ssl`` (https) and ``_etcd-client`` (http) (etcd's GetClient)."""
    endpoints: list[str] = []
    records: list[SRV] = []
    errors = []
    for scheme in ("https", "http"):
        try:
            found = resolver.lookup_srv(srv_service(service, service_name, scheme), "tcp", domain)
        except DiscoveryError as exc:
            errors.append(str(exc))
            continue
        for r in found:
            host = f"[{r.target}]" if ":" in r.target else r.target
            endpoints.append(f"{scheme}://{host}:{r.port}")
        records += found
    if len(errors) == 2:
        raise DiscoveryError(f"dns lookup errors: {errors[0]} and {errors[1]}")
    return endpoints, records


class TrioResolver:
    """trio.abc.HostnameResolver answering from ``resolver`` first (peer dials by SRV name)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def getaddrinfo(self, host: bytes | str | None, port: Any, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list:
        import trio

        name = host.decode() if isinstance(host, bytes) else host
        if name:
            try:
                ipaddress.ip_address(name.strip("[]"))
            except ValueError:
                found = await trio.to_thread.run_sync(self.resolver._query_addresses, name)
                if found:
                    numeric = int(port) if port not in (None, b"", "") else 0
                    out = []
                    for ip in found:
                        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
                        if family not in (0, fam):
                            continue
                        addr: tuple = (ip, numeric, 0, 0) if fam == socket.AF_INET6 else (ip, numeric)
                        out.append((fam, type or socket.SOCK_STREAM, proto or socket.IPPROTO_TCP, "", addr))
                    if out:
                        return out
        return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: tuple, flags: int) -> tuple[str, str]:
        import trio

        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


__all__ = ["DiscoveryError", "Resolver", "SRV", "TrioResolver", "discover_cluster", "get_client", "get_cluster",
           "srv_service"]
