"""The table of `securekv serve` options: etcd's flag names, types, defaults and YAML keys.

One table drives the click flags, the ``SECUREKV_*``/``ETCD_*`` environment variables and the
YAML config-file keys, so the three sources can never disagree about what an option is.
"""

from __future__ import annotations

import attrs

# Value kinds: how a string from the environment (or a YAML scalar) is converted.
STR, INT, BOOL, LIST, FLOAT = "str", "int", "bool", "list", "float"


@attrs.frozen
class Option:
    flag: str  # etcd's flag name without dashes, e.g. "listen-client-urls"
    kind: str
    default: object
    help: str
    # Path in etcd's YAML config file; None = same as the flag name at top level.
    yaml: tuple[str, ...] | None = None

    @property
    def field(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env_suffix(self) -> str:
        return self.flag.replace("-", "_").upper()

    @property
    def yaml_path(self) -> tuple[str, ...]:
        return self.yaml if self.yaml is not None else (self.flag,)


_CTS = "client-transport-security"
_PTS = "peer-transport-security"

OPTIONS: tuple[Option, ...] = (
    Option("name", STR, "default", "Human-readable name for this member."),
    Option("data-dir", STR, "", "Path to the data directory (default: ./<name>.securekv)."),
    Option("wal-dir", STR, "", "Path to a dedicated WAL directory (default: <data-dir>/member/wal)."),
    Option("listen-client-urls", LIST, ["https://127.0.0.1:2379"], "Comma list of URLs to serve clients on."),
    Option("advertise-client-urls", LIST, [], "Client URLs advertised to the cluster (default: the listen URLs)."),
    Option("listen-peer-urls", LIST, ["https://127.0.0.1:2380"], "Comma list of URLs to listen on for peers."),
    Option("initial-advertise-peer-urls", LIST, ["https://127.0.0.1:2380"], "This member's peer URLs."),
    Option("initial-cluster", STR, "", "Initial cluster: name=peerURL,... (default: <name>=<advertise peer urls>)."),
    Option("initial-cluster-state", STR, "new", "'new' or 'existing'."),
    Option("initial-cluster-token", STR, "etcd-cluster", "Initial cluster token."),
    Option("listen-metrics-urls", LIST, [], "URLs serving /metrics and /health (http:// allowed on loopback)."),
    Option("client-cert-auth", BOOL, False, "Require client certificates.", (_CTS, "client-cert-auth")),
    Option("trusted-ca-file", STR, "", "CA bundle verifying client certificates.", (_CTS, "trusted-ca-file")),
    Option("cert-file", STR, "", "Client-port server certificate (PEM).", (_CTS, "cert-file")),
    Option("key-file", STR, "", "Client-port server private key (PEM).", (_CTS, "key-file")),
    Option("client-crl-file", STR, "", "CRL (PEM) of revoked client certificates."),
    Option("auto-tls", BOOL, False, "Generate a self-signed client-port certificate.", (_CTS, "auto-tls")),
    Option("peer-client-cert-auth", BOOL, False, "Require peer client certificates.", (_PTS, "client-cert-auth")),
    Option("peer-trusted-ca-file", STR, "", "CA bundle verifying peers.", (_PTS, "trusted-ca-file")),
    Option("peer-cert-file", STR, "", "Peer certificate (PEM).", (_PTS, "cert-file")),
    Option("peer-key-file", STR, "", "Peer private key (PEM).", (_PTS, "key-file")),
    Option("peer-crl-file", STR, "", "CRL (PEM) of revoked peer certificates."),
    Option("peer-auto-tls", BOOL, False, "Generate a self-signed peer certificate.", (_PTS, "auto-tls")),
    Option("peer-cert-allowed-cn", STR, "", "Only accept peer certificates with this CN.", (_PTS, "allowed-cn")),
    Option("peer-cert-allowed-hostname", STR, "", "Only accept peer certificates valid for this host name.", (_PTS, "allowed-hostname")),
    Option("force-new-cluster", BOOL, False, "Restart this member's data as a one-member cluster (disaster recovery)."),
    Option("self-signed-cert-validity", INT, 1, "Validity of auto-TLS certificates, in years."),
    Option("snapshot-count", INT, 100000, "Committed entries between snapshots."),
    Option("quota-backend-bytes", INT, 0, "Backend size limit raising the NOSPACE alarm (0 = 2 GiB)."),
    Option("max-request-bytes", INT, 1572864, "Largest client request accepted, in bytes."),
    Option("max-txn-ops", INT, 128, "Most operations allowed in one txn."),
    Option("heartbeat-interval", INT, 100, "Raft heartbeat interval in ms."),
    Option("election-timeout", INT, 1000, "Raft election timeout in ms."),
    Option("log-level", STR, "info", "debug, info, warn or error."),
    Option("tls-handshake-timeout", FLOAT, 10.0, "Seconds a client may take to finish the TLS handshake."),
    Option(
        "insecure-allow-plaintext",
        BOOL,
        False,
        "DANGEROUS: allow http:// client/peer listeners (no encryption, no authentication).",
    ),
    # Scheduled encrypted backups (securekv/server/backup.py, docs/snapshots.md).
    Option("backup-dir", STR, "", "Directory for scheduled encrypted backups of this member (off when empty)."),
    Option("backup-interval", STR, "1h", "Time between scheduled backups (a Go duration: 30m, 6h)."),
    Option("backup-retain", INT, 7, "Scheduled backups kept in --backup-dir; older ones are deleted."),
    Option("backup-encryption-key-file", STR, "", "32-byte key (`securekv ctl snapshot keygen`) encrypting the backups."),
    # -- auth (RBAC; docs/auth.md) --
    Option("auth-token", STR, "simple",
           "Token type: 'simple' or 'jwt,pub-key=FILE,priv-key=FILE,sign-method=METHOD[,ttl=5m]' "
           "(jwt without keys: an Ed25519/ECDSA pair is made in the data dir)."),
    Option("auth-token-ttl", INT, 300, "Lifetime of a simple token in seconds, renewed on use."),
    Option("bcrypt-cost", INT, 10, "bcrypt cost of password hashes (4-31)."),
    Option("audit-log", STR, "", "Write every authorisation decision to this file as JSON lines (rotated)."),
)

BY_FLAG: dict[str, Option] = {o.flag: o for o in OPTIONS}
BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS}
