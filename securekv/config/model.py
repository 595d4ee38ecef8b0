"""The resolved, validated member configuration (frozen: nothing changes it after start-up)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import attrs

from securekv.errors import UsageError


@attrs.frozen
class URL:
    """A listen/advertise URL reduced to what we use: scheme, host, port."""

    scheme: str
    host: str
    port: int

    @property
    def is_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(text: str, what: str) -> URL:
    try:
        parts = urlsplit(text.strip())
    except ValueError as exc:  # found by fuzzing: "https://127.0.0[.1:2380" (Invalid IPv6 URL)
        raise UsageError(f"invalid {what} URL {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https", "unix", "unixs") or not parts.hostname:
        raise UsageError(f"invalid {what} URL {text!r}: expected http(s)://host:port")
    if parts.scheme in ("unix", "unixs"):
        raise UsageError(f"{what} URL {text!r}: unix sockets are not supported")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"invalid {what} URL {text!r}: bad port") from None
    if port is None:
        raise UsageError(f"invalid {what} URL {text!r}: a port is required")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"invalid {what} URL {text!r}: URLs must not have a path or query")
    return URL(parts.scheme, parts.hostname, port)


def embedded_pki(client_urls: tuple[URL, ...], auto_tls: bool, cert_file: str, key_file: str,
                 trusted_ca_file: str) -> bool:
    return any(u.is_tls for u in client_urls) and not (auto_tls or cert_file or key_file or trusted_ca_file)


@attrs.frozen
class BackupSettings:
    """Scheduled encrypted backups (``--backup-*``); ``dir`` empty = off."""

    dir: str = ""
    interval: float = 3600.0  # seconds
    retain: int = 7
    key_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.dir)


@attrs.frozen
class Config:
    name: str
    data_dir: str
    wal_dir: str
    listen_client_urls: tuple[URL, ...]
    advertise_client_urls: tuple[URL, ...]
    listen_peer_urls: tuple[URL, ...]
    initial_advertise_peer_urls: tuple[URL, ...]
    initial_cluster: tuple[tuple[str, str], ...]  # (name, peer URL) pairs in the order given
    initial_cluster_state: str
    initial_cluster_token: str
    listen_metrics_urls: tuple[URL, ...]
    client_cert_auth: bool
    trusted_ca_file: str
    cert_file: str
    key_file: str
    client_crl_file: str
    auto_tls: bool
    peer_client_cert_auth: bool
    peer_trusted_ca_file: str
    peer_cert_file: str
    peer_key_file: str
    peer_crl_file: str
    peer_auto_tls: bool
    peer_cert_allowed_cn: str
    peer_cert_allowed_hostname: str
    force_new_cluster: bool
    self_signed_cert_validity: int
    snapshot_count: int
    quota_backend_bytes: int
    max_request_bytes: int
    max_txn_ops: int
    heartbeat_interval: int
    election_timeout: int
    # etcd 3.4 flags added by issue 18 (securekv/config/options.py says what each does).
    max_concurrent_streams: int
    grpc_keepalive_min_time: float  # seconds
    grpc_keepalive_interval: float
    grpc_keepalive_timeout: float
    strict_reconfig_check: bool
    pre_vote: bool
    discovery_srv: str
    discovery_srv_name: str
    auto_compaction_mode: str
    auto_compaction_retention: float  # seconds ('periodic') or revisions ('revision'); 0 = off
    cipher_suites: tuple[str, ...]
    metrics: str
    logger: str
    log_outputs: tuple[str, ...]
    enable_grpc_gateway: bool
    experimental_initial_corrupt_check: bool
    experimental_corrupt_check_time: float
    experimental_watch_progress_notify_interval: float
    experimental_warning_apply_duration: float
    backend_batch_interval: float  # seconds; 0 = etcd's default (100 ms)
    backend_batch_limit: int  # entries; 0 = etcd's default (10,000)
    # Warnings about accepted flags that have no effect here, logged once logging is set up.
    warnings: tuple[str, ...]
    log_level: str
    tls_handshake_timeout: float
    max_connections_per_listener: int
    max_connections_per_identity: int
    max_calls_per_identity: int
    max_watches_per_identity: int
    max_leases_per_identity: int
    max_response_bytes: int
    insecure_allow_plaintext: bool
    backup: BackupSettings = BackupSettings()
    auth_token: str = "simple"
    auth_token_ttl: int = 300
    bcrypt_cost: int = 10
    audit_log: str = ""
    signing_ca_cert_file: str = ""
    signing_ca_key_file: str = ""
    insecure_skip_client_cert_auth: bool = False
    peer_insecure_skip_client_cert_auth: bool = False
    experimental_peer_skip_client_san_verification: bool = False
    value_cache_bytes: int = 32 * 1024 * 1024
    # Where each value came from ("flag", "env", "file", "default"): shown by --log-level debug.
    sources: dict[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def embedded_pki(self) -> bool:
        """No certificate material given: run the embedded default (local CA under the data dir)."""
        return embedded_pki(self.listen_client_urls, self.auto_tls, self.cert_file, self.key_file,
                            self.trusted_ca_file)

    @property
    def effective_quota_bytes(self) -> int:
        return self.quota_backend_bytes if self.quota_backend_bytes > 0 else 2 * 1024**3
