"""Validate a member config file (etcd's ``--config-file`` YAML keys) before installing it.

Why here and not only in ``serve``: ``securekv install`` must refuse a config that would not
start *before* it writes a unit that systemd restarts in a loop. The checks are the install-time
subset: every key known and of the right type, every URL well formed, TLS on every client and
peer listener, absolute paths (the unit runs with ``ProtectSystem=strict`` and no working
directory of the operator's), and no port bound twice.

The supported keys are serve's own option table; ``configs/README.md`` documents each one.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import attrs
import yaml

from securekv.config.options import BOOL as OPT_BOOL, FLOAT, IMPLEMENTED, INT as OPT_INT, LIST, OPTIONS, Option
from securekv.deploy.values import check_name, check_path, check_text
from securekv.errors import UsageError

# --------------------------------------------------------------------------- key table

BOOL, INT, NUMBER, STR, PATH, URLS, CLUSTER, STRLIST = "bool", "int", "number", "str", "path", "urls", "cluster", "strlist"

# The key table comes from serve's own option table (securekv.config.options), so install and
# serve can never disagree about which keys exist; only the install-time kinds are refined here.


def _install_kind(option: Option) -> str:
    key = option.yaml_path[-1]
    if option.kind == LIST:
        return URLS if key.endswith("-urls") else STRLIST
    if option.kind == OPT_BOOL:
        return BOOL
    if option.kind == OPT_INT:
        return INT
    if option.kind == FLOAT:
        return NUMBER
    if key == "initial-cluster":
        return CLUSTER
    if key.endswith("-file") or key.endswith("-dir"):  # data-dir, wal-dir, backup-dir: reach the unit
        return PATH
    return STR


TOP_LEVEL_KEYS: dict[str, str] = {}
TLS_KEYS: dict[str, str] = {}
for _option in OPTIONS:
    if _option.support != IMPLEMENTED:  # etcd keys that have no effect or are refused: not installed
        continue
    if len(_option.yaml_path) == 1:
        TOP_LEVEL_KEYS[_option.yaml_path[0]] = _install_kind(_option)
    else:
        TOP_LEVEL_KEYS[_option.yaml_path[0]] = "tls"
        TLS_KEYS[_option.yaml_path[1]] = _install_kind(_option)

CHOICES: dict[str, tuple[str, ...]] = {
    "initial-cluster-state": ("new", "existing"),
    "log-level": ("debug", "info", "warn", "warning", "error"),
}

INT_RANGES: dict[str, tuple[int, int]] = {
    "snapshot-count": (1, 2**63 - 1),
    "heartbeat-interval": (1, 60_000),
    "election-timeout": (1, 600_000),
    "max-txn-ops": (1, 2**31 - 1),
    "max-request-bytes": (1, 2**31 - 1),
    "quota-backend-bytes": (0, 2**63 - 1),
    "self-signed-cert-validity": (1, 100),
}

# The listeners whose traffic must be TLS, and the transport-security section that secures them.
TLS_LISTENERS = {
    "listen-client-urls": "client-transport-security",
    "advertise-client-urls": "client-transport-security",
    "listen-peer-urls": "peer-transport-security",
    "initial-advertise-peer-urls": "peer-transport-security",
}
LISTEN_KEYS = ("listen-client-urls", "listen-peer-urls", "listen-metrics-urls")

# The member's own state lives here under the unit's StateDirectory=securekv.
STATE_DIR = "/var/lib/securekv"
CONFIG_DIR = "/etc/securekv"


@attrs.frozen
class MemberConfig:
    """A validated config: the mapping as written plus the facts install needs from it."""

    data: Mapping[str, Any]
    name: str
    data_dir: str
    wal_dir: str | None
    listen_ports: tuple[tuple[str, int], ...]
    key_files: tuple[tuple[str, str], ...]  # (section, key-file path)

    def writable_paths(self) -> tuple[str, ...]:
        """Paths outside the StateDirectory the unit must make writable (ReadWritePaths=)."""
        out = []
        for path in (self.data_dir, self.wal_dir, self.data.get("backup-dir")):
            if path and not _is_under(path, STATE_DIR) and path not in out:
                out.append(path)
        return tuple(out)


def load_config_file(path: str) -> MemberConfig:
    """Read and validate ``path``; raise UsageError naming the file and the problem."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    return parse_config(raw, source=path)


def parse_config(raw: bytes | str, source: str = "<config>") -> MemberConfig:
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{source}: not valid YAML{where}") from None
    try:
        return validate_config(data)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None


