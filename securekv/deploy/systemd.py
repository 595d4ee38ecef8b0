"""Render the hardened systemd unit, the sysusers.d entry and the installed member config.

Rendering is pure text generation from validated input: the same arguments always give the same
bytes, so a packager's build is reproducible and a re-install is a no-op.
"""

from __future__ import annotations

import re

import attrs
import yaml

from securekv.deploy.config import CONFIG_DIR, MemberConfig, validate_config
from securekv.deploy.values import check_path, systemd_path_value, systemd_word
from securekv.errors import UsageError
from securekv.resources import template_file

UNIT_NAME = "securekv.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
CONFIG_PATH = f"{CONFIG_DIR}/securekv.yaml"
SYSUSERS_PATH = "/etc/sysusers.d/securekv.conf"
# systemd places LoadCredential= files here for a system service (systemd.exec(5), "Credentials").
CREDENTIALS_DIR = f"/run/credentials/{UNIT_NAME}"

# ProtectHome=yes and PrivateTmp=yes hide these from the service: an ExecStart there cannot run.
HIDDEN_PREFIXES = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")

_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_PLACEHOLDER_RE = re.compile(r"@[A-Z_]+@")
_UNSAFE_ARG_RE = re.compile(r"[\s\"'\\;]")


def check_user(name: str) -> str:
    if not _USER_RE.match(name) or name == "root":
        raise UsageError(
            f"--user {name!r} is not a valid system user name (lower-case letters, digits, '_' or '-', at most 31, not root)"
        )
    return name


def check_exec_start(argv: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """ExecStart must name an absolute program the sandbox can still see."""
    if not argv:
        raise UsageError("ExecStart needs a program")
    program = argv[0]
    if not program.startswith("/"):
        raise UsageError(f"the securekv program {program!r} must be an absolute path")
    for prefix in HIDDEN_PREFIXES:
        if program.startswith(prefix):
            raise UsageError(
                f"the securekv program {program} is under {prefix.rstrip('/')}, which the unit's "
                "ProtectHome=/PrivateTmp= hide from the service; install securekv system-wide or pass --exec"
            )
    for arg in argv:
        if not arg or _UNSAFE_ARG_RE.search(arg):
            raise UsageError(f"ExecStart argument {arg!r} must be non-empty without spaces, quotes, ';' or backslashes")
    return tuple(argv)


def _escape(arg: str) -> str:
    # systemd expands %-specifiers and $VARIABLES in ExecStart; the operator's path means neither.
    return systemd_word(arg, exec_line=True)


@attrs.frozen
class UnitOptions:
    exec_start: tuple[str, ...]
    user: str = "securekv"
    config_file: str = CONFIG_PATH
    writable_paths: tuple[str, ...] = ()
    credentials: tuple[tuple[str, str], ...] = ()  # (credential name, source path)


def render_unit(options: UnitOptions) -> str:
    user = check_user(options.user)
    argv = check_exec_start(options.exec_start)
    extra: list[str] = []
    for path in options.writable_paths:
        extra.append(f"ReadWritePaths={systemd_word(check_path('ReadWritePaths', path))}")
    for name, source in options.credentials:
        extra.append(f"LoadCredential={name}:{systemd_path_value(source)}")
    values = {
        "@USER@": user,
        "@GROUP@": user,
        "@EXEC_START@": " ".join(_escape(a) for a in argv),
        "@CONFIG_FILE@": _escape(options.config_file),
    }
    lines = []
    for line in template_file("systemd", UNIT_NAME).read_text().splitlines():
        if line.strip() == "@EXTRA_SERVICE@":
            lines.extend(extra)
            continue
        for key, value in values.items():
            line = line.replace(key, value)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    left = _PLACEHOLDER_RE.findall(text)
    if left:
        raise AssertionError(f"unit template has unfilled placeholders {left}")
    return text


def render_sysusers(user: str) -> str:
    user = check_user(user)
    return template_file("systemd", "securekv-sysusers.conf").read_text().replace("@USER@", user)


def credential_config(config: MemberConfig) -> tuple[dict, tuple[tuple[str, str], ...]]:
    """Point key-file entries at systemd credentials; return (new config data, LoadCredential pairs).

    With LoadCredential= the private keys stay root-owned 0600 where the operator put them;
    systemd hands the service a private copy readable only by the service user.
    """
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.data.items()}
    pairs: list[tuple[str, str]] = []
    for section, key_file in config.key_files:
        name = "client.key" if section.startswith("client") else "peer.key"
        pairs.append((name, key_file))
        data[section]["key-file"] = f"{CREDENTIALS_DIR}/{name}"
    return data, tuple(pairs)


def render_config(data: dict) -> str:
    validate_config(data)
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=False)
    return "# securekv member config (etcd config-file keys); installed by `securekv install systemd`.\n" + body
