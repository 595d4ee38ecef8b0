"""Prometheus view of a PeerTransport, under etcd's metric names where etcd has one.

A collector (read at scrape time) rather than counters updated on the hot path: the transport
already keeps plain integer counters, and a scrape is rare.
Register with ``registry.register(PeerCollector(transport))``.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from securekv.peer.transport import PeerTransport
from securekv.server.metrics import counter


class PeerCollector:
    def __init__(self, transport: PeerTransport) -> None:
        self.transport = transport

    def collect(self) -> Iterator[Metric]:
        t = self.transport
        s = t.stats()
        local = f"{t.member_id:x}"
        sent = CounterMetricFamily("etcd_network_peer_sent_bytes", "Bytes sent to peers.", labels=["To"])
        received = CounterMetricFamily("etcd_network_peer_received_bytes", "Bytes received from peers.",
                                       labels=["From"])
        failures = CounterMetricFamily("etcd_network_peer_sent_failures",
                                       "Messages to peers dropped (peer down or queue full).", labels=["To"])
        active = GaugeMetricFamily("etcd_network_active_peers", "Peers with a live outgoing link.",
                                   labels=["Local", "Remote"])
        disconnected = CounterMetricFamily("etcd_network_disconnected_peers", "The total number of disconnected "
                                           "peers.", labels=["Local", "Remote"])
        snap_ok: list = []
        snap_fail: list = []
        msgs_sent = CounterMetricFamily("securekv_peer_messages_sent", "Raft messages sent.", labels=["To"])
        msgs_recv = CounterMetricFamily("securekv_peer_messages_received", "Raft messages received.",
                                        labels=["From"])
        for pid, p in sorted(s["peers"].items()):
            remote = f"{pid:x}"
            sent.add_metric([remote], p["bytes_sent"])
            received.add_metric([remote], p["bytes_received"])
            failures.add_metric([remote], p["dropped"])
            active.add_metric([local, remote], 1 if p["connected"] else 0)
            disconnected.add_metric([local, remote], max(p["connects"] - (1 if p["connected"] else 0), 0))
            snap_ok.append(({"To": remote}, p["snapshots_sent"]))
            snap_fail.append(({"To": remote}, p["snapshots_failed"]))
            msgs_sent.add_metric([remote], p["messages_sent"])
            msgs_recv.add_metric([remote], p["messages_received"])
        # etcd's snapshot counters have no _total suffix (ServerMetrics.render keeps the names).
        yield counter("etcd_network_snapshot_send_success", "Total number of successful snapshot sends", snap_ok)
        yield counter("etcd_network_snapshot_send_failures", "Total number of snapshot send failures", snap_fail)
        yield from (sent, received, failures, active, disconnected, msgs_sent, msgs_recv)
        yield CounterMetricFamily("securekv_peer_handshake_failures", "Incoming peer connections that failed "
                                  "TLS or the handshake.", value=s["handshake_failures"])
        yield CounterMetricFamily("securekv_peer_pending_refused", "Incoming peer connections closed before the "
                                  "TLS handshake: too many still in their handshake (per address or in all).",
                                  value=s["pending_refused"])
        yield CounterMetricFamily("securekv_peer_refused", "Incoming peer connections refused (cluster ID, "
                                  "member ID, unknown member).", value=s["refused"])
