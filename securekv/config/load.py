"""Resolve the configuration from flags > environment > YAML file > defaults, then validate.

Precedence (documented in docs/server.md): a flag given on the command line wins; else
``SECUREKV_<FLAG>``; else etcd's ``ETCD_<FLAG>`` (so an existing ``/etc/default/etcd`` works);
else the YAML file named by ``--config-file`` (etcd's keys, TLS nested under
``client-transport-security``/``peer-transport-security``); else the default. Unlike etcd 3.4,
a config file does not silently disable flags and env: merging is less surprising.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import attrs
import yaml

from securekv.config.model import URL, BackupSettings, Config, embedded_pki, parse_url
from securekv.config.options import (
    BOOL, DURATION, FLOAT, IGNORED, INT, LIST, OPTIONS, REFUSED, STR, Option,
)
from securekv.errors import UsageError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n", ""}


def _convert(option: Option, value: Any, source: str) -> Any:
    where = f"{option.flag} (from {source})"
    kind = option.kind
    # Structures are refused before anything turns them into text: YAML aliases can make a
    # small file describe an exponentially large one (found by fuzzing: a hang in str()).
    if kind != LIST and isinstance(value, (list, tuple, dict, set)):
        raise UsageError(f"invalid value for {where}: expected a single value, not a "
                         f"{type(value).__name__}")
    if kind == LIST and (isinstance(value, (dict, set)) or isinstance(value, (list, tuple)) and any(
            isinstance(v, (list, tuple, dict, set)) for v in value)):
        raise UsageError(f"invalid value for {where}: expected a list of strings")
    if kind == BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(f"invalid boolean {value!r} for {where}")
    if kind == INT:
        if isinstance(value, bool):
            raise UsageError(f"invalid integer {value!r} for {where}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"invalid integer {value!r} for {where}") from None
    if kind == FLOAT:
        try:
            return float(str(value).strip())
        except ValueError:
            raise UsageError(f"invalid number {value!r} for {where}") from None
    if kind == DURATION:
        return _duration(value, where, from_yaml=source.startswith("config file"))
    if kind == LIST:
        if isinstance(value, (list, tuple)):
            items = [str(v).strip() for v in value]
        else:
            items = [v.strip() for v in str(value).split(",")]
        return [v for v in items if v]
    if kind == STR:
        if isinstance(value, (dict, list)):
            raise UsageError(f"invalid value for {where}: expected a string")
        return "" if value is None else str(value)
    raise AssertionError(kind)


def _duration(value: Any, where: str, *, from_yaml: bool) -> float:
    """Seconds from a Go duration string; etcd's YAML gives time.Duration as integer nanoseconds."""
    from securekv.client.gofmt import parse_duration

    if isinstance(value, bool):
        raise UsageError(f"invalid duration {value!r} for {where}")
    if isinstance(value, (int, float)):
        if from_yaml:
            return float(value) / 1e9
        value = str(value)
    text = str(value).strip()
    if text == "":
        return 0.0
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"invalid duration {value!r} for {where}: {exc} (write e.g. 5s, 100ms, 10m)") from None
    if seconds < 0:
        raise UsageError(f"invalid duration {value!r} for {where}: must not be negative")
    return seconds


