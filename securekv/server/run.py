"""``serve(config)``: assemble and run one member under a trio nursery.

Order at start: lock the data dir → TLS material (files, --auto-tls or the embedded local PKI)
→ open WAL + backend → rebuild the store/lessor/applier and replay the WAL tail → start grpcio
on an internal loopback port → open the client front doors and metrics listeners → READY=1.
Stopping (cancellation) reverses it: STOPPING=1, listeners close, grpc stops, node drains,
WAL/backend close, lock released.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import attrs
import grpc
import trio

from securekv.config import Config
from securekv.errors import UsageError
from securekv.proto import raft_internal_pb2
from securekv.server import ids
from securekv.server.frontdoor import FrontDoor, Identity, IdentityRegistry
from securekv.server.http import CLIENT_PATHS, METRICS_PATHS, HttpApp
from securekv.server.metrics import CONTENT_TYPE, ServerMetrics
from securekv.server.tls import ReloadingContext, TLSFiles

log = logging.getLogger("securekv.server")

GRPC_WORKERS = 1024
# Above this many concurrent RPCs + open streams, new calls fail fast with RESOURCE_EXHAUSTED
# instead of queueing behind busy workers (each open stream holds a worker thread).
MAX_CONCURRENT_RPCS = 1000
LEASE_TICK = 0.5
TLS_RELOAD_CHECK = 1.0


@attrs.frozen
class Started:
    """What serve() reports through task_status once clients can connect."""

    client_urls: tuple[str, ...]
    metrics_urls: tuple[str, ...]
    grpc_port: int
    member_id: int
    cluster_id: int
    tls_files: TLSFiles | None
    embedded: Any  # LocalPKI or None


def resolve_tls(config: Config) -> tuple[TLSFiles | None, Any]:
    """TLS files for the client port; creates the embedded PKI or auto-TLS pair if needed."""
    if not any(u.is_tls for u in config.listen_client_urls):
        return None, None
    hosts = sorted({"127.0.0.1", "localhost", "::1", *(u.host for u in config.listen_client_urls),
                    *(u.host for u in config.advertise_client_urls)} - {"0.0.0.0", "::"})
    if config.embedded_pki:
        from securekv.pki.local import ensure_local_pki

        local = ensure_local_pki(Path(config.data_dir) / "pki", hosts, client_names=("root",))
        files = TLSFiles(str(local.server_cert), str(local.server_key), str(local.ca_path),
                         config.client_crl_file, client_cert_auth=True)
        return files, local
    if config.auto_tls:
        from securekv.pki.autotls import ensure_self_signed

        auto = ensure_self_signed(Path(config.data_dir) / "fixtures" / "client", hosts,
                                  validity_years=config.self_signed_cert_validity)
        return TLSFiles(str(auto.cert_path), str(auto.key_path), config.trusted_ca_file,
                        config.client_crl_file, config.client_cert_auth), None
    if not config.cert_file:
        raise UsageError("https:// client URLs need --cert-file/--key-file or --auto-tls")
    return TLSFiles(config.cert_file, config.key_file, config.trusted_ca_file, config.client_crl_file,
                    config.client_cert_auth), None


def cluster_ids(config: Config) -> tuple[int, int]:
    by_name: dict[str, list[str]] = {}
    for name, url in config.initial_cluster:
        by_name.setdefault(name, []).append(url)
    members = [ids.member_id(urls, config.initial_cluster_token) for urls in by_name.values()]
    me = ids.member_id(by_name[config.name], config.initial_cluster_token)
    return me, ids.cluster_id(members)


def grpc_options(config: Config) -> list[tuple[str, int]]:
    return [
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", config.max_request_bytes + 512 * 1024),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 0),
    ]


class _State:
    """Everything restored from disk, before the network starts."""

    def __init__(self, config: Config, member_id: int, cluster_id: int, clock: Callable[[], float]) -> None:
        from securekv.apply import Applier
        from securekv.lease import LeaseRow, Lessor, min_lease_ttl
        from securekv.mvcc import MVCCStore
        from securekv.server.persist import decode_alarms, decode_lease_data, to_write_batches
        from securekv.storage import WAL, Backend, HardState, Metadata

        member_dir = Path(config.data_dir) / "member"
        member_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in member_dir.glob(".snapshot-*"):  # copies of a snapshot cut short by a crash
            stale.unlink()
        wal_dir = config.wal_dir or str(member_dir / "wal")
        if WAL.exists(wal_dir):
            self.wal, state = WAL.open(wal_dir)
            self.member_id = state.metadata.member_id or member_id
            self.cluster_id = state.metadata.cluster_id or cluster_id
            hard = state.hard_state
            entries = state.entries
        else:
            self.wal = WAL.create(wal_dir, Metadata(member_id=member_id, cluster_id=cluster_id))
            self.member_id, self.cluster_id = member_id, cluster_id
            hard = HardState()
            entries = []
        self.backend = Backend.open(str(member_dir / "db.sqlite"))
        ci = self.backend.consistent_index()
        compact = self.backend.get_meta("compact_revision")
        self.store = MVCCStore.restore(self.backend.iter_revisions(),
                                       compact_revision=int(compact) if compact is not None else -1)
        self.lessor = Lessor(min_lease_ttl(config.heartbeat_interval, config.election_timeout), primary=True)
        now = clock()
        self.lessor.restore(
            [LeaseRow(l.id, l.ttl, decode_lease_data(l.data)) for l in self.backend.iter_leases()], now
        )
        quota = config.quota_backend_bytes if config.quota_backend_bytes > 0 else 0
        self.applier = Applier(self.store, self.lessor, quota_bytes=quota, applied_index=ci)
        self.applier.restore_lease_attachments()
        self.applier.restore_alarms(decode_alarms(self.backend.get_meta("alarms")))
        # Replay the WAL tail the backend has not applied yet (a crash between fsync and commit).
        results = []
        last = ci
        for entry in entries:
            if entry.index <= ci:
                continue
            req = raft_internal_pb2.InternalRaftRequest()
            req.ParseFromString(entry.data)
            results.append(self.applier.apply(entry.index, req, now=now))
            last = entry.index
        if results:
            for wb in to_write_batches(results, last):
                self.backend.commit(wb)
            log.info("replayed %d WAL entries (applied index %d -> %d)", len(results), ci, last)
        # A restart is a new election on one member: bump the term like etcd does.
        self.term = max(hard.term, 1) + 1
        self.wal.append([], hard_state=HardState(self.term, self.member_id, max(hard.commit, last)))
        self.wal.sync()

    def close(self) -> None:
        for closer in (self.wal.close, self.backend.close):
            try:
                closer()
            except Exception as exc:  # keep closing the rest
                log.warning("error while closing storage: %s", exc)


async def serve(
    config: Config,
    *,
    announce: Callable[[Started], None] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    from securekv.api.auth_gate import AuthGate
    from securekv.api.bridge import Bridge, set_reader_nursery
    from securekv.api.services import add_all
    from securekv.server.etcdserver import CLUSTER_VERSION, VERSION, EtcdServer
    from securekv.server.node import Node
    from securekv.server.persist import to_write_batches
    from securekv.server.sdnotify import Notifier, watchdog_period
    from securekv.storage import lock_data_dir
    from securekv.watch import WatchHub

    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = lock_data_dir(str(data_dir))
    notifier = Notifier.from_environment()
    grpc_server: grpc.Server | None = None
    bridge: Any = None
    state: _State | None = None
    try:
        tls_files, local_pki = resolve_tls(config)
        tls = ReloadingContext(tls_files) if tls_files is not None else None
        member_id, cluster_id = cluster_ids(config)
        state = _State(config, member_id, cluster_id, trio.current_time)
        metrics = ServerMetrics(state.member_id, VERSION)
        metrics.has_leader.set(1)
        metrics.is_leader.set(1)
        if tls_files is not None:
            metrics.watch_certificates(lambda: [tls.files.cert_file] if tls else [])

        holder: dict[str, EtcdServer] = {}
        hub = WatchHub(
            state.store.events_between,
            revision=state.store.current_revision,
            compact_revision=max(state.store.compact_revision, 0),
            wakeup=lambda sid: holder["etcd"].watch_wakeup(sid),
        )

        def on_batch(entries: int, fsync_seconds: float, last: int) -> None:
            metrics.fsync_seconds.observe(fsync_seconds)
            metrics.batch_size.observe(entries)
            metrics.proposals_committed.inc(entries)
            holder["etcd"].on_applied()

        node = Node(
            wal=state.wal, backend=state.backend, applier=state.applier, hub=hub, term=state.term,
            member_id=state.member_id, max_request_bytes=config.max_request_bytes,
            to_write_batch=to_write_batches, on_batch=on_batch, snapshot_count=config.snapshot_count,
        )
        etcd = EtcdServer(
            node=node, store=state.store, lessor=state.lessor, applier=state.applier, hub=hub,
            backend=state.backend, cluster_id=state.cluster_id, member_id=state.member_id, name=config.name,
            peer_urls=[str(u) for u in config.initial_advertise_peer_urls],
            client_urls=[str(u) for u in config.advertise_client_urls], max_txn_ops=config.max_txn_ops,
            snapshot_dir=str(Path(config.data_dir) / "member"),
        )
        holder["etcd"] = etcd

        registry = IdentityRegistry()
        bridge = Bridge(trio.lowlevel.current_trio_token(), AuthGate(registry), metrics)
        grpc_server = grpc.server(ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"),
                                  options=grpc_options(config), maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        add_all(grpc_server, bridge, etcd)
        grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        if not grpc_port:
            raise UsageError("could not bind the internal gRPC port on 127.0.0.1")
        grpc_server.start()
        log.info("internal gRPC on 127.0.0.1:%d (serves only connections registered by the TLS front door)",
                 grpc_port)

        def version() -> dict:
            return {"etcdserver": VERSION, "etcdcluster": CLUSTER_VERSION}

        def render_metrics() -> bytes:
            metrics.revision.set(state.store.current_revision)
            metrics.leases.set(len(state.lessor))
            stats = hub.statistics()
            metrics.watchers.set(getattr(stats, "watchers", 0))
            metrics.watch_streams.set(getattr(stats, "streams", 0))
            return metrics.render()

        app = HttpApp(etcd.health, version, render_metrics, CONTENT_TYPE)

        async def client_http(stream: trio.abc.Stream, identity: Identity) -> None:
            await app.serve(stream, CLIENT_PATHS)

        async def metrics_http(stream: trio.abc.Stream, identity: Identity) -> None:
            await app.serve(stream, METRICS_PATHS)

        def client_door(url: Any) -> FrontDoor:
            return FrontDoor(tls if url.is_tls else None, grpc_port, registry, client_http,
                             config.tls_handshake_timeout)

        def metrics_door(url: Any) -> FrontDoor:
            # Its own empty registry: gRPC is never served on the metrics listener.
            return FrontDoor(tls if url.is_tls else None, grpc_port, IdentityRegistry(), metrics_http,
                             config.tls_handshake_timeout)

        async with trio.open_nursery() as nursery:
            set_reader_nursery(nursery)
            await nursery.start(node.run)
            client_urls = []
            for url in config.listen_client_urls:
                listeners = await _listen(url)
                client_urls.append(_bound_url(url, listeners))
                nursery.start_soon(trio.serve_listeners, client_door(url).handle, listeners)
            metrics_urls = []
            for url in config.listen_metrics_urls:
                listeners = await _listen(url)
                metrics_urls.append(_bound_url(url, listeners))
                nursery.start_soon(trio.serve_listeners, metrics_door(url).handle, listeners)
            nursery.start_soon(_every, LEASE_TICK, etcd.expire_leases)
            nursery.start_soon(_every, 1.0, _sync(lambda: hub.tick_progress(trio.current_time())))
            if tls is not None:
                nursery.start_soon(_every, TLS_RELOAD_CHECK, _sync(tls.check))
            period = watchdog_period()
            if period:
                nursery.start_soon(_every, period, _sync(notifier.watchdog))
            started = Started(tuple(client_urls), tuple(metrics_urls), grpc_port, state.member_id,
                              state.cluster_id, tls_files, local_pki)
            if announce is not None:
                announce(started)
            notifier.ready(status=f"serving clients on {', '.join(client_urls)}")
            task_status.started(started)
            try:
                await trio.sleep_forever()
            finally:
                notifier.stopping()
                node.close()
                set_reader_nursery(None)
                nursery.cancel_scope.cancel()
    finally:
        if bridge is not None:
            bridge.stopping = True
        if grpc_server is not None:
            grpc_server.stop(grace=None)
        if state is not None:
            with trio.CancelScope(shield=True):
                state.close()
        lock.release()


async def _listen(url: Any) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(url.port, host=url.host)
    except OSError as exc:
        raise UsageError(f"cannot listen on {url}: {exc.strerror or exc}") from None


def _bound_url(url: Any, listeners: list[trio.SocketListener]) -> str:
    port = listeners[0].socket.getsockname()[1]
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}:{port}"


def _sync(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> None:
        fn()

    return run


async def _every(period: float, fn: Callable[[], Any]) -> None:
    while True:
        await trio.sleep(period)
        try:
            await fn()
        except Exception:  # a periodic chore must not take the member down
            log.exception("periodic task %s failed", getattr(fn, "__name__", fn))


__all__ = ["serve", "Started", "resolve_tls"]
