"""Read and write cfssl's JSON formats: CSR requests (``ca-csr.json``, ``server-csr.json``) and
signing configs (``ca-config.json`` with profiles), so existing recipes work unchanged.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from securekv.errors import UsageError
from securekv.pki.duration import go_hours, parse_duration
from securekv.pki.names import NameEntry
from securekv.pki.usages import validate_usages

DEFAULT_LEAF_EXPIRY = timedelta(hours=8760)
DEFAULT_CA_EXPIRY = timedelta(hours=87600)

# The profiles every securekv CA ships with (the usages of the common etcd/cfssl recipes).
DEFAULT_PROFILES: dict[str, tuple[str, ...]] = {
    "server": ("signing", "key encipherment", "server auth"),
    "peer": ("signing", "key encipherment", "server auth", "client auth"),
    "client": ("signing", "key encipherment", "client auth"),
    "etcd": ("signing", "key encipherment", "server auth", "client auth"),
}


@attrs.frozen
class CSRSpec:
    """The parts of a cfssl CSR JSON securekv honours."""

    cn: str | None = None
    names: tuple[NameEntry, ...] = ()
    hosts: tuple[str, ...] = ()
    key_algo: str | None = None
    key_size: int | None = None
    ca_expiry: timedelta | None = None
    ca_pathlen: int | None = None


@attrs.frozen
class Profile:
    name: str
    usages: tuple[str, ...]
    expiry: timedelta
    is_ca: bool = False

    @property
    def server_auth(self) -> bool:
        return "server auth" in self.usages

    @property
    def client_auth(self) -> bool:
        return "client auth" in self.usages


@attrs.frozen
class SigningConfig:
    default: Profile
    profiles: dict[str, Profile]

    def profile(self, name: str, *, source: str = "signing config") -> Profile:
        if name in self.profiles:
            return self.profiles[name]
        known = ", ".join(sorted(self.profiles)) or "none"
        raise UsageError(f"unknown profile {name!r} in {source} (known: {known})")


def _load_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte offset {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise UsageError(f"{what} {path} is nested too deeply to be a cfssl file") from None


def _str(obj: dict, key: str, source: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise UsageError(f"{source}: {key!r} must be a string")
    return value


def parse_csr(obj: Any, *, source: str = "CSR") -> CSRSpec:
    if not isinstance(obj, dict):
        raise UsageError(f"{source}: expected a JSON object")
    cn = _str(obj, "CN", source) or None
    names = []
    raw_names = obj.get("names", [])
    if not isinstance(raw_names, list) or not all(isinstance(n, dict) for n in raw_names):
        raise UsageError(f"{source}: 'names' must be a list of objects")
    for entry in raw_names:
        names.append(NameEntry(**{k: _str(entry, k, source) for k in ("C", "ST", "L", "O", "OU")}))
    hosts = obj.get("hosts", []) or []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise UsageError(f"{source}: 'hosts' must be a list of strings")
    key = obj.get("key") or {}
    if not isinstance(key, dict):
        raise UsageError(f"{source}: 'key' must be an object")
    algo = key.get("algo")
    size = key.get("size")
    if algo is not None and not isinstance(algo, str):
        raise UsageError(f"{source}: key.algo must be a string")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise UsageError(f"{source}: key.size must be an integer")
    ca = obj.get("ca") or {}
    if not isinstance(ca, dict):
        raise UsageError(f"{source}: 'ca' must be an object")
    ca_expiry = parse_duration(ca["expiry"], what=f"{source} ca.expiry") if ca.get("expiry") else None
    pathlen = ca.get("pathlen")
    if pathlen is not None and (not isinstance(pathlen, int) or isinstance(pathlen, bool) or pathlen < 0):
        raise UsageError(f"{source}: ca.pathlen must be a non-negative integer")
    return CSRSpec(cn, tuple(names), tuple(hosts), algo, size or None, ca_expiry, pathlen)


def load_csr(path: str | Path) -> CSRSpec:
    return parse_csr(_load_json(path, "CSR file"), source=str(path))


def _profile(name: str, obj: Any, default_expiry: timedelta, source: str) -> Profile:
    if not isinstance(obj, dict):
        raise UsageError(f"{source}: profile {name!r} must be an object")
    usages = obj.get("usages", [])
    if not isinstance(usages, list):
        raise UsageError(f"{source}: profile {name!r}: 'usages' must be a list")
    expiry = parse_duration(obj["expiry"], what=f"{source} profile {name!r} expiry") if obj.get("expiry") else default_expiry
    constraint = obj.get("ca_constraint") or {}
    is_ca = bool(constraint.get("is_ca")) if isinstance(constraint, dict) else False
    return Profile(name, validate_usages(usages, source=f"{source}: profile {name!r}"), expiry, is_ca)


def parse_config(obj: Any, *, source: str = "signing config") -> SigningConfig:
    if not isinstance(obj, dict) or not isinstance(obj.get("signing"), dict):
        raise UsageError(f"{source}: expected a cfssl signing config with a 'signing' object")
    signing = obj["signing"]
    raw_default = signing.get("default") or {}
    default_expiry = (
        parse_duration(raw_default["expiry"], what=f"{source} default expiry")
        if isinstance(raw_default, dict) and raw_default.get("expiry")
        else DEFAULT_LEAF_EXPIRY
    )
    default = _profile("default", raw_default, default_expiry, source)
    raw_profiles = signing.get("profiles") or {}
    if not isinstance(raw_profiles, dict):
        raise UsageError(f"{source}: 'signing.profiles' must be an object")
    profiles = {name: _profile(name, body, default_expiry, source) for name, body in raw_profiles.items()}
    if "default" not in profiles and default.usages:
        profiles["default"] = default
    return SigningConfig(default, profiles)


def load_config(path: str | Path) -> SigningConfig:
    return parse_config(_load_json(path, "signing config"), source=str(path))


def default_config_json(expiry: timedelta = DEFAULT_LEAF_EXPIRY) -> dict:
    hours = go_hours(expiry)
    return {
        "signing": {
            "default": {"expiry": hours},
            "profiles": {name: {"expiry": hours, "usages": list(usages)} for name, usages in DEFAULT_PROFILES.items()},
        }
    }


def default_config() -> SigningConfig:
    return parse_config(default_config_json(), source="built-in signing config")
