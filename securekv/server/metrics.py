"""Prometheus metrics of one member under etcd 3.4's names, types and labels.

Why etcd's names: operators bring etcd's upstream alert rules and Grafana dashboards (and the
etcd mixin); they query ``etcd_server_has_leader``, ``etcd_server_leader_changes_seen_total``,
``etcd_disk_wal_fsync_duration_seconds_bucket``, ``grpc_server_handled_total{grpc_type,...}``
and so on. Every etcd 3.4 metric whose concept securekv has is exported here with etcd's type,
labels and histogram buckets; securekv's own extras are ``securekv_*``; what securekv lacks (Go
runtime, the v2 store, grpc-proxy caches, bbolt internals) is listed in docs/server.md and in
the test that diffs the name set against the real etcd's ``/metrics``.

A private registry (several servers may share a process in tests). Most values are read at
scrape time through ``sources`` callables (gauges and counters that components already keep),
so the hot path only touches plain integers; histograms are observed where the event happens.
The per-RPC interface used by the RPC layer is ``observe(method, code, seconds[, grpc_type,
service])`` (and ``started(method[, grpc_type, service])`` when a call begins); the gRPC
dispatcher and the JSON gateway pass both from their API-table row (``api/table.py``), so
grpc.health's Watch is not counted as etcd's.
"""

from __future__ import annotations

import bisect
import os
import resource
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator

import attrs
from cryptography import x509
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLUSTER_VERSION_LABEL = "3.4"


def exponential(start: float, factor: float, count: int) -> tuple[float, ...]:
    """prometheus.ExponentialBuckets."""
    return tuple(start * factor**i for i in range(count))


# gRPC method -> (service, type), as etcd's grpc_prometheus labels them.
_KV, _WATCH, _LEASE = "etcdserverpb.KV", "etcdserverpb.Watch", "etcdserverpb.Lease"
_CLUSTER, _MAINT, _AUTH = "etcdserverpb.Cluster", "etcdserverpb.Maintenance", "etcdserverpb.Auth"
METHODS: dict[str, tuple[str, str]] = {
    **{m: (_KV, "unary") for m in ("Range", "Put", "DeleteRange", "Txn", "Compact")},
    "Watch": (_WATCH, "bidi_stream"),
    **{m: (_LEASE, "unary") for m in ("LeaseGrant", "LeaseRevoke", "LeaseTimeToLive", "LeaseLeases")},
    "LeaseKeepAlive": (_LEASE, "bidi_stream"),
    **{m: (_CLUSTER, "unary") for m in ("MemberAdd", "MemberRemove", "MemberUpdate", "MemberList", "MemberPromote")},
    **{m: (_MAINT, "unary") for m in ("Alarm", "Status", "Defragment", "Hash", "HashKV", "MoveLeader")},
    "Snapshot": (_MAINT, "server_stream"),
    **{m: (_AUTH, "unary") for m in ("AuthEnable", "AuthDisable", "Authenticate", "UserAdd", "UserGet", "UserList",
                                     "UserDelete", "UserChangePassword", "UserGrantRole", "UserRevokeRole",
                                     "RoleAdd", "RoleGet", "RoleList", "RoleDelete", "RoleGrantPermission",
                                     "RoleRevokePermission")},
    "Lock": ("v3lockpb.Lock", "unary"), "Unlock": ("v3lockpb.Lock", "unary"),
    **{m: ("v3electionpb.Election", "unary") for m in ("Campaign", "Proclaim", "Leader", "Resign")},
    "Observe": ("v3electionpb.Election", "server_stream"),
    "Check": ("grpc.health.v1.Health", "unary"),
}
# Status code names as grpc_prometheus writes them (Go's codes.Code.String()).
_CODE_NAMES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}
_MVCC_OPS = {"Range": "range", "Put": "put", "DeleteRange": "delete", "Txn": "txn"}
# etcd counters whose names do not end in _total (prometheus_client would append it).
_PLAIN_COUNTERS = ("etcd_server_health_success", "etcd_server_health_failures",
                   "etcd_server_learner_promote_successes", "etcd_network_snapshot_send_success",
                   "etcd_network_snapshot_send_failures", "etcd_network_snapshot_receive_success",
                   "etcd_network_snapshot_receive_failures")


def code_name(code: str) -> str:
    """``INVALID_ARGUMENT`` / ``InvalidArgument`` / ``StatusCode.INVALID_ARGUMENT`` -> ``InvalidArgument``."""
    text = str(code).rsplit(".", 1)[-1]
    return _CODE_NAMES.get(text.upper(), text)