def env_value(option: Option, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(value, variable name) from SECUREKV_<FLAG> or ETCD_<FLAG>, SECUREKV_ first."""
    for prefix in ("SECUREKV_", "ETCD_"):
        name = prefix + option.env_suffix
        if name in environ:
            return environ[name], name
    return None


def config_file_from_env(environ: Mapping[str, str]) -> str | None:
    for name in ("SECUREKV_CONFIG_FILE", "ETCD_CONFIG_FILE"):
        if environ.get(name):
            return environ[name]
    return None


def read_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path} is not UTF-8 text (byte offset {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: {exc}") from None
    except (ValueError, OverflowError) as exc:  # a typed scalar that is not one: `!!int zz`, 2001-13-45
        raise UsageError(f"config file {path} has an invalid value: {exc}") from None
    except RecursionError:
        raise UsageError(f"config file {path} is nested too deeply to be a configuration") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must be a YAML mapping of etcd option names")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:  # found by fuzzing: `&a: x` is a key None, `1: 2` a key 1 (then sorting the keys failed)
        raise UsageError(f"config file {path}: option names must be text, not {odd[0]!r}")
    return data


def _yaml_lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _known_yaml_keys() -> set[str]:
    keys = set()
    for option in OPTIONS:
        keys.add(option.yaml_path[0])
    return keys


def resolve(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> Config:
    """Merge the sources. ``flags`` maps field names to values given on the command line only."""
    file_data: dict[str, Any] = {}
    notes: list[str] = []
    config_file = config_file or config_file_from_env(environ)
    if config_file:
        file_data = read_yaml(config_file)
        unknown = sorted(k for k in file_data if k not in _known_yaml_keys())
        for key in unknown:
            notes.append(f"config file {config_file}: ignoring unknown or unsupported key {key!r}")
    known_env = {prefix + o.env_suffix for o in OPTIONS for prefix in ("SECUREKV_", "ETCD_")}
    known_env |= {"SECUREKV_CONFIG_FILE", "ETCD_CONFIG_FILE"}
    for name in sorted(environ):
        if name.startswith(("ETCD_", "SECUREKV_")) and name not in known_env and not name.startswith(_ENV_OTHERS):
            notes.append(f"unrecognized environment variable {name} (ignored; its value is not shown)")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if flags.get(option.field) is not None:
            values[option.field] = _convert(option, flags[option.field], f"--{option.flag}")
            sources[option.field] = "flag"
            continue
        from_env = env_value(option, environ)
        if from_env is not None:
            values[option.field] = _convert(option, from_env[0], from_env[1])
            sources[option.field] = "env"
            continue
        found, raw = _yaml_lookup(file_data, option.yaml_path)
        if found and raw is not None:
            values[option.field] = _convert(option, raw, f"config file key {'.'.join(option.yaml_path)}")
            sources[option.field] = "file"
            continue
        values[option.field] = option.default
        sources[option.field] = "default"
    config = build(values, sources)
    return attrs.evolve(config, warnings=(*notes, *config.warnings)) if notes else config


# Variables of other securekv commands (ctl, tests) that share the prefixes.
_ENV_OTHERS = ("SECUREKV_CTL_", "SECUREKV_TEST", "SECUREKV_DNS_", "SECUREKV_JOURNAL_")


def _urls(values: list[str], what: str) -> tuple[URL, ...]:
    return tuple(parse_url(v, what) for v in values)


def build(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> Config:
    """Validate merged raw values into a Config; every problem is one clear UsageError."""
    name = values["name"]
    if not name:
        raise UsageError("--name must not be empty")
    warnings = _unsupported(values, sources or {})
    data_dir = values["data_dir"] or f"{name}.securekv"
    wal_dir = values["wal_dir"] or ""
    listen_client = _urls(values["listen_client_urls"], "--listen-client-urls")
    if not listen_client:
        raise UsageError("--listen-client-urls must name at least one URL")
    advertise_client = _urls(values["advertise_client_urls"], "--advertise-client-urls") or listen_client
    listen_peer = _urls(values["listen_peer_urls"], "--listen-peer-urls")
    adv_peer = _urls(values["initial_advertise_peer_urls"], "--initial-advertise-peer-urls")
    metrics = _urls(values["listen_metrics_urls"], "--listen-metrics-urls")
    state = values["initial_cluster_state"]
    if state not in ("new", "existing"):
        raise UsageError(f"--initial-cluster-state must be 'new' or 'existing', not {state!r}")
    if values["discovery_srv"].strip():
        cluster: tuple[tuple[str, str], ...] = ()  # filled from the SRV records at start (server/srv.py)
    else:
        cluster = _parse_initial_cluster(values["initial_cluster"], name, adv_peer)
    insecure = bool(values["insecure_allow_plaintext"])
    plaintext = [str(u) for u in (*listen_client, *listen_peer) if not u.is_tls]
    if plaintext and not insecure:
        raise UsageError(
            "refusing plaintext listener(s) "
            + ", ".join(plaintext)
            + ": securekv serves clients and peers over TLS only. Use https:// URLs, or pass "
            "--insecure-allow-plaintext if you really want unencrypted, unauthenticated traffic"
        )
    for url in metrics:
        if not url.is_tls and not url.is_loopback and not insecure:
            raise UsageError(
                f"refusing plaintext metrics listener {url}: http:// is only allowed on loopback "
                "(use https://, a loopback address, or --insecure-allow-plaintext)"
            )
    for field in ("max_request_bytes", "max_txn_ops", "heartbeat_interval", "election_timeout", "snapshot_count"):
        if values[field] <= 0:
            raise UsageError(f"--{field.replace('_', '-')} must be positive, got {values[field]}")
    if values["value_cache_bytes"] < 0:
        raise UsageError("--value-cache-bytes must not be negative")
    if values["quota_backend_bytes"] < 0:
        raise UsageError("--quota-backend-bytes must not be negative")
    if values["election_timeout"] < 5 * values["heartbeat_interval"]:
        raise UsageError(
            f"--election-timeout[{values['election_timeout']}ms] should be at least 5 times "
            f"--heartbeat-interval[{values['heartbeat_interval']}ms]"
        )
    log_level = "debug" if values["debug"] else values["log_level"]
    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level must be debug, info, warn, error, panic or fatal, not {log_level!r}")
    if values["logger"] not in ("zap", "capnslog"):
        raise UsageError(f"--logger must be 'zap' or 'capnslog', not {values['logger']!r}")
    log_outputs = _log_outputs(values["log_outputs"])
    if values["metrics"] not in ("basic", "extensive"):
        raise UsageError(f"--metrics must be 'basic' or 'extensive', not {values['metrics']!r}")
    if not 0 < values["max_concurrent_streams"] <= 2**32 - 1:
        raise UsageError("--max-concurrent-streams must be between 1 and 4294967295")
    if values["grpc_keepalive_min_time"] <= 0:
        raise UsageError("--grpc-keepalive-min-time must be positive")
    if values["backend_batch_interval"] < 0 or values["backend_batch_limit"] < 0:
        raise UsageError("--backend-batch-interval and --backend-batch-limit must not be negative")
    if values["experimental_watch_progress_notify_interval"] <= 0:
        raise UsageError("--experimental-watch-progress-notify-interval must be positive")
    from securekv.tlspolicy.ciphers import select as select_ciphers

    try:
        _, weak = select_ciphers(values["cipher_suites"])  # unknown names are refused here, before start
    except ValueError as exc:
        raise UsageError(f"--cipher-suites: {exc}") from None
    if weak:
        warnings.append("--cipher-suites: left out " + ", ".join(weak) + " (not forward secret and AEAD; "
                        "securekv offers TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305 only)")
    compaction_mode, retention = _auto_compaction(values["auto_compaction_mode"], values["auto_compaction_retention"])
    discovery_srv = values["discovery_srv"].strip()
    if discovery_srv and (sources or {}).get("initial_cluster", "default") != "default":
        raise UsageError('multiple discovery or bootstrap flags are set. Choose one of "initial-cluster", '
                         '"discovery" or "discovery-srv"')
    if values["tls_handshake_timeout"] <= 0:
        raise UsageError("--tls-handshake-timeout must be positive")
    for field in ("max_connections_per_listener", "max_connections_per_identity", "max_calls_per_identity",
                  "max_watches_per_identity",
                  "max_leases_per_identity", "max_response_bytes"):
        if values[field] <= 0:
            raise UsageError(f"--{field.replace('_', '-')} must be positive, got {values[field]}")
    if values["max_concurrent_streams"] > 2**31 - 1:
        values["max_concurrent_streams"] = 2**31 - 1  # etcd's MaxUint32 (unlimited): HTTP/2's largest value
    for field in ("grpc_keepalive_interval", "grpc_keepalive_timeout"):
        if values[field] < 0:
            raise UsageError(f"--{field.replace('_', '-')} must not be negative")
    if values["self_signed_cert_validity"] <= 0:
        raise UsageError("--self-signed-cert-validity must be positive")
    cert, key = values["cert_file"], values["key_file"]
    if bool(cert) != bool(key):
        raise UsageError("--cert-file and --key-file must be given together")
    if values["auto_tls"] and cert:
        raise UsageError("--auto-tls and --cert-file/--key-file are mutually exclusive")
    if values["trusted_ca_file"] and not cert and not values["auto_tls"]:
        raise UsageError("--trusted-ca-file needs --cert-file/--key-file (or --auto-tls) for the server side")
    if values["client_crl_file"] and cert and not values["trusted_ca_file"]:
        raise UsageError("--client-crl-file needs --trusted-ca-file")
    if values["client_cert_auth"] and cert and not values["trusted_ca_file"]:
        raise UsageError("--client-cert-auth needs --trusted-ca-file to verify client certificates")
    for field in ("cert_file", "key_file", "trusted_ca_file", "client_crl_file"):
        path = values[field]
        if path and not Path(path).is_file():
            raise UsageError(f"--{field.replace('_', '-')} {path}: no such file")
    if bool(values["peer_cert_file"]) != bool(values["peer_key_file"]):
        raise UsageError("--peer-cert-file and --peer-key-file must be given together")
    _check_auth(values)
    _check_signing_ca(values)
    client_cert_auth = _client_cert_auth(values, sources or {}, listen_client, metrics, warnings)
    _check_peer_auth(values, sources or {}, listen_client, warnings)
    return Config(
        name=name,
        data_dir=data_dir,
        wal_dir=wal_dir,
        listen_client_urls=listen_client,
        advertise_client_urls=advertise_client,
        listen_peer_urls=listen_peer,
        initial_advertise_peer_urls=adv_peer,
        initial_cluster=cluster,
        initial_cluster_state=state,
        initial_cluster_token=values["initial_cluster_token"],
        listen_metrics_urls=metrics,
        client_cert_auth=client_cert_auth,
        trusted_ca_file=values["trusted_ca_file"],
        cert_file=cert,
        key_file=key,
        client_crl_file=values["client_crl_file"],
        auto_tls=bool(values["auto_tls"]),
        peer_client_cert_auth=bool(values["peer_client_cert_auth"]),
        peer_trusted_ca_file=values["peer_trusted_ca_file"],
        peer_cert_file=values["peer_cert_file"],
        peer_key_file=values["peer_key_file"],
        peer_crl_file=values["peer_crl_file"],
        peer_auto_tls=bool(values["peer_auto_tls"]),
        peer_cert_allowed_cn=values["peer_cert_allowed_cn"],
        peer_cert_allowed_hostname=values["peer_cert_allowed_hostname"],
        force_new_cluster=bool(values["force_new_cluster"]),
        self_signed_cert_validity=values["self_signed_cert_validity"],
        snapshot_count=values["snapshot_count"],
        quota_backend_bytes=values["quota_backend_bytes"],
        max_request_bytes=values["max_request_bytes"],
        max_txn_ops=values["max_txn_ops"],
        value_cache_bytes=values["value_cache_bytes"],
        heartbeat_interval=values["heartbeat_interval"],
        election_timeout=values["election_timeout"],
        max_concurrent_streams=values["max_concurrent_streams"],
        grpc_keepalive_min_time=values["grpc_keepalive_min_time"],
        grpc_keepalive_interval=values["grpc_keepalive_interval"],
        grpc_keepalive_timeout=values["grpc_keepalive_timeout"],
        strict_reconfig_check=bool(values["strict_reconfig_check"]),
        pre_vote=bool(values["pre_vote"]),
        discovery_srv=discovery_srv,
        discovery_srv_name=values["discovery_srv_name"].strip(),
        auto_compaction_mode=compaction_mode,
        auto_compaction_retention=retention,
        cipher_suites=tuple(values["cipher_suites"]),
        metrics=values["metrics"],
        logger=values["logger"],
        log_outputs=log_outputs,
        enable_grpc_gateway=bool(values["enable_grpc_gateway"]),
        experimental_initial_corrupt_check=bool(values["experimental_initial_corrupt_check"]),
        experimental_corrupt_check_time=values["experimental_corrupt_check_time"],
        experimental_watch_progress_notify_interval=values["experimental_watch_progress_notify_interval"],
        experimental_warning_apply_duration=values["experimental_warning_apply_duration"],
        backend_batch_interval=values["backend_batch_interval"],
        backend_batch_limit=values["backend_batch_limit"],
        warnings=tuple(warnings),
        log_level=log_level,
        tls_handshake_timeout=values["tls_handshake_timeout"],
        max_connections_per_listener=values["max_connections_per_listener"],
        max_connections_per_identity=values["max_connections_per_identity"],
        max_calls_per_identity=values["max_calls_per_identity"],
        max_watches_per_identity=values["max_watches_per_identity"],
        max_leases_per_identity=values["max_leases_per_identity"],
        max_response_bytes=values["max_response_bytes"],
        insecure_allow_plaintext=insecure,
        backup=_backup_settings(values),
        auth_token=values.get("auth_token", "simple"),
        auth_token_ttl=values.get("auth_token_ttl", 300),
        bcrypt_cost=values.get("bcrypt_cost", 10),
        audit_log=values.get("audit_log", ""),
        signing_ca_cert_file=values.get("signing_ca_cert_file", ""),
        signing_ca_key_file=values.get("signing_ca_key_file", ""),
        insecure_skip_client_cert_auth=bool(values["insecure_skip_client_cert_auth"]),
        peer_insecure_skip_client_cert_auth=bool(values["peer_insecure_skip_client_cert_auth"]),
        experimental_peer_skip_client_san_verification=bool(values["experimental_peer_skip_client_san_verification"]),
        sources=dict(sources or {}),
    )


def _check_signing_ca(values: dict) -> None:
    cert, key = values.get("signing_ca_cert_file", ""), values.get("signing_ca_key_file", "")
    if bool(cert) != bool(key):
        raise UsageError("--signing-ca-cert-file and --signing-ca-key-file must be given together")
    if cert and not values["cert_file"]:
        raise UsageError("--signing-ca-cert-file needs an https:// client port (--cert-file/--key-file): "
                         "joining members reach it there")
    for field in ("signing_ca_cert_file", "signing_ca_key_file"):
        path = values.get(field, "")
        if path and not Path(path).is_file():
            raise UsageError(f"--{field.replace('_', '-')} {path}: no such file")


def _check_auth(values: Mapping[str, Any]) -> None:
    from securekv.auth.tokens import parse_token_spec

    spec = parse_token_spec(values.get("auth_token", "simple") or "simple")
    for key in ("pub_key", "priv_key"):
        path = getattr(spec, key)
        if path and not Path(path).is_file():
            raise UsageError(f"--auth-token {key.replace('_', '-')} {path}: no such file")
    if values.get("auth_token_ttl", 300) <= 0:
        raise UsageError("--auth-token-ttl must be positive")
    audit = values.get("audit_log", "")
    if audit and Path(audit).is_dir():
        raise UsageError(f"--audit-log {audit}: is a directory")


LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "panic", "fatal")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _unsupported(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    """Warnings for IGNORED options set away from etcd's default; UsageError for REFUSED ones."""
    warnings = []
    for option in OPTIONS:
        if option.support not in (IGNORED, REFUSED):
            continue
        value = values.get(option.field, option.default)
        if value == option.default or (option.kind == LIST and list(value) == list(option.default)):
            continue
        where = sources.get(option.field, "flag")
        text = f"--{option.flag}={_shown(value)} (from {where})"
        if option.support == REFUSED:
            raise UsageError(f"{text} is not supported: {option.reason}")
        warnings.append(f"{text} has no effect: {option.reason}")
    return warnings


def _log_outputs(items: list[str]) -> tuple[str, ...]:
    """etcd's --log-outputs: 'default' (stderr), stderr, stdout, systemd/journal, or file paths."""
    outputs = tuple(items) or ("default",)
    if len(set(outputs)) != len(outputs):
        raise UsageError(f"--log-outputs lists an output twice: {','.join(outputs)}")
    if "systemd/journal" in outputs and len(outputs) > 1:
        raise UsageError('--log-outputs: "systemd/journal" cannot be combined with other outputs (as etcd)')
    if "default" in outputs and len(outputs) > 1:
        raise UsageError('--log-outputs: "default" cannot be combined with other outputs')
    return outputs


def _auto_compaction(mode: str, retention: str) -> tuple[str, float]:
    """(mode, retention): seconds for 'periodic' (a bare number is hours, as etcd), revisions for 'revision'."""
    from securekv.client.gofmt import parse_duration

    text = str(retention).strip() or "0"
    if mode == "revision":
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"--auto-compaction-retention {retention!r}: 'revision' mode takes a number of "
                             "revisions") from None
        if value < 0:
            raise UsageError("--auto-compaction-retention must not be negative")
        return mode, float(value)
    if mode != "periodic":
        raise UsageError(f"--auto-compaction-mode must be 'periodic' or 'revision', not {mode!r}")
    try:
        hours = float(text)
        seconds = hours * 3600.0
    except ValueError:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise UsageError(f"--auto-compaction-retention {retention!r}: expected hours (e.g. 1) or a duration "
                             "(e.g. 30m)") from None
    if seconds < 0:
        raise UsageError("--auto-compaction-retention must not be negative")
    return mode, seconds


