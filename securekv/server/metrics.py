"""Prometheus metrics of one member (a private registry: several servers may share a process)."""

from __future__ import annotations

import time
from typing import Callable, Iterable

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self, member_id: int, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handled = Counter(
            "grpc_server_handled", "RPCs completed, by method and gRPC code.", ["grpc_method", "grpc_code"], registry=r
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "RPC handling time, by method.",
            ["grpc_method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.proposals_committed = Counter(
            "etcd_server_proposals_committed", "Entries committed to the log.", registry=r
        )
        self.proposals_failed = Counter("etcd_server_proposals_failed", "Proposals that failed.", registry=r)
        self.fsync_seconds = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "WAL fsync latency (one per batch).",
            buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024),
            registry=r,
        )
        self.batch_size = Histogram(
            "securekv_server_commit_batch_entries",
            "Entries made durable by one WAL fsync (group commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.has_leader = Gauge("etcd_server_has_leader", "1 if a leader exists.", registry=r)
        self.is_leader = Gauge("etcd_server_is_leader", "1 if this member is the leader.", registry=r)
        self.server_id = Gauge("etcd_server_id", "This member's id.", ["server_id"], registry=r)
        self.server_id.labels(server_id=f"{member_id:x}").set(1)
        self.version = Gauge("etcd_server_version", "Server version.", ["server_version"], registry=r)
        self.version.labels(server_version=version).set(1)
        self.db_size = Gauge("etcd_mvcc_db_total_size_in_bytes", "Backend file size.", registry=r)
        self.db_size_in_use = Gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Backend bytes in use.", registry=r)
        self.revision = Gauge("etcd_debugging_mvcc_current_revision", "Current store revision.", registry=r)
        self.watchers = Gauge("etcd_debugging_mvcc_watcher_total", "Open watchers.", registry=r)
        self.watch_streams = Gauge("etcd_debugging_mvcc_watch_stream_total", "Open watch streams.", registry=r)
        self.leases = Gauge("etcd_debugging_lease_total", "Live leases.", registry=r)
        self._cert_files: Callable[[], Iterable[str]] = lambda: ()
        self._children: dict[tuple[str, str], tuple] = {}
        r.register(_CertExpiryCollector(lambda: self._cert_files()))

    def observe(self, method: str, code: str, seconds: float, *, service: str = "",
                grpc_type: str = "unary") -> None:
        """One finished RPC (gRPC or JSON gateway). ``service`` is the full gRPC service name
        (e.g. ``etcdserverpb.KV``) and ``grpc_type`` one of unary, server_stream,
        client_stream, bidi_stream: what etcd's grpc_server_handled_total labels carry."""
        children = self._children.get((method, code))
        if children is None:  # labels() costs a lock and a dict walk: once per (method, code)
            children = self._children[(method, code)] = (
                self.handled.labels(grpc_method=method, grpc_code=code), self.latency.labels(grpc_method=method))
        children[0].inc()
        children[1].observe(seconds)

    def watch_certificates(self, files: Callable[[], Iterable[str]]) -> None:
        self._cert_files = files

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CertExpiryCollector:
    """Seconds until each serving certificate expires, read from disk at scrape time."""

    def __init__(self, files: Callable[[], Iterable[str]]) -> None:
        self.files = files

    def collect(self):
        family = GaugeMetricFamily(
            "securekv_server_certificate_expiry_seconds",
            "Seconds until each serving certificate expires (negative = expired).",
            labels=["file", "subject"],
        )
        now = time.time()
        for path in self.files():
            try:
                with open(path, "rb") as fh:
                    cert = x509.load_pem_x509_certificate(fh.read())
            except (OSError, ValueError):
                continue
            family.add_metric([path, cert.subject.rfc4514_string()], cert.not_valid_after_utc.timestamp() - now)
        yield family

    def describe(self):
        return []