class Hist:
    """One histogram's buckets, count and sum (thread-safe enough: CPython int adds under the GIL)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            out.append((_go_float(bound), acc))
        out.append(("+Inf", self.count))
        return out


def _go_float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


@attrs.define
class Sources:
    """Callables read at scrape time (set by server/run.py); defaults describe an idle member."""

    has_leader: Callable[[], bool] = lambda: False
    is_leader: Callable[[], bool] = lambda: False
    is_learner: Callable[[], bool] = lambda: False
    committed_index: Callable[[], int] = lambda: 0
    applied_index: Callable[[], int] = lambda: 0
    pending_proposals: Callable[[], int] = lambda: 0
    leader_changes: Callable[[], int] = lambda: 0
    proposals_failed: Callable[[], int] = lambda: 0
    slow_applies: Callable[[], int] = lambda: 0
    read_indexes_failed: Callable[[], int] = lambda: 0
    slow_read_indexes: Callable[[], int] = lambda: 0
    heartbeat_send_failures: Callable[[], int] = lambda: 0
    snapshot_applying: Callable[[], bool] = lambda: False
    db_size: Callable[[], int] = lambda: 0
    db_size_in_use: Callable[[], int] = lambda: 0
    keys: Callable[[], int] = lambda: 0
    revision: Callable[[], int] = lambda: 0
    compact_revision: Callable[[], int] = lambda: 0
    watchers: Callable[[], int] = lambda: 0
    watch_streams: Callable[[], int] = lambda: 0
    slow_watchers: Callable[[], int] = lambda: 0
    pending_events: Callable[[], int] = lambda: 0
    leases: Callable[[], int] = lambda: 0
    auth_revision: Callable[[], int] = lambda: 1
    wal_bytes: Callable[[], int] = lambda: 0
    events_sent: Callable[[], int] = lambda: 0
    compacted_keys: Callable[[], int] = lambda: 0
    defrag_inflight: Callable[[], bool] = lambda: False
    cert_files: Callable[[], Iterable[str]] = lambda: ()
    # (port, file, nextUpdate) of each CRL in force (securekv.tlspolicy; an expired one stays in force)
    crls: Callable[[], Iterable[tuple[str, str, datetime | None]]] = lambda: ()
    # (received, sent) bytes of gRPC client connections, from the transport that carries them
    client_bytes: Callable[[], tuple[int, int]] = lambda: (0, 0)
    # the MVCC store whose index and value cache are reported (a snapshot install replaces it)
    store: Callable[[], Any] = lambda: None


class ServerMetrics:
    def __init__(self, member_id: int, version: str, *, extensive: bool = False,
                 quota_bytes: int = 2 * 1024**3) -> None:
        self.member_id = member_id
        self.version = version
        self.extensive = extensive  # --metrics extensive: per-RPC latency histograms
        self.quota_bytes = quota_bytes
        self.sources = Sources()
        # Histograms with etcd's buckets.
        ms = exponential(0.001, 2, 14)
        self.fsync_seconds = Hist(ms)  # etcd_disk_wal_fsync_duration_seconds
        self.backend_commit_seconds = Hist(ms)
        self.defrag_seconds = Hist(exponential(0.1, 2, 13))
        self.backend_snapshot_seconds = Hist(exponential(0.01, 2, 17))
        self.hash_seconds = Hist(exponential(0.01, 2, 15))
        self.hash_rev_seconds = Hist(exponential(0.01, 2, 15))
        self.compaction_ms = Hist(exponential(100, 2, 18))
        self.compaction_pause_ms = Hist(exponential(1, 2, 12))
        self.index_compaction_pause_ms = Hist(exponential(0.5, 2, 12))
        self.lease_ttl = Hist(exponential(1, 2, 24))
        self.snap_save_seconds = Hist(exponential(0.001, 2, 14))
        self.snap_marshal_seconds = Hist(exponential(0.001, 2, 14))
        self.snap_fsync_seconds = Hist(exponential(0.001, 2, 14))
        self.snap_db_fsync_seconds = Hist(exponential(0.001, 2, 14))
        self.snap_db_save_seconds = Hist(exponential(0.1, 2, 10))
        self.batch_size = Hist((1, 2, 4, 8, 16, 32, 64, 128, 256))  # securekv_server_commit_batch_entries
        self.peer_rtt: dict[int, Hist] = {}  # etcd_network_peer_round_trip_time_seconds{To}
        # Counters.
        self.health_ok = 0
        self.health_failed = 0
        self.promotions = 0
        self.lease_expired = 0
        self.lease_granted = 0
        self.lease_renewed = 0
        self.lease_revoked = 0
        self.client_bytes_received = 0
        self.client_bytes_sent = 0
        self.client_requests: dict[str, int] = {"unary": 0, "stream": 0}
        self.mvcc_ops = {"range": 0, "put": 0, "delete": 0, "txn": 0}
        self._started: dict[tuple[str, str, str], int] = {}
        self._handled: dict[tuple[str, str, str, str], int] = {}
        self._handling: dict[tuple[str, str, str], Hist] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.registry.register(ProcessCollector(registry=None))

    # -- the RPC layer ---------------------------------------------------------------------
    def labels(self, method: str, grpc_type: str | None = None, service: str | None = None) -> tuple[str, str, str]:
        known, kind = METHODS.get(method, ("etcdserverpb.Unknown", "unary"))
        return method, service or known, grpc_type or kind

    def started(self, method: str, grpc_type: str | None = None, service: str | None = None) -> None:
        key = self.labels(method, grpc_type, service)
        self._started[key] = self._started.get(key, 0) + 1
        self.client_requests["unary" if key[2] == "unary" else "stream"] += 1

    def observe(self, method: str, code: str, seconds: float, grpc_type: str | None = None,
                service: str | None = None) -> None:
        """One finished RPC (gRPC or the JSON gateway): handled_total and, with --metrics
        extensive, handling_seconds; also the mvcc operation counters."""
        key = self.labels(method, grpc_type, service)
        hkey = (*key, code_name(code))
        self._handled[hkey] = self._handled.get(hkey, 0) + 1
        if self.extensive:
            hist = self._handling.get(key)
            if hist is None:
                hist = self._handling[key] = Hist((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
            hist.observe(seconds)
        op = _MVCC_OPS.get(method)
        if op is not None and hkey[3] == "OK":
            self.mvcc_ops[op] += 1
        if hkey[3] == "OK":
            if method == "LeaseGrant":
                self.lease_granted += 1
            elif method == "LeaseRevoke":
                self.lease_revoked += 1

    def client_bytes(self, received: int, sent: int) -> None:
        self.client_bytes_received += received
        self.client_bytes_sent += sent

    def observe_peer_rtt(self, peer: int, seconds: float) -> None:
        hist = self.peer_rtt.get(peer)
        if hist is None:
            hist = self.peer_rtt[peer] = Hist(exponential(0.0001, 2, 16))
        hist.observe(seconds)

    def watch_certificates(self, files: Callable[[], Iterable[str]]) -> None:
        self.sources.cert_files = files

    def watch_crls(self, crls: Callable[[], Iterable[tuple[str, str, datetime | None]]]) -> None:
        """``crls()`` gives (port, file, nextUpdate) of each CRL in force, read at scrape time."""
        self.sources.crls = crls

    def watch_store(self, store: Callable[[], Any]) -> None:
        """The MVCC store whose index and value cache are reported (read at scrape time)."""
        self.sources.store = store

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        for name in _PLAIN_COUNTERS:  # prometheus_client names every counter *_total
            text = text.replace(f"# HELP {name}_total ".encode(), f"# HELP {name} ".encode())
            text = text.replace(f"# TYPE {name}_total counter".encode(), f"# TYPE {name} counter".encode())
        return text


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels:
        g = GaugeMetricFamily(name, doc, labels=list(labels))
        g.add_metric(list(labels.values()), value)
        return g
    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, samples: Iterable[tuple[dict[str, str], float]] = (),
            value: float | None = None) -> Metric:
    """A counter named exactly ``name`` (etcd's, with or without ``_total``)."""
    base = name[: -len("_total")] if name.endswith("_total") else name
    m = Metric(base, doc, "counter")
    if value is not None:
        m.add_sample(name, {}, value)
    for labels, v in samples:
        m.add_sample(name, labels, v)
    return m


def histogram(name: str, doc: str, hists: Iterable[tuple[dict[str, str], Hist]]) -> HistogramMetricFamily:
    hists = list(hists)
    labels = list(hists[0][0]) if hists else []
    fam = HistogramMetricFamily(name, doc, labels=labels or None)
    for lab, h in hists:
        fam.add_metric(list(lab.values()), h.buckets(), h.sum)
    return fam


class _Collector:
    def __init__(self, m: ServerMetrics) -> None:
        self.m = m

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        m, s = self.m, self.m.sources
        yield _gauge("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.",
                     1 if s.has_leader() else 0)
        yield _gauge("etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.",
                     1 if s.is_leader() else 0)
        yield _gauge("etcd_server_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     1 if s.is_learner() else 0)
        yield _gauge("etcd_server_id", "Server or member ID in hexadecimal format. 1 for 'server_id' label with "
                     "current ID.", 1, {"server_id": f"{m.member_id:x}"})
        yield _gauge("etcd_server_version", "Which version is running. 1 for 'server_version' label with current "
                     "version.", 1, {"server_version": m.version})
        yield _gauge("etcd_cluster_version", "Which version is running. 1 for 'cluster_version' label with current "
                     "cluster version", 1, {"cluster_version": CLUSTER_VERSION_LABEL})
        yield counter("etcd_server_leader_changes_seen_total", "The number of leader changes seen.",
                      value=s.leader_changes())
        yield _gauge("etcd_server_proposals_committed_total", "The total number of consensus proposals committed.",
                     s.committed_index())
        yield _gauge("etcd_server_proposals_applied_total", "The total number of consensus proposals applied.",
                     s.applied_index())
        yield _gauge("etcd_server_proposals_pending", "The current number of pending proposals to commit.",
                     s.pending_proposals())
        yield counter("etcd_server_proposals_failed_total", "The total number of failed proposals seen.",
                      value=s.proposals_failed())
        yield counter("etcd_server_slow_apply_total", "The total number of slow apply requests (likely overloaded "
                      "from slow disk).", value=s.slow_applies())
        yield counter("etcd_server_read_indexes_failed_total", "The total number of failed read indexes seen.",
                      value=s.read_indexes_failed())
        yield counter("etcd_server_slow_read_indexes_total", "The total number of pending read indexes not in sync "
                      "with leader's or timed out read index requests.", value=s.slow_read_indexes())
        yield counter("etcd_server_heartbeat_send_failures_total", "The total number of leader heartbeat send "
                      "failures (likely overloaded from slow disk).", value=s.heartbeat_send_failures())
        yield _gauge("etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.", m.quota_bytes)
        yield _gauge("etcd_server_snapshot_apply_in_progress_total", "1 if the server is applying the incoming "
                     "snapshot. 0 if none.", 1 if s.snapshot_applying() else 0)
        yield counter("etcd_server_health_success", "The total number of successful health checks",
                      value=m.health_ok)
        yield counter("etcd_server_health_failures", "The total number of failed health checks",
                      value=m.health_failed)
        yield counter("etcd_server_learner_promote_successes", "The total number of successful learner promotions "
                      "while this member is leader.", value=m.promotions)
        yield counter("etcd_server_client_requests_total", "The total number of client requests per client version.",
                      [({"client_api_version": CLUSTER_VERSION_LABEL, "type": t}, v)
                       for t, v in sorted(m.client_requests.items())])
        # disk
        yield histogram("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL.",
                        [({}, m.fsync_seconds)])
        yield histogram("etcd_disk_backend_commit_duration_seconds", "The latency distributions of commit called "
                        "by backend.", [({}, m.backend_commit_seconds)])
        yield histogram("etcd_disk_backend_defrag_duration_seconds", "The latency distribution of backend "
                        "defragmentation.", [({}, m.defrag_seconds)])
        yield histogram("etcd_disk_backend_snapshot_duration_seconds", "The latency distribution of backend "
                        "snapshots.", [({}, m.backend_snapshot_seconds)])
        yield _gauge("etcd_disk_wal_write_bytes_total", "Total number of bytes written in WAL.", s.wal_bytes())
        yield _gauge("etcd_disk_defrag_inflight", "Whether or not defrag is active on the member. 1 means active, "
                     "0 means not.", 1 if s.defrag_inflight() else 0)
        # mvcc
        db = s.db_size()
        yield _gauge("etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically "
                     "allocated in bytes.", db)
        yield _gauge("etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database "
                     "physically allocated in bytes.", db)
        yield _gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically "
                     "in use in bytes.", s.db_size_in_use())
        yield _gauge("etcd_mvcc_db_open_read_transactions", "The number of currently open read transactions", 0)
        for op, v in sorted(m.mvcc_ops.items()):
            yield counter(f"etcd_mvcc_{op}_total", f"Total number of {op}s seen by this member.", value=v)
            yield counter(f"etcd_debugging_mvcc_{op}_total", f"Total number of {op}s seen by this member.", value=v)
        yield histogram("etcd_mvcc_hash_duration_seconds", "The latency distribution of storage hash operation.",
                        [({}, m.hash_seconds)])
        yield histogram("etcd_mvcc_hash_rev_duration_seconds", "The latency distribution of storage hash by revision "
                        "operation.", [({}, m.hash_rev_seconds)])
        yield _gauge("etcd_debugging_mvcc_keys_total", "Total number of keys.", s.keys())
        yield _gauge("etcd_debugging_mvcc_current_revision", "The current revision of store.", s.revision())
        yield _gauge("etcd_debugging_mvcc_compact_revision", "The revision of the last compaction in store.",
                     max(s.compact_revision(), 0))
        yield _gauge("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", s.watchers())
        yield _gauge("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.", s.watch_streams())
        yield _gauge("etcd_debugging_mvcc_slow_watcher_total", "Total number of unsynced slow watchers.",
                     s.slow_watchers())
        yield _gauge("etcd_debugging_mvcc_pending_events_total", "Total number of pending events to be sent.",
                     s.pending_events())
        yield counter("etcd_debugging_mvcc_events_total", "Total number of events sent by this member.",
                      value=s.events_sent())
        yield counter("etcd_debugging_mvcc_db_compaction_keys_total", "Total number of db keys compacted.",
                      value=s.compacted_keys())
        yield histogram("etcd_debugging_mvcc_db_compaction_total_duration_milliseconds", "Bucketed histogram of db "
                        "compaction total duration.", [({}, m.compaction_ms)])
        yield histogram("etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds", "Bucketed histogram of db "
                        "compaction pause duration.", [({}, m.compaction_pause_ms)])
        yield histogram("etcd_debugging_mvcc_index_compaction_pause_duration_milliseconds", "Bucketed histogram of "
                        "index compaction pause duration.", [({}, m.index_compaction_pause_ms)])
        # lease, auth, snapshots
        yield counter("etcd_debugging_lease_granted_total", "The total number of granted leases.", value=m.lease_granted)
        yield counter("etcd_debugging_lease_revoked_total", "The total number of revoked leases.", value=m.lease_revoked)
        yield counter("etcd_debugging_lease_renewed_total", "The number of renewed leases seen by the leader.",
                      value=m.lease_renewed)
        yield histogram("etcd_debugging_lease_ttl_total", "Bucketed histogram of lease TTLs.", [({}, m.lease_ttl)])
        yield counter("etcd_debugging_server_lease_expired_total", "The total number of expired leases.",
                      value=m.lease_expired)
        yield _gauge("etcd_debugging_auth_revision", "The current revision of auth store.", s.auth_revision())
        yield histogram("etcd_debugging_snap_save_total_duration_seconds", "The total latency distributions of save "
                        "called by snapshot.", [({}, m.snap_save_seconds)])
        yield histogram("etcd_debugging_snap_save_marshalling_duration_seconds", "The marshalling cost "
                        "distributions of save called by snapshot.", [({}, m.snap_marshal_seconds)])
        yield histogram("etcd_snap_fsync_duration_seconds", "The latency distributions of fsync called by snap.",
                        [({}, m.snap_fsync_seconds)])
        yield histogram("etcd_snap_db_fsync_duration_seconds", "The latency distributions of fsyncing .snap.db file",
                        [({}, m.snap_db_fsync_seconds)])
        yield histogram("etcd_snap_db_save_total_duration_seconds", "The total latency distributions of v3 snapshot "
                        "save", [({}, m.snap_db_save_seconds)])
        # network
        received, sent = s.client_bytes()
        yield counter("etcd_network_client_grpc_received_bytes_total", "The total number of bytes received from grpc "
                      "clients.", value=received + m.client_bytes_received)
        yield counter("etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.",
                      value=sent + m.client_bytes_sent)
        if m.peer_rtt:
            yield histogram("etcd_network_peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers",
                            [({"To": f"{p:x}"}, h) for p, h in sorted(m.peer_rtt.items())])
        # gRPC (go-grpc-prometheus)
        started = dict(m._started)
        totals: dict[tuple[str, str, str], int] = {}
        for (method, service, kind, _code), n in m._handled.items():
            totals[(method, service, kind)] = totals.get((method, service, kind), 0) + n
        for key, n in totals.items():  # a layer that reports only finished calls: started >= handled
            started[key] = max(started.get(key, 0), n)

        def lab(key: tuple[str, ...]) -> dict[str, str]:
            return {"grpc_method": key[0], "grpc_service": key[1], "grpc_type": key[2]}

        yield counter("grpc_server_started_total", "Total number of RPCs started on the server.",
                      [(lab(k), v) for k, v in sorted(started.items())])
        yield counter("grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of "
                      "success or failure.", [({**lab(k), "grpc_code": k[3]}, v) for k, v in sorted(m._handled.items())])
        yield counter("grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.",
                      [(lab(k), v) for k, v in sorted(totals.items())])
        yield counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.",
                      [(lab(k), v) for k, v in sorted(totals.items())])
        if m.extensive:
            yield histogram("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC that "
                            "had been application-level handled by the server.",
                            [(lab(k), h) for k, h in sorted(m._handling.items())])
        # os
        try:
            used = len(os.listdir("/proc/self/fd"))
        except OSError:
            used = 0
        yield _gauge("os_fd_used", "The number of used file descriptors.", used)
        yield _gauge("os_fd_limit", "The file descriptor limit.", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        # securekv's own
        yield histogram("securekv_server_commit_batch_entries", "Entries made durable by one WAL fsync (group "
                        "commit).", [({}, m.batch_size)])
        yield _gauge("securekv_server_leases", "Live leases.", s.leases())
        yield _cert_expiry(s.cert_files())
        yield from _crl_next_update(s.crls())
        yield from _index(s.store())


def _index(store: Any) -> Iterator[Metric]:
    """The MVCC store's in-memory index and value cache, read at scrape time (the store may be
    replaced by a snapshot install, so its counters restart with it)."""
    if store is None:
        return
    st = store.stats()
    for name, doc, value in (
        ("securekv_mvcc_index_keys", "Keys in the in-memory index (live and deleted, until compacted).", st.keys),
        ("securekv_mvcc_index_live_keys", "Live keys.", st.live_keys),
        ("securekv_mvcc_index_revisions", "Records (revisions of keys) described by the index.", st.revisions),
        ("securekv_mvcc_index_bytes", "Estimated heap bytes of the in-memory index.", st.index_bytes),
        ("securekv_mvcc_pending_revisions", "Applied revisions whose rows the backend has not committed yet.",
         st.pending_revisions),
        ("securekv_mvcc_value_cache_bytes", "Bytes held by the hot-value cache.", st.cache_bytes),
        ("securekv_mvcc_value_cache_entries", "Values held by the hot-value cache.", st.cache_entries),
    ):
        yield _gauge(name, doc, value)
    yield counter("securekv_mvcc_value_cache_hits_total", "Value reads served by the cache.", value=st.cache_hits)
    yield counter("securekv_mvcc_value_cache_misses_total", "Value reads that went to pending rows or the backend.",
                  value=st.cache_misses)


def _cert_expiry(files: Iterable[str]) -> GaugeMetricFamily:
    """Seconds until each serving certificate expires, read from disk at scrape time (reloads show)."""
    family = GaugeMetricFamily("securekv_server_certificate_expiry_seconds",
                               "Seconds until each serving certificate expires (negative = expired).",
                               labels=["file", "subject"])
    now = time.time()
    for path in files:
        try:
            with open(path, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError):
            continue
        family.add_metric([path, cert.subject.rfc4514_string()], cert.not_valid_after_utc.timestamp() - now)
    return family


def _crl_next_update(crls: Iterable[tuple[str, str, datetime | None]]) -> Iterator[GaugeMetricFamily]:
    """nextUpdate of each CRL in force (alert before it passes; an expired CRL stays enforced)."""
    family = GaugeMetricFamily(
        "securekv_tls_crl_next_update_timestamp_seconds",
        "nextUpdate of the CRL in force, as a Unix time (alert when it is near or past; 0 = none given).",
        labels=["port", "file"])
    expired = GaugeMetricFamily(
        "securekv_tls_crl_expired", "1 if the CRL in force is past its nextUpdate (its revocations stay enforced).",
        labels=["port", "file"])
    now = time.time()
    for port, path, next_update in crls:
        ts = next_update.timestamp() if next_update is not None else 0.0
        family.add_metric([port, path], ts)
        expired.add_metric([port, path], 1.0 if next_update is not None and ts < now else 0.0)
    yield family
    yield expired


__all__ = ["CONTENT_TYPE", "METHODS", "ServerMetrics", "Sources", "code_name", "counter", "histogram"]