def _explicit(sources: Mapping[str, str], field: str) -> bool:
    return sources.get(field, "default") != "default"


def _client_cert_auth(values: Mapping[str, Any], sources: Mapping[str, str], listen_client: tuple[URL, ...],
                      metrics: tuple[URL, ...], warnings: list[str]) -> bool:
    """https:// client (and metrics) URLs require client certificates unless explicitly opted out.

    etcd's default is --client-cert-auth=false, which serves anonymous clients with full access
    once TLS is on; securekv refuses that silently-open door. The embedded default (no
    certificate material at all) has its own CA and always requires client certificates.
    """
    skip = bool(values["insecure_skip_client_cert_auth"])
    tls = any(u.is_tls for u in (*listen_client, *metrics))
    if skip:
        if values["client_cert_auth"] and _explicit(sources, "client_cert_auth"):
            raise UsageError("--client-cert-auth and --insecure-skip-client-cert-auth contradict each other")
        if embedded_pki(listen_client, bool(values["auto_tls"]), values["cert_file"], values["key_file"],
                        values["trusted_ca_file"]):
            raise UsageError("--insecure-skip-client-cert-auth needs --cert-file/--key-file or --auto-tls: the "
                             "embedded default always requires client certificates")
        return False
    if not tls or embedded_pki(listen_client, bool(values["auto_tls"]), values["cert_file"], values["key_file"],
                               values["trusted_ca_file"]):
        return True
    if not values["client_cert_auth"] and _explicit(sources, "client_cert_auth"):
        # etcd's sample config writes the default out; securekv keeps certificates required.
        warnings.append(f"--client-cert-auth=false (from {sources.get('client_cert_auth')}) is ignored: https:// "
                        "client URLs always require client certificates in securekv; the opt-out is "
                        "--insecure-skip-client-cert-auth")
    if not values["trusted_ca_file"]:
        raise UsageError("https:// client URLs require client certificates: give --trusted-ca-file (the CA that "
                         "issues client certificates) and --client-cert-auth, or pass "
                         "--insecure-skip-client-cert-auth to serve TLS to clients without a certificate")
    return True


