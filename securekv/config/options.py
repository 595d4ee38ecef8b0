"""The table of `securekv serve` options: etcd's flag names, types, defaults and YAML keys.

One table drives the click flags, the ``SECUREKV_*``/``ETCD_*`` environment variables and the
YAML config-file keys, so the three sources can never disagree about what an option is.
"""

from __future__ import annotations

import attrs

# Value kinds: how a string from the environment (or a YAML scalar) is converted.
# DURATION: a Go duration ("5s", "10m", "100ms") from flags and env, seconds in the Config; in
# YAML an integer is nanoseconds (what etcd's config file takes: Go's time.Duration in JSON).
STR, INT, BOOL, LIST, FLOAT, DURATION = "str", "int", "bool", "list", "float", "duration"

# What securekv does with an etcd 3.4 flag (the classification docs/server.md tabulates and
# tests/server/test_flags_etcd.py checks against the real `etcd --help`):
# IMPLEMENTED: etcd's meaning. IGNORED: accepted; a value other than etcd's default logs a
# warning naming why it has no effect. REFUSED: accepted at etcd's default only; any other value
# stops the member before it touches the data dir, with the reason.
IMPLEMENTED, IGNORED, REFUSED = "implemented", "ignored", "refused"


@attrs.frozen
class Option:
    flag: str  # etcd's flag name without dashes, e.g. "listen-client-urls"
    kind: str
    default: object
    help: str
    # Path in etcd's YAML config file; None = same as the flag name at top level.
    yaml: tuple[str, ...] | None = None
    support: str = IMPLEMENTED
    # IGNORED/REFUSED: why (shown to the operator); IMPLEMENTED: where it differs from etcd, if at all.
    reason: str = ""

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
    Option("client-cert-auth", BOOL, False, "Require client certificates.", (_CTS, "client-cert-auth"),
           reason="implied on every https:// client URL (a CA is required); an explicit false is ignored with a warning: the opt-out is --insecure-skip-client-cert-auth (docs/security.md)"),
    Option("trusted-ca-file", STR, "", "CA bundle verifying client certificates.", (_CTS, "trusted-ca-file")),
    Option("cert-file", STR, "", "Client-port server certificate (PEM).", (_CTS, "cert-file")),
    Option("key-file", STR, "", "Client-port server private key (PEM).", (_CTS, "key-file")),
    Option("client-crl-file", STR, "", "CRL (PEM) of revoked client certificates.",
           reason="CRLs only, each verified against the trusted CA; leaf and intermediates; live connections of newly revoked certificates are closed on reload; an expired CRL stays enforced"),
    Option("auto-tls", BOOL, False, "Generate a self-signed client-port certificate.", (_CTS, "auto-tls")),
    Option("peer-client-cert-auth", BOOL, False, "Require peer client certificates.", (_PTS, "client-cert-auth"),
           reason="always on: the peer port requires a peer-profile certificate bound to the member it speaks for; an explicit false is ignored with a warning: the opt-out is --peer-insecure-skip-client-cert-auth"),
    Option("peer-trusted-ca-file", STR, "", "CA bundle verifying peers.", (_PTS, "trusted-ca-file")),
    Option("peer-cert-file", STR, "", "Peer certificate (PEM).", (_PTS, "cert-file")),
    Option("peer-key-file", STR, "", "Peer private key (PEM).", (_PTS, "key-file")),
    Option("peer-crl-file", STR, "", "CRL (PEM) of revoked peer certificates.",
           reason="as --client-crl-file, for the peer port (both directions)"),
    Option("peer-auto-tls", BOOL, False, "Generate a self-signed peer certificate.", (_PTS, "auto-tls"),
           reason="refused outside the embedded default (self-signed peer certificates authenticate nobody); there the local CA issues the member's peer certificate"),
    Option("peer-cert-allowed-cn", STR, "", "Only accept peer certificates with this CN.", (_PTS, "allowed-cn")),
    Option("peer-cert-allowed-hostname", STR, "", "Only accept peer certificates valid for this host name.", (_PTS, "allowed-hostname")),
    Option("force-new-cluster", BOOL, False, "Restart this member's data as a one-member cluster (disaster recovery)."),
    Option("self-signed-cert-validity", INT, 1, "Validity of auto-TLS certificates, in years."),
    Option("snapshot-count", INT, 100000, "Committed entries between snapshots."),
    Option("quota-backend-bytes", INT, 0, "Backend size limit raising the NOSPACE alarm (0 = 2 GiB)."),
    Option("max-request-bytes", INT, 1572864, "Largest client request accepted, in bytes."),
    Option("max-txn-ops", INT, 128, "Most operations allowed in one txn."),
    Option("value-cache-bytes", INT, 32 * 1024 * 1024,
           "Memory for recently used values; everything else is read from the backend on demand."),
    Option("heartbeat-interval", INT, 100, "Raft heartbeat interval in ms."),
    Option("election-timeout", INT, 1000, "Raft election timeout in ms."),
    # -- etcd 3.4 flags (issue 18): every flag of `etcd --help` is in this table --------------
    Option("max-concurrent-streams", INT, 1000, "Maximum concurrent streams each client connection may open.",
           reason="default 1000 (etcd: unlimited, MaxUint32, which is accepted and means 2^31-1): the server "
                  "runs every stream in one thread, so one connection may not hold it all; a client needing "
                  "more opens another connection, as Go clients do; extra streams get RST_STREAM REFUSED_STREAM"),
    Option("grpc-keepalive-min-time", DURATION, 5.0, "Minimum interval a client should wait before pinging the server."),
    Option("grpc-keepalive-interval", DURATION, 7200.0, "Server-to-client ping interval on idle connections (0 disables)."),
    Option("grpc-keepalive-timeout", DURATION, 20.0, "Wait for a ping answer before closing the connection (0 disables)."),
    Option("strict-reconfig-check", BOOL, True, "Reject reconfiguration requests that would cause quorum loss."),
    Option("pre-vote", BOOL, True, "Run Raft's pre-vote phase before an election.",
           reason="default true (etcd 3.5's default; 3.4's is false): a member rejoining after a partition does not depose a healthy leader"),
    Option("discovery-srv", STR, "", "DNS SRV domain used to bootstrap the cluster."),
    Option("discovery-srv-name", STR, "", "Suffix to the DNS SRV name queried when bootstrapping."),
    Option("auto-compaction-mode", STR, "periodic", "'periodic' (duration retention) or 'revision' (revision count retention)."),
    Option("auto-compaction-retention", STR, "0", "Auto compaction retention (0 disables): hours or a duration for periodic, revisions for revision."),
    Option("cipher-suites", LIST, [], "TLS 1.2 cipher suites (etcd's Go names) for the client and peer ports; empty = securekv's AEAD set."),
    Option("metrics", STR, "basic", "'basic', or 'extensive' to add the per-RPC latency histograms."),
    Option("logger", STR, "zap", "'zap' (JSON lines, etcd's keys) or 'capnslog' (plain text lines).",
           reason="default zap (etcd 3.5's default; 3.4's help says capnslog): the structured lines log watchers parse"),
    Option("log-outputs", LIST, ["default"], "Comma list: stderr, stdout, systemd/journal or file paths ('default' = stderr)."),
    Option("debug", BOOL, False, "Same as --log-level debug (etcd 3.4's deprecated flag)."),
    Option("enable-grpc-gateway", BOOL, True, "Serve the JSON gateway (/v3/...) on the client port."),
    Option("experimental-initial-corrupt-check", BOOL, False, "Compare this member's hashkv with its peers' before serving clients."),
    Option("experimental-corrupt-check-time", DURATION, 0.0, "Interval between cluster corruption checks by the leader (0 disables)."),
    Option("experimental-watch-progress-notify-interval", DURATION, 600.0, "Period of watch progress notifications."),
    Option("experimental-warning-apply-duration", DURATION, 0.1, "Log a warning when applying one request takes longer."),
    Option("initial-election-tick-advance", BOOL, True, "Fast-forward initial election ticks on boot.", support=IGNORED,
           reason="a securekv member campaigns one randomized election timeout after start; there are no ticks to advance or keep"),
    Option("max-snapshots", INT, 5, "Maximum number of snapshot files to retain.", support=IGNORED,
           reason="securekv writes no .snap files: the backend is the snapshot, and only the newest WAL marker is kept"),
    Option("max-wals", INT, 5, "Maximum number of WAL files to retain.", support=IGNORED,
           reason="WAL segments are released as soon as a snapshot (--snapshot-count) covers them"),
    Option("backend-batch-interval", DURATION, 0.0,
           "Maximum time before committing the backend transaction (0 = etcd's 100ms)."),
    Option("backend-batch-limit", INT, 0, "Maximum operations before committing the backend transaction (0 = etcd's 10000)."),
    Option("discovery", STR, "", "Discovery URL used to bootstrap the cluster.", support=REFUSED,
           reason="the v2 discovery service protocol is not supported; bootstrap with --initial-cluster or --discovery-srv"),
    Option("discovery-fallback", STR, "proxy", "Behaviour when the discovery service fails.", support=IGNORED,
           reason="it only applies to --discovery, which securekv refuses"),
    Option("discovery-proxy", STR, "", "HTTP proxy for the discovery service.", support=IGNORED,
           reason="it only applies to --discovery, which securekv refuses"),
    Option("enable-v2", BOOL, False, "Accept etcd v2 client requests.", support=REFUSED,
           reason="the v2 API is not served: securekv serves etcd's v3 API only (migrate v2 data with etcdctl migrate first)"),
    Option("experimental-enable-v2v3", STR, "", "Serve v2 requests through the v3 backend.", support=REFUSED,
           reason="the v2 API is not served: securekv serves etcd's v3 API only"),
    Option("client-cert-allowed-hostname", STR, "", "Allowed TLS hostname for client certificate authentication.", support=REFUSED,
           reason="not supported: securekv names clients by their certificate's CN; issue client certificates from a CA that signs only clients"),
    Option("cors", LIST, ["*"], "Comma list of CORS origins.", support=IGNORED,
           reason="HTTP answers carry 'Access-Control-Allow-Origin: *' as etcd's default; every request needs a client certificate, which cross-origin browser requests do not present"),
    Option("host-whitelist", LIST, ["*"], "Acceptable Host headers for plain-HTTP requests.", support=IGNORED,
           reason="securekv serves HTTP behind TLS with client certificates; there is no plain-HTTP Host check"),
    Option("enable-pprof", BOOL, False, "Serve Go runtime profiles under /debug/pprof.", support=IGNORED,
           reason="Go runtime profiling does not exist in securekv (profile with py-spy)"),
    Option("proxy", STR, "off", "v2 proxy mode.", support=REFUSED,
           reason="the v2 proxy is not provided; use `securekv gateway` (etcd's L4 gateway) in front of the members"),
    Option("proxy-failure-wait", INT, 5000, "v2 proxy: ms an endpoint is held failed.", support=IGNORED,
           reason="it only applies to --proxy, which securekv refuses"),
    Option("proxy-refresh-interval", INT, 30000, "v2 proxy: endpoint refresh interval in ms.", support=IGNORED,
           reason="it only applies to --proxy, which securekv refuses"),
    Option("proxy-dial-timeout", INT, 1000, "v2 proxy: dial timeout in ms.", support=IGNORED,
           reason="it only applies to --proxy, which securekv refuses"),
    Option("proxy-write-timeout", INT, 5000, "v2 proxy: write timeout in ms.", support=IGNORED,
           reason="it only applies to --proxy, which securekv refuses"),
    Option("proxy-read-timeout", INT, 0, "v2 proxy: read timeout in ms.", support=IGNORED,
           reason="it only applies to --proxy, which securekv refuses"),
    Option("experimental-backend-bbolt-freelist-type", STR, "array", "bbolt freelist type.", support=IGNORED,
           reason="the backend is sqlite, not bbolt"),
    Option("experimental-enable-lease-checkpoint", BOOL, False, "Persist the primary lessor's remaining TTLs.", support=IGNORED,
           reason="not implemented: a new leader renews every lease with its full TTL, etcd's behaviour without checkpoints"),
    Option("experimental-enable-lease-checkpoint-persist", BOOL, False, "Persist lease checkpoints to the backend.", support=IGNORED,
           reason="not implemented: a new leader renews every lease with its full TTL, etcd's behaviour without checkpoints"),
    Option("experimental-compaction-batch-limit", INT, 1000, "Revisions deleted per compaction batch.", support=IGNORED,
           reason="a compaction is applied in one backend transaction"),
    Option("log-package-levels", STR, "", "Per-package capnslog levels.", support=IGNORED,
           reason="one level for the whole member: use --log-level"),
    Option("unsafe-no-fsync", BOOL, False, "Disable fsync (unsafe).", support=REFUSED,
           reason="securekv never acknowledges a write before it is fsynced; that guarantee has no off switch"),
    Option("log-level", STR, "info", "debug, info, warn, error, panic or fatal."),
    Option("tls-handshake-timeout", FLOAT, 10.0, "Seconds a client may take to finish the TLS handshake."),
    Option("max-connections-per-listener", INT, 4096,
           "Most client connections one client URL (or metrics URL) serves at once; more are closed at once."),
    Option("max-connections-per-identity", INT, 1024,
           "Most client connections one identity (certificate CN) may hold on one client URL; more are closed."),
    Option("max-calls-per-identity", INT, 10000,
           "Most concurrent gRPC calls (unary and streams) of one client identity (certificate CN or user)."),
    Option("max-watches-per-identity", INT, 100000,
           "Most watchers one client identity may hold open; more creates are canceled."),
    Option("max-leases-per-identity", INT, 100000,
           "Most leases one client identity may hold granted through this member; more grants are refused."),
    Option("max-response-bytes", INT, 268435456,
           "Largest response sent to a client, in bytes (etcd: 2 GiB); a larger range is refused, not built."),
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
    # Joining without the CA key (issue 16): a member holding these signs the certificate
    # requests of new members that present a valid join token (docs/pki.md).
    Option("signing-ca-cert-file", STR, "", "CA certificate (PEM, then its chain) this member signs joining members' certificates with."),
    Option("signing-ca-key-file", STR, "", "Private key of --signing-ca-cert-file (0600)."),
    # securekv's hardening opt-outs (issue 12): off by default, warned about at every start,
    # refused by `securekv install`.
    Option("insecure-skip-client-cert-auth", BOOL, False,
           "DANGEROUS: serve https:// client (and metrics) URLs to clients without a certificate."),
    Option("peer-insecure-skip-client-cert-auth", BOOL, False,
           "DANGEROUS: accept peer connections without a member certificate (and --peer-auto-tls without a CA)."),
    Option("experimental-peer-skip-client-san-verification", BOOL, False,
           "Skip verification of SAN field in client certificate for peer connections."),
)

BY_FLAG: dict[str, Option] = {o.flag: o for o in OPTIONS}
# Flags of `etcd --help` that are not options of the member itself.
COMMAND_FLAGS: dict[str, str] = {
    "config-file": "--config-file (YAML with etcd's keys; merged with flags and env, see docs/server.md)",
    "version": "--version (securekv's and the etcd API version)",
}
BY_FIELD: dict[str, Option] = {o.field: o for o in OPTIONS}
