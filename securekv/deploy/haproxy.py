"""``securekv install haproxy``: an haproxy front end for the members' client URLs (pure render).

etcd's operations guide puts a TCP load balancer in front of the client URLs. What matters:

* ``mode tcp``: TLS goes end to end, so members keep checking client certificates and CRLs
  (haproxy holds no server key and never sees plaintext); long idle timeouts, because watch
  and lease keep-alive streams stay open for hours;
* health checks that ask each member ``GET /health`` over **mutual TLS** (its CA verifies
  the member, a client certificate with no rights gets the answer): etcd answers 503 without
  a leader or with an alarm, so a member that is up but cannot serve is taken out too; the
  check itself speaks HTTP/1.1 by ALPN while client traffic stays untouched;
* ``on-marked-down shutdown-sessions`` and ``option redispatch`` + ``retries``: clients of a
  dead member are cut at once (they reconnect through haproxy to a live one), and a
  connection that fails to reach a member is retried on another.

Every value written into the file is checked first (addresses, ports, names, paths): a
newline or a quote in a path would otherwise become a directive.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Sequence

import attrs

from securekv.errors import UsageError

CONFIG_PATH = "/etc/haproxy/securekv.cfg"
HEALTH_PEM_PATH = "/etc/haproxy/securekv-health.pem"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]*$")


@attrs.frozen
class Endpoint:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return False


@attrs.frozen
class HAProxySpec:
    endpoints: tuple[Endpoint, ...]
    listen: tuple[str, int]
    ca_file: str
    health_pem: str  # client certificate + key for the health checks (haproxy's crt)
    check_interval_ms: int = 2000


def check_path(path: str, what: str) -> str:
    if not _PATH.match(path) or "/../" in path + "/":
        raise UsageError(f"{what} {path!r}: an absolute path of letters, digits and _ . / @ + - only "
                         "(haproxy's config has no escaping we trust for anything else)")
    return path


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    raw = text.strip()
    parts = urlsplit(raw if "://" in raw else f"//{raw}")
    if "://" in raw and parts.scheme not in ("https", "http"):
        raise UsageError(f"{what} {raw!r}: expected host:port or https://host:port")
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    if not host or port is None or not 0 < port < 65536 or parts.path not in ("", "/"):
        raise UsageError(f"{what} {raw!r}: expected host:port or https://host:port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            raise UsageError(f"{what} {raw!r}: {host!r} is not a valid host name") from None
    return host, port


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """``name=https://host:port,...`` or bare ``host:port`` entries (named m1, m2, ...)."""
    out = []
    for i, item in enumerate(x.strip() for x in text.split(",") if x.strip()):
        name, sep, rest = item.partition("=")
        if not sep or "://" in name:
            name, rest = f"m{i + 1}", item
        if not _NAME.match(name):
            raise UsageError(f"--endpoints: member name {name!r} must be letters, digits, _ . - (≤ 63)")
        host, port = parse_hostport(rest, "--endpoints")
        out.append(Endpoint(name, host, port))
    if not out:
        raise UsageError("--endpoints: name at least one member client URL")
    if len({e.name for e in out}) != len(out):
        raise UsageError("--endpoints: member names must be unique")
    if len({(e.host, e.port) for e in out}) != len(out):
        raise UsageError("--endpoints: an endpoint is listed twice")
    return tuple(out)


def render(spec: HAProxySpec) -> str:
    host, port = spec.listen
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    inter = spec.check_interval_ms
    lines = [
        "# securekv client load balancer, rendered by `securekv install haproxy`.",
        "# TCP mode: TLS (and the client certificate) goes end to end to the members.",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    # watch and lease keep-alive streams stay open for a long time",
        "    timeout client 1h",
        "    timeout server 1h",
        "    option redispatch",
        "    retries 3",
        "",
        "frontend securekv_clients",
        f"    bind {bind}",
        "    default_backend securekv_members",
        "",
        "backend securekv_members",
        "    balance roundrobin",
        "    # GET /health over mutual TLS: 200 only with a leader and no alarm",
        "    option httpchk",
        "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host securekv-health",
        "    http-check expect status 200",
        f"    default-server inter {inter}ms fastinter {max(inter // 4, 100)}ms fall 2 rise 2 check check-ssl "
        f"check-alpn http/1.1 verify required ca-file {check_path(spec.ca_file, '--cacert')} "
        f"crt {check_path(spec.health_pem, 'health certificate')} on-marked-down shutdown-sessions "
        "init-addr last,libc,none",
    ]
    for e in spec.endpoints:
        verify = "" if e.is_ip else f" verifyhost {e.host} check-sni {e.host}"
        lines.append(f"    server {e.name} {e.address}{verify}")
    return "\n".join(lines) + "\n"


def health_pem(cert_pem: bytes, key_pem: bytes) -> bytes:
    """haproxy's ``crt``: the certificate chain followed by its private key, in one file."""
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        raise UsageError("--cert is not a PEM certificate")
    if b"PRIVATE KEY-----" not in key_pem:
        raise UsageError("--key is not a PEM private key")
    return cert_pem.rstrip(b"\n") + b"\n" + key_pem.rstrip(b"\n") + b"\n"


def make_spec(endpoints: str, listen: str, ca_file: str, health_pem_path: str,
              check_interval_ms: int = 2000) -> HAProxySpec:
    return HAProxySpec(parse_endpoints(endpoints), parse_hostport(listen, "--listen-addr"),
                       check_path(ca_file, "--cacert"), check_path(health_pem_path, "health certificate"),
                       check_interval_ms)


__all__ = ["CONFIG_PATH", "HEALTH_PEM_PATH", "HAProxySpec", "health_pem", "make_spec", "parse_endpoints", "render"]