def _check_peer_auth(values: Mapping[str, Any], sources: Mapping[str, str], listen_client: tuple[URL, ...],
                     warnings: list[str]) -> None:
    """The peer port always requires a member certificate; see securekv/tlspolicy/peer.py."""
    skip = bool(values["peer_insecure_skip_client_cert_auth"])
    if not values["peer_client_cert_auth"] and _explicit(sources, "peer_client_cert_auth") and not skip:
        warnings.append(f"--peer-client-cert-auth=false (from {sources.get('peer_client_cert_auth')}) is ignored: "
                        "the peer port always requires member certificates in securekv; the only opt-out is "
                        "--peer-insecure-skip-client-cert-auth")
    if values["peer_cert_allowed_cn"] and values["peer_cert_allowed_hostname"]:
        raise UsageError("--peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive (as in etcd)")
    if values["peer_auto_tls"]:
        if values["peer_cert_file"] or values["peer_trusted_ca_file"]:
            raise UsageError("--peer-auto-tls and --peer-cert-file/--peer-trusted-ca-file are mutually exclusive")
        embedded = embedded_pki(listen_client, bool(values["auto_tls"]), values["cert_file"], values["key_file"],
                                values["trusted_ca_file"])
        if not embedded and not skip:
            raise UsageError("--peer-auto-tls makes self-signed peer certificates that no member can verify, so "
                             "anyone reaching the peer port could join the cluster. Issue peer certificates from "
                             "one CA (securekv pki issue peer NAME) and pass --peer-cert-file/--peer-key-file/"
                             "--peer-trusted-ca-file, or opt out with --peer-insecure-skip-client-cert-auth")
    for field in ("peer_cert_file", "peer_key_file", "peer_trusted_ca_file", "peer_crl_file"):
        path = values[field]
        if path and not Path(path).is_file():
            raise UsageError(f"--{field.replace('_', '-')} {path}: no such file")