def validate_config(data: Any) -> MemberConfig:
    if not isinstance(data, dict):
        raise UsageError("the config must be a YAML mapping of etcd config-file keys")
    for key, value in data.items():
        if key not in TOP_LEVEL_KEYS:
            raise UsageError(_unknown(key, TOP_LEVEL_KEYS, "top-level key"))
        kind = TOP_LEVEL_KEYS[key]
        if kind == "tls":
            _check_tls_section(key, value)
        else:
            _check_value(key, kind, value)

    if data.get("insecure-allow-plaintext"):
        raise UsageError("insecure-allow-plaintext is refused by securekv install: the installed member serves TLS on every port")
    for key in ("insecure-skip-client-cert-auth", "peer-insecure-skip-client-cert-auth"):
        if data.get(key):
            raise UsageError(f"{key} is refused by securekv install: an installed member requires client "
                             "certificates on the client port and member certificates on the peer port")
    for key in ("name", "data-dir", "listen-client-urls", "advertise-client-urls", "client-transport-security"):
        if key not in data:
            raise UsageError(f"required key {key!r} is missing")

    for section in ("client-transport-security", "peer-transport-security"):
        sec = data.get(section) or {}
        if bool(sec.get("cert-file")) != bool(sec.get("key-file")):
            raise UsageError(f"{section}: cert-file and key-file must be given together")
        if sec.get("auto-tls") and sec.get("cert-file"):
            raise UsageError(f"{section}: auto-tls and cert-file/key-file are mutually exclusive")
        if sec.get("client-cert-auth") and not sec.get("trusted-ca-file"):
            raise UsageError(f"{section}: client-cert-auth needs trusted-ca-file")
    if (data.get("peer-transport-security") or {}).get("auto-tls"):
        raise UsageError("peer-transport-security: auto-tls is refused by securekv install: self-signed peer "
                         "certificates authenticate no member; issue them with `securekv pki issue peer NAME`")
    for key, section in TLS_LISTENERS.items():
        for url in _urls(data.get(key)):
            if urlsplit(url).scheme != "https":
                raise UsageError(f"{key}: {url} is not https:// (securekv installs TLS on every client and peer port)")
            sec = data.get(section) or {}
            if not ((sec.get("cert-file") and sec.get("key-file")) or sec.get("auto-tls")):
                raise UsageError(f"{key} is https:// but {section} has neither cert-file + key-file nor auto-tls")
    for url in _urls(data.get("listen-metrics-urls")):
        parts = urlsplit(url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            raise UsageError(f"listen-metrics-urls: {url} is plain http:// on a non-loopback address; use https:// or 127.0.0.1/[::1]")

    if (data.get("client-transport-security") or {}).get("client-cert-auth") is not True:
        raise UsageError("client-transport-security: client-cert-auth must be true (mutual TLS on the client port)")
    if _urls(data.get("listen-peer-urls")) and (data.get("peer-transport-security") or {}).get("client-cert-auth") is not True:
        raise UsageError("peer-transport-security: client-cert-auth must be true (members authenticate each other)")

    hb = data.get("heartbeat-interval", 100)
    et = data.get("election-timeout", 1000)
    if et < 5 * hb:
        raise UsageError(f"election-timeout ({et} ms) must be at least 5 times heartbeat-interval ({hb} ms)")
    if data.get("initial-cluster-state", "new") not in CHOICES["initial-cluster-state"]:
        raise UsageError("initial-cluster-state must be new or existing")

    _check_cluster(data)
    ports = _check_ports(data)
    keys = tuple(
        (section, (data.get(section) or {})["key-file"])
        for section in ("client-transport-security", "peer-transport-security")
        if (data.get(section) or {}).get("key-file")
    )
    return MemberConfig(
        data=data,
        name=data["name"],
        data_dir=data["data-dir"],
        wal_dir=data.get("wal-dir"),
        listen_ports=ports,
        key_files=keys,
    )


# --------------------------------------------------------------------------- helpers


def _unknown(key: Any, known: Mapping[str, str], what: str) -> str:
    import difflib

    hint = difflib.get_close_matches(str(key), list(known), n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown {what} {key!r}{extra}"


def _check_tls_section(section: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise UsageError(f"{section} must be a mapping (cert-file, key-file, client-cert-auth, trusted-ca-file, ...)")
    for key, item in value.items():
        if key not in TLS_KEYS:
            raise UsageError(_unknown(key, TLS_KEYS, f"key in {section}:"))
        _check_value(f"{section}.{key}", TLS_KEYS[key], item)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_CHECKS: dict[str, Callable[[Any], bool]] = {
    BOOL: lambda v: isinstance(v, bool),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    STR: lambda v: isinstance(v, str) and v != "",
    PATH: lambda v: isinstance(v, str) and v != "",
    NUMBER: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    URLS: lambda v: (isinstance(v, str) and v != "") or (isinstance(v, list) and bool(v) and all(isinstance(i, str) and i for i in v)),
    CLUSTER: lambda v: isinstance(v, str) and v != "",
    STRLIST: lambda v: isinstance(v, list) and all(isinstance(i, str) and i for i in v),
}
_EXPECTED = {
    BOOL: "true or false",
    INT: "an integer",
    STR: "a non-empty string",
    PATH: "an absolute path",
    NUMBER: "a positive number",
    URLS: "a comma-separated string (or a list) of URLs",
    CLUSTER: "a string name=url,name=url,...",
    STRLIST: "a list of strings",
}


def _check_value(key: str, kind: str, value: Any) -> None:
    if not _CHECKS[kind](value):
        raise UsageError(f"{key} must be {_EXPECTED[kind]}, got {_type_name(value)} {value!r}")
    short = key.rsplit(".", 1)[-1]
    if kind == PATH:
        check_path(key, value)
    elif kind == URLS:
        for url in _urls(value):
            _check_url(key, url)
    elif kind == STR:
        if key == "name":
            check_name(key, value)
        elif short == "allowed-hostname":
            _check_host(key, value)
        else:
            check_text(key, value)
    elif kind == STRLIST:
        for item in value:
            check_text(key, item)
    elif kind == INT and short in INT_RANGES:
        low, high = INT_RANGES[short]
        if not low <= value <= high:
            raise UsageError(f"{key} must be between {low} and {high}, got {value}")
    if short in CHOICES and value not in CHOICES[short]:
        raise UsageError(f"{key} must be one of {', '.join(CHOICES[short])}, got {value!r}")


def _urls(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, list):
        return [str(part).strip() for part in value]
    return [part.strip() for part in str(value).split(",")]


def _check_host(key: str, host: str) -> str:
    from securekv.pki.names import parse_ip, validate_dns_name

    check_text(key, host)
    if parse_ip(host) is None:
        try:
            validate_dns_name(host)
        except UsageError as exc:
            raise UsageError(f"{key}: {exc}") from None
    return host


def _check_url(key: str, url: str) -> tuple[str, int]:
    if not url:
        raise UsageError(f"{key} has an empty entry")
    check_text(key, url)  # urlsplit silently drops tabs and newlines: refuse them first
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{key}: malformed URL {url!r} ({exc})") from None
    if parts.scheme not in ("https", "http"):
        raise UsageError(f"{key}: URL {url!r} must start with https://")
    host = parts.hostname
    if not host:
        raise UsageError(f"{key}: URL {url!r} has no host")
    if port is None:
        raise UsageError(f"{key}: URL {url!r} has no port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"{key}: URL {url!r} must be scheme://host:port only")
    if key in LISTEN_KEYS and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UsageError(f"{key}: listen URL {url!r} must use an IP address (etcd binds IPs, not names)") from None
    if port == 0:
        raise UsageError(f"{key}: URL {url!r} has port 0")
    _check_host(key, host)
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _check_cluster(data: Mapping[str, Any]) -> None:
    raw = data.get("initial-cluster")
    if not raw:
        if data.get("listen-peer-urls") or data.get("initial-advertise-peer-urls"):
            raise UsageError("initial-cluster is required when peer URLs are configured")
        return
    members: dict[str, list[str]] = {}
    for entry in raw.split(","):
        name, sep, url = entry.strip().partition("=")
        if not sep or not name or not url:
            raise UsageError(f"initial-cluster: entry {entry.strip()!r} is not name=url")
        check_name("initial-cluster member name", name)
        _check_url("initial-cluster", url)
        if urlsplit(url).scheme != "https":
            raise UsageError(f"initial-cluster: {url} is not https:// (peer traffic is TLS)")
        members.setdefault(name, []).append(url)
    me = data["name"]
    if me not in members:
        raise UsageError(f"initial-cluster does not list this member's name {me!r}")
    advertised = sorted(_urls(data.get("initial-advertise-peer-urls")))
    if not advertised:
        raise UsageError("initial-advertise-peer-urls is required when initial-cluster is set")
    if sorted(members[me]) != advertised:
        raise UsageError(
            f"initial-cluster lists {me}={','.join(members[me])} but initial-advertise-peer-urls is {','.join(advertised)}"
        )
    if not data.get("listen-peer-urls"):
        raise UsageError("listen-peer-urls is required when initial-cluster is set")
    if len(members) > 1 and not data.get("initial-cluster-token"):
        raise UsageError("initial-cluster-token is required for a multi-member cluster")


def _check_ports(data: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    """Each listener binds (host, port); a port bound by two listeners would fail at start."""
    seen: dict[int, list[tuple[str, str]]] = {}
    out = []
    for key in LISTEN_KEYS:
        for url in _urls(data.get(key)):
            host, port = _check_url(key, url)
            for other_key, other_host in seen.get(port, []):
                if other_host == host or _wildcard(host) or _wildcard(other_host):
                    raise UsageError(f"port {port} is used twice: {other_key} and {key} both bind {url}")
            seen.setdefault(port, []).append((key, host))
            out.append((host, port))
    return tuple(out)


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")