def _parse_initial_cluster(text: str, name: str, adv_peer: tuple[URL, ...]) -> tuple[tuple[str, str], ...]:
    if not text:
        return tuple((name, str(u)) for u in adv_peer)
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        member, sep, url = item.partition("=")
        if not sep or not member or not url:
            raise UsageError(f"invalid --initial-cluster entry {item!r}: expected name=peerURL")
        parse_url(url, "--initial-cluster")
        pairs.append((member, url.strip()))
    mine = {u for m, u in pairs if m == name}
    if not mine:
        raise UsageError(f"--initial-cluster has no entry for this member's --name {name!r}")
    advertised = {str(u) for u in adv_peer}
    if mine != advertised and {parse_url(u, "x") for u in mine} != set(adv_peer):
        raise UsageError(
            f"--initial-cluster entries for {name!r} ({', '.join(sorted(mine))}) do not match "
            f"--initial-advertise-peer-urls ({', '.join(sorted(advertised))})"
        )
    return tuple(pairs)


def _backup_settings(values: Mapping[str, Any]) -> BackupSettings:
    """--backup-*: always encrypted, so a directory needs a usable key file (read now, so a bad
    one fails at start-up, not an hour later)."""
    from securekv.client.gofmt import parse_duration

    directory, key_file = values.get("backup_dir", ""), values.get("backup_encryption_key_file", "")
    if not directory and not key_file:
        return BackupSettings()
    if not directory:
        raise UsageError("--backup-encryption-key-file needs --backup-dir")
    if not key_file:
        raise UsageError("--backup-dir needs --backup-encryption-key-file (backups are always encrypted; "
                         "make a key with `securekv ctl snapshot keygen FILE`)")
    from securekv.snapcrypt.keys import read_key_file

    read_key_file(key_file)  # KeySourceError is a UsageError naming the file
    try:
        interval = parse_duration(str(values.get("backup_interval", "1h")))
    except ValueError as exc:
        raise UsageError(f"invalid --backup-interval {values.get('backup_interval')!r}: {exc}") from None
    if interval < 1:
        raise UsageError("--backup-interval must be at least 1s")
    retain = values.get("backup_retain", 7)
    if retain < 1:
        raise UsageError("--backup-retain must be at least 1")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UsageError(f"--backup-dir {directory} exists and is not a directory")
    return BackupSettings(dir=directory, interval=interval, retain=retain, key_file=key_file)
