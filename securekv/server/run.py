"""``serve(config)``: assemble and run one member under a trio nursery.

Order at start: lock the data dir → TLS material (files, --auto-tls or the embedded local PKI)
→ open WAL + backend → rebuild the store/lessor/applier and replay the WAL tail → open the
client listeners (TLS, gRPC and HTTP/1.1 in this trio thread) and metrics listeners → READY=1.
Stopping (cancellation) reverses it: STOPPING=1, listeners stop accepting, gRPC connections get
GOAWAY and a short grace to finish their calls, the node drains, WAL/backend close, lock released.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable

import attrs
import trio

from securekv.config import Config
from securekv.errors import UsageError
from securekv.proto import raft_internal_pb2
from securekv.api.gateway import Gateway
from securekv.api.identity import Identity
from securekv.server.http import CLIENT_PATHS, METRICS_PATHS, HttpApp
from securekv.server.listener import ClientListener, LiveConnection
from securekv.server.metrics import CONTENT_TYPE, ServerMetrics
from securekv.tlspolicy import ServerTLS, TLSFiles

log = logging.getLogger("securekv.server")

LEASE_TICK = 0.5
DRAIN_GRACE = 2.0  # seconds gRPC calls get to finish after GOAWAY when the member stops
TOKEN_PURGE = 10.0  # drop expired simple tokens this often (they are refused when used anyway)
TLS_RELOAD_CHECK = 1.0
DB_SIZE_REFRESH = 5.0


@attrs.frozen
class Started:
    """What serve() reports through task_status once clients can connect."""

    client_urls: tuple[str, ...]
    metrics_urls: tuple[str, ...]
    member_id: int
    cluster_id: int
    tls_files: TLSFiles | None
    embedded: Any  # LocalPKI or None
    # The live-connection registries of the client listeners (revocation itself closes
    # connections through ``ServerTLS.live``, securekv/tlspolicy).
    connections: tuple[Any, ...] = ()


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
                         config.client_crl_file, client_cert_auth=True, cipher_suites=config.cipher_suites)
        return files, local
    if config.auto_tls:
        from securekv.pki.autotls import ensure_self_signed

        auto = ensure_self_signed(Path(config.data_dir) / "fixtures" / "client", hosts,
                                  validity_years=config.self_signed_cert_validity)
        return TLSFiles(str(auto.cert_path), str(auto.key_path), config.trusted_ca_file,
                        config.client_crl_file, config.client_cert_auth and bool(config.trusted_ca_file),
                        cipher_suites=config.cipher_suites), None
    if not config.cert_file:
        raise UsageError("https:// client URLs need --cert-file/--key-file or --auto-tls")
    return TLSFiles(config.cert_file, config.key_file, config.trusted_ca_file, config.client_crl_file,
                    config.client_cert_auth, cipher_suites=config.cipher_suites,
                    anonymous_join=bool(config.signing_ca_cert_file)), None


def cluster_ids(config: Config) -> tuple[int, int]:
    from securekv.server.bootstrap import cluster_ids as ids_from

    return ids_from(config.name, config.initial_cluster, config.initial_cluster_token)


class _State:
    """Everything restored from disk, before the network starts."""

    def __init__(self, config: Config, member_id: int, cluster_id: int, clock: Callable[[], float],
                 tokens: Any = None) -> None:
        self.tokens = tokens
        from securekv.lease import min_lease_ttl
        from securekv.server.persist import restore_machine
        from securekv.storage import WAL, Backend

        self.reader: Any = None
        self.retired_reader: Any = None
        member_dir = Path(config.data_dir) / "member"
        member_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in member_dir.glob(".snapshot-*"):  # copies of a snapshot cut short by a crash
            stale.unlink()
        wal_dir = config.wal_dir or str(member_dir / "wal")
        from securekv.raft import ConfState
        from securekv.server.bootstrap import create_member_wal
        from securekv.server.cluster import META_KEY, Membership, initial_members, validate_bootstrap
        from securekv.storage.raftstorage import RaftStorage

        members = initial_members(config.initial_cluster, config.initial_cluster_token)
        self.created = False
        if WAL.exists(wal_dir):
            self.wal, state = WAL.open(wal_dir)
            self.member_id = state.metadata.member_id or member_id
            self.cluster_id = state.metadata.cluster_id or cluster_id
            if (config.initial_cluster_state == "new" and not config.force_new_cluster
                    and self.cluster_id != cluster_id and self.member_id != member_id
                    and len(members) > 1):
                self.wal.close()
                raise UsageError(
                    f"the data dir {config.data_dir} belongs to member {self.member_id:x} of cluster "
                    f"{self.cluster_id:x}, not to {config.name!r} of the cluster described by "
                    "--initial-cluster/--initial-cluster-token (use the right --data-dir)")
        else:
            me = validate_bootstrap(config.name, [str(u) for u in config.initial_advertise_peer_urls], members)
            self.member_id = me.id
            self.cluster_id = cluster_id
            # The same WAL `snapshot restore` writes (server/bootstrap.py).
            create_member_wal(wal_dir, self.member_id, self.cluster_id,
                              members if config.initial_cluster_state == "new" else None)
            self.created = True
            self.wal, state = WAL.open(wal_dir)
        self.backend = Backend.open(str(member_dir / "db.sqlite"))
        self.membership = Membership.decode(self.backend.get_meta(META_KEY))
        if self.member_id in self.membership.removed:
            self.wal.close()
            self.backend.close()
            raise UsageError(f"member {self.member_id:x} ({config.name}) was removed from the cluster "
                             "and cannot restart with this data dir; remove the data dir and add it "
                             "again with `member add`")
        if config.force_new_cluster:
            state = _force_new_cluster(self.wal, state, self.member_id)
        self.raft_storage = RaftStorage.from_wal(state, ConfState())
        self.raft_applied = self.raft_storage.first_index() - 1
        self._load_store(config)
        self.lessor, self.applier, _ = restore_machine(
            self.backend, self.store, min_ttl=min_lease_ttl(config.heartbeat_interval, config.election_timeout),
            quota_bytes=config.quota_backend_bytes if config.quota_backend_bytes > 0 else 0, now=clock(), tokens=tokens)
        # The WAL tail above the backend's consistent index is replayed by Raft itself: the
        # node applies committed entries from the last snapshot marker on, skipping those the
        # backend already holds (conf changes are always re-applied to Raft).
        self.term = state.hard_state.term

    def install_snapshot(self, config: Config, data: bytes) -> None:
        """Replace the backend by the leader's copy and rebuild everything read from it (worker thread)."""
        import os
        import tempfile

        from securekv.lease import min_lease_ttl
        from securekv.server.persist import restore_machine
        from securekv.storage import Backend

        member_dir = Path(config.data_dir) / "member"
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-recv-", dir=member_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            path = str(member_dir / "db.sqlite")
            # The old reader stays open: the trio thread may still serve reads from the old store
            # until it swaps stores (sqlite keeps reading the replaced file); closed after the swap.
            self.retired_reader = self.reader
            self.backend.close()
            Backend.restore(tmp, path)
            self.backend = Backend.open(path)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._load_store(config)
        if self.tokens is not None:
            self.tokens.clear()  # the auth state is replaced wholesale: nobody keeps a token
        self.lessor, self.applier, self.membership = restore_machine(
            self.backend, self.store, min_ttl=min_lease_ttl(config.heartbeat_interval, config.election_timeout),
            quota_bytes=config.quota_backend_bytes if config.quota_backend_bytes > 0 else 0, now=0.0,
            tokens=self.tokens)

    def _load_store(self, config: Config) -> None:
        """The store over a fresh reader of the (new) backend: index from its checkpoint."""
        from securekv.server.kvindex import load_store

        self.reader = self.backend.reader()
        loaded = load_store(self.backend, self.reader, value_cache_bytes=config.value_cache_bytes)
        self.store = loaded.store
        self.checkpointer = loaded.checkpointer
        self.load_seconds = loaded.seconds

    def close_retired_reader(self) -> None:
        reader, self.retired_reader = self.retired_reader, None
        if reader is not None:
            reader.close()

    def final_checkpoint(self) -> None:
        """Shutdown with every applied row committed: persist the whole key index."""
        from securekv.server.kvindex import final_checkpoint

        try:
            final_checkpoint(self.backend, self.checkpointer)
        except Exception as exc:  # the next start rebuilds from the last checkpoint instead
            log.warning("could not write the key index checkpoint at shutdown: %s", exc)

    def close(self) -> None:
        for closer in (self.close_retired_reader, self.reader.close if self.reader is not None else (lambda: None),
                       self.wal.close, self.backend.close):
            try:
                closer()
            except Exception as exc:  # keep closing the rest
                log.warning("error while closing storage: %s", exc)


def _open_state(config: Config, member_id: int, cluster_id: int, **kw: Any) -> _State:
    """Restore from disk; damage sqlite finds while reading the backend is refused with the
    file and the byte offset (never skipped: the member must not serve a partial store)."""
    import sqlite3

    from securekv.storage.backend import corruption_error, is_corrupt

    try:
        return _State(config, member_id, cluster_id, trio.current_time, **kw)
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            path = str(Path(config.data_dir) / "member" / "db.sqlite")
            raise corruption_error(path, exc) from exc
        raise


def _force_new_cluster(wal: Any, state: Any, member_id: int) -> Any:
    """--force-new-cluster (etcd's semantics): keep the committed log, drop the uncommitted
    tail, and commit conf changes that remove every other member, so this member restarts as
    the only voter with all its data. Written to the WAL, so the change survives restarts."""
    import attrs as _attrs

    from securekv.raft import ConfChange, ConfChangeType, ConfState, EntryType
    from securekv.raft.confchange import apply_change
    from securekv.storage import HardState, WalEntry

    marker = state.snapshot
    cs = ConfState(voters=tuple(marker.voters), learners=tuple(marker.learners)) if marker is not None else ConfState()
    hs = state.hard_state
    commit = max(hs.commit, marker.index if marker is not None else 0)
    kept = [e for e in state.entries if e.index <= commit]
    for e in kept:
        if e.type == int(EntryType.CONF_CHANGE):
            nxt = apply_change(cs, ConfChange.decode(e.data))
            if nxt is not None:
                cs = nxt
    others = sorted((set(cs.voters) | set(cs.learners)) - {member_id})
    term = max(hs.term, 1)
    last = kept[-1].index if kept else commit
    extra = []
    if member_id not in cs.voters:
        extra.append(WalEntry(last + 1, term, ConfChange(ConfChangeType.ADD_NODE, member_id).encode(),
                              int(EntryType.CONF_CHANGE)))
        last += 1
    for mid in others:
        last += 1
        extra.append(WalEntry(last, term, ConfChange(ConfChangeType.REMOVE_NODE, mid).encode(),
                              int(EntryType.CONF_CHANGE)))
    new_hs = HardState(term, 0, last)
    # The new entries start right after the commit index, replacing any uncommitted tail
    # (the WAL's truncation rule).
    wal.append(extra, hard_state=new_hs)
    wal.sync()
    log.warning("--force-new-cluster: removed members %s from the configuration; this member is now "
                "the only voter (index %d)", ", ".join(f"{m:x}" for m in others) or "none", last)
    return _attrs.evolve(state, hard_state=new_hs, entries=kept + extra)


async def serve(
    config: Config,
    *,
    announce: Callable[[Started], None] | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    from securekv.api.auth_gate import SERVER_CALLER, AuthGate
    from securekv.api.dispatch import Dispatcher, Limits
    from securekv.auth import LoginLimiter, parse_token_spec
    from securekv.server.authkeys import token_provider
    from securekv.server.authserver import effective_bcrypt_cost
    from securekv.server.grpcconn import GrpcSettings
    from securekv.server.grpcpump import GrpcPump
    from securekv.server.etcdserver import CLUSTER_VERSION, VERSION, EtcdServer
    from securekv.server.node import Node
    from securekv.server.persist import to_write_batches
    from securekv.server.sdnotify import Notifier, watchdog_period
    from securekv.storage import lock_data_dir
    from securekv.watch import WatchHub
    from securekv.watch.hub import HubConfig

    from securekv.server.etcdlog import event

    if config.discovery_srv:
        config = await discover_srv(config)
    await _convert_etcd_data_dir(config)
    data_dir = Path(config.data_dir)
    member_initialized = (data_dir / "member").exists()
    event(log, logging.INFO, "starting an etcd server", capnslog=f"etcd Version: {VERSION}", pkg="etcdmain",
          **{"etcd-version": VERSION, "name": config.name, "data-dir": config.data_dir, "wal-dir": config.wal_dir,
             "member-initialized": member_initialized, "initial-cluster-state": config.initial_cluster_state,
             "initial-cluster-token": config.initial_cluster_token,
             "quota-size-bytes": config.effective_quota_bytes,
             "initial-cluster": ",".join(f"{n}={u}" for n, u in config.initial_cluster),
             "pre-vote": config.pre_vote, "auto-compaction-mode": config.auto_compaction_mode})
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = lock_data_dir(str(data_dir))
    notifier = Notifier.from_environment()
    node: Any = None
    state: _State | None = None
    audit: Any = None
    try:
        tokens = token_provider(parse_token_spec(config.auth_token), config.data_dir, config.auth_token_ttl)
        if config.audit_log:
            from securekv.server.audit import AuditLog

            audit = AuditLog(config.audit_log)
        tls_files, local_pki = resolve_tls(config)
        tls = ServerTLS(tls_files) if tls_files is not None else None
        if tls_files is not None and not tls_files.client_cert_auth:
            log.warning("--insecure-skip-client-cert-auth: the client port%s serves TLS clients WITHOUT a "
                        "certificate; they are anonymous and get full access unless auth is enabled",
                        " and the https:// metrics listener" if any(u.is_tls for u in config.listen_metrics_urls)
                        else "")
        member_id, cluster_id = cluster_ids(config)
        cluster_id = await _joining_cluster_id(config, member_id, cluster_id)
        opened = trio.current_time()
        state = _open_state(config, member_id, cluster_id, tokens=tokens)
        from securekv.client.gofmt import duration

        event(log, logging.INFO, "opened backend db", capnslog=None, pkg="etcdserver",
              path=str(data_dir / "member" / "db.sqlite"), took=duration(trio.current_time() - opened))
        if state.created and config.initial_cluster_state == "new":
            from securekv.server.sizing import advice

            sizing = advice(len({name for name, _ in config.initial_cluster}))
            if sizing:  # etcd's sizing advice; a bootstrap is not refused, only warned about
                log.warning("cluster size: %s", sizing)
        ids_fields = {"local-member-id": f"{state.member_id:x}", "cluster-id": f"{state.cluster_id:x}"}
        if state.created:
            event(log, logging.INFO, "starting local member", pkg="etcdserver",
                  capnslog=f"starting member {state.member_id:x} in cluster {state.cluster_id:x}", **ids_fields)
        else:
            event(log, logging.INFO, "restarting local member", pkg="etcdserver",
                  capnslog=f"restarting member {state.member_id:x} in cluster {state.cluster_id:x} at commit index "
                           f"{state.raft_storage.last_index()}", **ids_fields,
                  **{"commit-index": state.raft_storage.last_index()})
        metrics = ServerMetrics(state.member_id, VERSION, extensive=config.metrics == "extensive",
                                quota_bytes=config.effective_quota_bytes)
        metrics.watch_store(lambda: state.store)
        if tls_files is not None:
            # Every certificate this member serves or verifies with (issue 16: renewal and CA
            # rotation are watched by their remaining lifetime, read at scrape time).
            metrics.watch_certificates(lambda: [p for p in (tls.files.cert_file if tls else "", config.peer_cert_file,
                                                            tls.files.trusted_ca_file if tls else "",
                                                            config.peer_trusted_ca_file, config.signing_ca_cert_file)
                                                if p])

        holder: dict[str, EtcdServer] = {}
        hub = WatchHub(
            lambda *a, **kw: state.store.events_between(*a, **kw),
            revision=state.store.current_revision,
            compact_revision=max(state.store.compact_revision, 0),
            wakeup=lambda sid: holder["etcd"].watch_wakeup(sid),
            config=HubConfig(progress_interval=config.experimental_watch_progress_notify_interval),
        )

        def on_batch(entries: int, fsync_seconds: float, last: int) -> None:
            metrics.fsync_seconds.observe(fsync_seconds)
            metrics.batch_size.observe(entries)
            holder["etcd"].on_applied()

        def on_leader_change(old: int, new: int) -> None:
            etcd = holder.get("etcd")
            if etcd is not None:
                etcd.on_leader_change(old, new)

        node = Node(
            wal=state.wal, backend=state.backend, applier=state.applier, hub=hub,
            member_id=state.member_id, max_request_bytes=config.max_request_bytes,
            to_write_batch=to_write_batches, on_batch=on_batch, snapshot_count=config.snapshot_count,
            raft_storage=state.raft_storage, membership=state.membership, raft_applied=state.raft_applied,
            election_tick=max(config.election_timeout // config.heartbeat_interval, 2),
            tick_seconds=config.heartbeat_interval / 1000.0,
            request_timeout=5.0 + 2 * config.election_timeout / 1000.0,
            term=state.term, on_leader_change=on_leader_change, pre_vote=config.pre_vote,
        )
        node.checkpointer = state.checkpointer
        state.reader.on_corrupt = node.fail
        etcd = EtcdServer(
            node=node, store=state.store, lessor=state.lessor, applier=state.applier, hub=hub,
            backend=state.backend, cluster_id=state.cluster_id, member_id=state.member_id, name=config.name,
            peer_urls=[str(u) for u in config.initial_advertise_peer_urls],
            client_urls=[str(u) for u in config.advertise_client_urls], max_txn_ops=config.max_txn_ops,
            snapshot_dir=str(Path(config.data_dir) / "member"),
        )
        holder["etcd"] = etcd
        etcd.election_timeout = config.election_timeout / 1000.0
        node.lease_extend = etcd.election_timeout  # a new leader extends every lease by this
        etcd.quota_bytes = config.effective_quota_bytes
        node.backend_size = state.backend.size_bytes()
        etcd.cluster_token = config.initial_cluster_token
        etcd.strict_reconfig_check = config.strict_reconfig_check
        node.cluster_id = state.cluster_id
        node.warning_apply_duration = config.experimental_warning_apply_duration
        if config.backend_batch_interval > 0:
            node.backend_batch_interval = config.backend_batch_interval
        if config.backend_batch_limit > 0:
            node.backend_batch_limit = config.backend_batch_limit
        async def install_snapshot(snap: Any) -> None:
            await trio.to_thread.run_sync(state.install_snapshot, config, snap.data)
            node.applier = state.applier
            node.backend = state.backend
            node.membership = state.membership
            node.checkpointer = state.checkpointer
            state.reader.on_corrupt = node.fail
            etcd.store, etcd.lessor, etcd.applier, etcd.backend = (state.store, state.lessor, state.applier,
                                                                   state.backend)
            state.close_retired_reader()
            if state.store.compact_revision > 0:
                hub.compact(state.store.compact_revision)
            hub.advance(state.store.current_revision)
            t = node.transport
            if t is not None:
                known = set(t.peers())
                for m in state.membership.members.values():
                    if m.id != state.member_id and m.peer_urls:
                        (t.update_peer if m.id in known else t.add_peer)(m.id, list(m.peer_urls))
                for mid in known - set(state.membership.members):
                    t.remove_peer(mid)
            etcd.on_applied()
            log.info("installed the leader's snapshot at index %d", snap.metadata.index)

        node.on_install_snapshot = install_snapshot
        node.on_fatal = on_fatal
        transport = _make_transport(config, state, node)
        etcd.transport = transport
        metrics.watch_crls(lambda: _crl_status(tls, transport))
        if transport is not None:
            etcd.register_peer_calls(transport)

        gate = AuthGate(tokens=tokens, audit=audit)
        gate.bind(etcd)
        etcd.gate = gate
        from securekv.cluster.signer import JoinService, Signer

        signer = (Signer(config.signing_ca_cert_file, config.signing_ca_key_file, (config.trusted_ca_file,))
                  if config.signing_ca_cert_file else None)
        spawner: list[trio.Nursery] = []
        cert_files = (
            ("client-port", tls_files.cert_file if tls_files else ""),
            ("trusted-ca", tls_files.trusted_ca_file if tls_files else ""),
            ("client-crl", tls_files.crl_file if tls_files else ""),
            ("peer", config.peer_cert_file), ("peer-trusted-ca", config.peer_trusted_ca_file),
            ("peer-crl", config.peer_crl_file), ("signing-ca", config.signing_ca_cert_file),
        )
        etcd.joins = JoinService(etcd, signer, lambda fn, *args: spawner[0].start_soon(fn, *args),
                                 trusted_ca_file=config.trusted_ca_file or (tls_files.trusted_ca_file if tls_files else ""),
                                 files=cert_files)
        if signer is not None:
            log.warning("--signing-ca-cert-file: this member signs the certificates of members joining with a join "
                        "token; TLS clients without a certificate may reach the join endpoints (and nothing else)")
        etcd.bcrypt_cost = effective_bcrypt_cost(config.bcrypt_cost)
        etcd.login_limiter = LoginLimiter()
        etcd.max_watches_per_identity = config.max_watches_per_identity
        etcd.max_leases_per_identity = config.max_leases_per_identity
        etcd.max_response_bytes = config.max_response_bytes
        dispatcher = Dispatcher(etcd, gate, metrics, Limits(max_calls_per_identity=config.max_calls_per_identity),
                                has_leader=lambda: node.leader != 0)
        grpc_settings = GrpcSettings(
            max_concurrent_streams=config.max_concurrent_streams,
            # grpc-go's receive limit in etcd: --max-request-bytes plus 512 KiB for the envelope.
            max_receive_message=config.max_request_bytes + 512 * 1024,
            ping_min_interval=config.grpc_keepalive_min_time,
        )

        def version() -> dict:
            return {"etcdserver": VERSION, "etcdcluster": CLUSTER_VERSION}

        _metric_sources(metrics, node, etcd, hub, state)
        if transport is not None:
            from securekv.peer.metrics import PeerCollector

            metrics.registry.register(PeerCollector(transport))

        def render_metrics() -> bytes:
            return metrics.render()

        async def health() -> tuple[bool, str]:
            ok, reason = await etcd.health()
            if ok:
                metrics.health_ok += 1
            else:
                metrics.health_failed += 1
            return ok, reason

        gateway = Gateway(etcd, gate, metrics)
        # JSON is base64 and field names on top of the protobuf request: room for both.
        # A request head gets the time a TLS handshake gets (slow clients are closed, not waited for).
        app = HttpApp(health, version, render_metrics, CONTENT_TYPE, gateway,
                      max_body=2 * config.max_request_bytes + 64 * 1024, head_timeout=config.tls_handshake_timeout)

        async def client_http(stream: trio.abc.Stream, identity: Identity) -> None:
            await app.serve(stream, CLIENT_PATHS, identity, gateway=config.enable_grpc_gateway)

        async def join_http(stream: trio.abc.Stream, identity: Identity) -> None:
            from securekv.api.table import ANONYMOUS_GATEWAY

            await app.serve(stream, frozenset(), identity, gateway=True, only=ANONYMOUS_GATEWAY)

        async def metrics_http(stream: trio.abc.Stream, identity: Identity) -> None:
            await app.serve(stream, METRICS_PATHS)

        async def client_grpc(stream: trio.abc.Stream, identity: Identity, live: LiveConnection) -> None:
            pump = GrpcPump(stream, identity, dispatcher, grpc_settings,
                            preface_timeout=config.tls_handshake_timeout,
                            keepalive=(config.grpc_keepalive_interval, config.grpc_keepalive_timeout),
                            on_bytes=metrics.client_bytes,  # etcd_network_client_grpc_*_bytes_total
                            reply_batch=node.reply_batch)
            live.drain = pump.drain
            await pump.run()

        def client_listener(url: Any) -> ClientListener:
            return ClientListener(tls if url.is_tls else None, client_http, client_grpc,
                                  config.tls_handshake_timeout, config.max_connections_per_listener,
                                  join_handler=join_http if signer is not None else None,
                                  max_per_identity=config.max_connections_per_identity)

        def metrics_listener(url: Any) -> ClientListener:
            # HTTP/1.1 only: gRPC is never served on the metrics listener.
            return ClientListener(tls if url.is_tls else None, metrics_http, None,
                                  config.tls_handshake_timeout, config.max_connections_per_listener,
                                  max_per_identity=config.max_connections_per_identity)

        accept_scopes: list[trio.CancelScope] = []
        connection_scopes: list[trio.CancelScope] = []
        client_doors: list[ClientListener] = []

        transport_scopes: list[trio.CancelScope] = []
        node_scopes: list[trio.CancelScope] = []
        async with trio.open_nursery() as nursery:
            spawner.append(nursery)
            try:
                if transport is not None:
                    peer_listeners = []
                    for url in config.listen_peer_urls:
                        peer_listeners.extend(await _listen(url))
                        event(log, logging.INFO, "serving peer traffic", pkg="embed",
                              capnslog=f"listening for peers on {url.host}:{url.port}", address=f"{url.host}:{url.port}")
                    await nursery.start(_shielded, transport_scopes, transport.run)
                    await nursery.start(_shielded, transport_scopes, partial(transport.serve, peer_listeners))
                # The node and the peer transport outlive a cancellation of serve() long enough to
                # hand leadership over (etcd's stop behaviour); they are stopped explicitly below.
                await nursery.start(_shielded, node_scopes, node.run)
                nursery.start_soon(etcd.publish_loop)
                if transport is not None:
                    # As etcd: clients are served once this member's attributes are applied from
                    # the log, i.e. it has a leader and caught up with the cluster's membership.
                    log.info("waiting to join the cluster (leader election / catch-up) before serving clients")
                    await etcd.published_event.wait()
                elif node.single_voter():
                    # One voter campaigns at once: serve when it leads (a few ms), so the first
                    # requests never see "no leader".
                    while node.leader == 0:
                        await node.wait_leader_change()
                    if state.member_id in node.membership.members:
                        # its attributes are one local proposal away (etcd publishes before serving)
                        with trio.move_on_after(config.election_timeout / 1000.0):
                            await etcd.published_event.wait()
                if config.experimental_initial_corrupt_check and transport is not None:
                    from securekv.server.corrupt import initial_check

                    await initial_check(etcd)
                if config.embedded_pki:
                    # Secure by default: auth on, root = the generated root certificate's CN.
                    await etcd.bootstrap_root(SERVER_CALLER)
                # Client connections outlive a cancellation of serve() until they are drained
                # (GOAWAY, a short grace for running calls), then they are closed explicitly.
                connections = await nursery.start(_connection_nursery, connection_scopes)
                client_urls = []
                event(log, logging.INFO, "ready to serve client requests", pkg="embed")
                for url in config.listen_client_urls:
                    listeners = await _listen(url)
                    client_urls.append(_bound_url(url, listeners))
                    door = client_listener(url)
                    client_doors.append(door)
                    await nursery.start(_accept, accept_scopes, door.handle, listeners, connections)
                    address = client_urls[-1].split("://", 1)[1]
                    if url.is_tls:
                        event(log, logging.INFO, "serving client traffic securely", pkg="embed",
                              capnslog=f"serving client requests on {address}", address=address)
                    else:
                        event(log, logging.INFO, "serving client traffic insecurely; this is strongly discouraged!",
                              pkg="embed", capnslog=f"serving insecure client requests on {address}, this is "
                              "strongly discouraged!", address=address)
                metrics_urls = []
                for url in config.listen_metrics_urls:
                    listeners = await _listen(url)
                    metrics_urls.append(_bound_url(url, listeners))
                    await nursery.start(_accept, accept_scopes, metrics_listener(url).handle, listeners, connections)
                    event(log, logging.INFO, "serving metrics", pkg="embed",
                          capnslog=f"listening for metrics on {metrics_urls[-1]}", address=metrics_urls[-1])
                event(log, logging.INFO, "now serving peer/client/metrics", pkg="embed",
                      **{"local-member-id": f"{state.member_id:x}",
                         "initial-advertise-peer-urls": [str(u) for u in config.initial_advertise_peer_urls],
                         "listen-peer-urls": [str(u) for u in config.listen_peer_urls] if transport else [],
                         "advertise-client-urls": [str(u) for u in config.advertise_client_urls],
                         "listen-client-urls": client_urls, "listen-metrics-urls": metrics_urls})
                nursery.start_soon(_every, LEASE_TICK, etcd.expire_leases)
                nursery.start_soon(_verify_backend, state.backend.path, node.fail)
                if config.backup.enabled:
                    from securekv.server.backup import BackupScheduler

                    backups = BackupScheduler(config.backup, etcd.build_snapshot, etcd.snapshot_dir, metrics.registry)
                    await nursery.start(backups.run)
                nursery.start_soon(_every, TOKEN_PURGE, _sync(lambda: tokens.purge(gate.token_now())))
                if audit is not None:
                    nursery.start_soon(_every, 1.0, partial(trio.to_thread.run_sync, audit.flush))
                nursery.start_soon(_every, DB_SIZE_REFRESH, partial(_refresh_db_size, node, etcd))
                if config.experimental_corrupt_check_time > 0 and transport is not None:
                    from securekv.server.corrupt import periodic_check

                    event(log, logging.INFO, "enabled corruption checking", pkg="etcdserver",
                          **{"local-member-id": f"{state.member_id:x}",
                             "interval": f"{config.experimental_corrupt_check_time:g}s"})
                    nursery.start_soon(_every, config.experimental_corrupt_check_time, partial(periodic_check, etcd))
                if config.auto_compaction_retention > 0:
                    from securekv.server.autocompact import AutoCompactor

                    compactor = AutoCompactor(config.auto_compaction_mode, config.auto_compaction_retention,
                                              started=trio.current_time())
                    nursery.start_soon(_every, compactor.interval, partial(_auto_compact, compactor, node, etcd))
                nursery.start_soon(_every, 1.0, _sync(lambda: hub.tick_progress(trio.current_time())))
                if tls is not None:
                    nursery.start_soon(_every, TLS_RELOAD_CHECK, _sync(tls.check))
                period = watchdog_period()
                if period:
                    nursery.start_soon(_every, period, _sync(notifier.watchdog))
                started = Started(tuple(client_urls), tuple(metrics_urls), state.member_id,
                                  state.cluster_id, tls_files, local_pki,
                                  tuple(door.live for door in client_doors))
                if announce is not None:
                    announce(started)
                notifier.ready(status=f"serving clients on {', '.join(client_urls)}")
                task_status.started(started)
                try:
                    await trio.sleep_forever()
                finally:
                    event(log, logging.INFO, "closing etcd server", pkg="embed", capnslog="stopping the member",
                          name=config.name, **{"data-dir": config.data_dir,
                                               "advertise-peer-urls": [str(u) for u in config.initial_advertise_peer_urls],
                                               "advertise-client-urls": [str(u) for u in config.advertise_client_urls]})
                    notifier.stopping()
                    with trio.CancelScope(shield=True) as stop_scope:
                        # Stop accepting; GOAWAY to gRPC clients, whose running calls get a
                        # short grace (streams such as watches never end by themselves).
                        for scope in accept_scopes:
                            scope.cancel()
                        stop_scope.deadline = trio.current_time() + DRAIN_GRACE + 1.0
                        async with trio.open_nursery() as drains:
                            for door in client_doors:
                                drains.start_soon(door.live.drain, DRAIN_GRACE)
                        for scope in connection_scopes:
                            scope.cancel()
                        stop_scope.deadline = trio.current_time() + 2 * config.election_timeout / 1000.0
                        await node.hand_over_leadership()
            finally:
                for scope in connection_scopes:
                    scope.cancel()
                node.close()
                for scope in node_scopes:
                    scope.deadline = trio.current_time() + 5.0  # the node drains, then ends
                for scope in transport_scopes:
                    scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        if state is not None:
            with trio.CancelScope(shield=True):
                if node is not None and not node.failed and node.committed_index >= state.applier.applied_index:
                    await trio.to_thread.run_sync(state.final_checkpoint)
                state.close()
        if audit is not None:
            audit.close()
        lock.release()
        event(log, logging.INFO, "closed etcd server", pkg="embed", capnslog="stopped the member", name=config.name,
              **{"data-dir": config.data_dir})


def _metric_sources(metrics: ServerMetrics, node: Any, etcd: Any, hub: Any, state: Any) -> None:
    """What /metrics reads at scrape time (server/metrics.py Sources); all cheap, trio thread."""
    s = metrics.sources
    s.has_leader = lambda: node.leader != 0
    s.is_leader = lambda: node.is_leader
    s.is_learner = node.is_learner
    s.committed_index = lambda: node.commit_index
    s.applied_index = lambda: node.applier.applied_index
    s.pending_proposals = lambda: node.pending_proposals
    s.leader_changes = lambda: node.leader_changes
    s.proposals_failed = lambda: node.proposals_failed
    s.slow_applies = lambda: node.slow_applies
    s.read_indexes_failed = lambda: node.read_indexes_failed
    s.snapshot_applying = lambda: node.installing_snapshot
    s.db_size = lambda: etcd.db_sizes[0]
    s.db_size_in_use = lambda: etcd.db_sizes[1]
    s.keys = lambda: len(etcd.store)
    s.revision = lambda: etcd.store.current_revision
    s.compact_revision = lambda: etcd.store.compact_revision
    s.watchers = lambda: hub.statistics().watchers
    s.watch_streams = lambda: hub.statistics().streams
    s.slow_watchers = lambda: hub.statistics().unsynced
    s.pending_events = lambda: hub.statistics().pending_responses
    s.leases = lambda: len(etcd.lessor)
    s.wal_bytes = lambda: node.wal_bytes
    s.defrag_inflight = lambda: etcd.defragmenting
    s.events_sent = lambda: node.events_notified
    s.compacted_keys = lambda: node.compacted_keys
    node.metrics = metrics
    etcd.metrics = metrics


async def _auto_compact(compactor: Any, node: Any, etcd: Any) -> None:
    """One compactor step on the leader (followers' compactors stay idle, as etcd's pause)."""
    from securekv.api.auth_gate import SERVER_CALLER
    from securekv.proto import rpc_pb2
    from securekv.rpctypes import ERR_COMPACTED, EtcdError
    from securekv.server.etcdlog import event

    if not node.is_leader:
        return
    now = trio.current_time()
    target = compactor.tick(now, etcd.store.current_revision)
    if target is None:
        return
    mode = compactor.mode
    event(log, logging.INFO, f"starting auto {mode} compaction", pkg="compactor",
          capnslog=f"Starting auto-compaction at revision {target}", revision=target)
    try:
        await etcd.compact(rpc_pb2.CompactionRequest(revision=target), SERVER_CALLER)  # the server itself
    except EtcdError as exc:
        if exc != ERR_COMPACTED:  # ERR_COMPACTED: already compacted past it, nothing to do
            log.warning("auto %s compaction to %d failed: %s (retrying)", mode, target, exc.message)
            return
    compactor.done(now, target)
    event(log, logging.INFO, f"completed auto {mode} compaction", pkg="compactor",
          capnslog=f"Finished auto-compaction at revision {target}", revision=target)


async def _refresh_db_size(node: Any, etcd: Any) -> None:
    """The backend's size for /metrics and the gauges (a backend call: worker thread, in order)."""
    from securekv.server.etcdserver import _sizes

    etcd.db_sizes = await node.backend_call(_sizes, etcd.backend)


async def _convert_etcd_data_dir(config: Config) -> None:
    """A data dir written by etcd 3.4 becomes securekv's on first start (server/etcddatadir.py)."""
    from securekv.server.etcddatadir import convert_on_start
    from securekv.server.etcdlog import event

    started = trio.current_time()
    done = await trio.to_thread.run_sync(convert_on_start, config.data_dir, config.wal_dir)
    if done is None:
        return
    from securekv.client.gofmt import duration

    event(log, logging.WARNING, "converted an etcd 3.4 data dir", pkg="etcdserver",
          capnslog=f"converted the etcd 3.4 data dir {done.data_dir} (original kept in {done.original})",
          **{"data-dir": done.data_dir, "original-kept-in": done.original, "local-member-id": f"{done.member_id:x}",
             "cluster-id": f"{done.cluster_id:x}", "revisions": done.revisions, "leases": done.leases,
             "consistent-index": done.consistent_index, "snapshot-index": done.snapshot_index,
             "last-index": done.last_index, "commit-index": done.commit,
             "took": duration(trio.current_time() - started)})


async def discover_srv(config: Config) -> Config:
    """--discovery-srv: the initial cluster from DNS SRV records (client/srv.py, etcd's rules).

    Every member gets the same ``name=scheme://target:port`` entries, so member IDs agree; this
    member's own entry (found by resolving the targets and its advertised peer URLs) becomes
    its advertised peer URL, as etcd's membership records it. With $SECUREKV_DNS_RESOLVER the
    same resolver answers trio's lookups, so peers are dialled by those names.
    """
    from securekv.client.srv import DiscoveryError, Resolver, TrioResolver, discover_cluster
    from securekv.config.model import parse_url
    from securekv.server.etcdlog import event

    resolver = Resolver.from_env()
    if resolver.nameserver is not None:
        trio.socket.set_custom_hostname_resolver(TrioResolver(resolver))
    advertised = [str(u) for u in config.initial_advertise_peer_urls]
    try:
        entries = await trio.to_thread.run_sync(discover_cluster, config.name, config.discovery_srv,
                                                config.discovery_srv_name, advertised, resolver)
    except DiscoveryError as exc:
        event(log, logging.WARNING, "failed to resolve during SRV discovery", pkg="embed", error=str(exc),
              capnslog=f"couldn't resolve during SRV discovery ({exc})")
        raise UsageError(f"--discovery-srv {config.discovery_srv}: {exc}") from None
    pairs = []
    for entry in entries:
        event(log, logging.INFO, "got bootstrap from DNS for etcd-server", pkg="embed", node=entry,
              capnslog=f"got bootstrap from DNS for etcd-server at {entry}")
        name, _, url = entry.partition("=")
        pairs.append((name, url))
    own = tuple(parse_url(u, "--discovery-srv") for n, u in pairs if n == config.name)
    return attrs.evolve(config, initial_cluster=tuple(pairs), initial_advertise_peer_urls=own)


async def _joining_cluster_id(config: Config, member_id: int, cluster_id: int) -> int:
    """A member joining an existing cluster asks the other members for the cluster ID."""
    from securekv.server.discovery import discover_cluster_id
    from securekv.storage import WAL

    wal_dir = config.wal_dir or str(Path(config.data_dir) / "member" / "wal")
    if config.initial_cluster_state != "existing" or WAL.exists(wal_dir):
        return cluster_id
    mine = {u for n, u in config.initial_cluster if n == config.name}
    others = [u for n, u in config.initial_cluster if n != config.name and u not in mine]
    if not others:
        raise UsageError("--initial-cluster-state existing needs the other members in --initial-cluster")
    tls = _peer_tls(config)
    # (with --discovery-srv the other members' names are placeholders: not checked)
    named = [("" if config.discovery_srv else n, u) for n, u in config.initial_cluster
             if n != config.name and u not in mine]
    with trio.move_on_after(30):
        while True:
            found = await discover_cluster_id(tls, member_id, named, timeout=config.tls_handshake_timeout)
            if found:
                log.info("joining cluster %x", found)
                return found
            await trio.sleep(1.0)
    raise UsageError(f"could not learn the cluster ID from any member of --initial-cluster ({', '.join(others)}); "
                     "are they running and is this member added with `member add`?")


async def _accept(scopes: list[trio.CancelScope], handler: Callable[[Any], Any], listeners: list[Any],
                  connections: trio.Nursery, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Accept on ``listeners`` until stopped; connections live in ``connections`` so that
    stopping the accepting leaves them to be drained."""
    with trio.CancelScope() as scope:
        scopes.append(scope)
        await trio.serve_listeners(handler, listeners, handler_nursery=connections, task_status=task_status)


async def _connection_nursery(scopes: list[trio.CancelScope], task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A nursery for client connections that outer cancellation does not reach (stopped via
    ``scopes`` once they are drained)."""
    with trio.CancelScope(shield=True) as scope:
        scopes.append(scope)
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


async def _verify_backend(path: str, fail: Callable[[BaseException], None]) -> None:
    """Once after start, off the trio thread: sqlite's check of the whole backend. The index
    now comes from a checkpoint, so start-up no longer reads every row; damage anywhere still
    stops the member (exit status 2, the file and byte offset), as a damaged row found by a
    read does, instead of being served around."""
    from securekv.storage.backend import IntegrityCheck

    check = IntegrityCheck(path)
    try:
        error = await trio.to_thread.run_sync(check.run, abandon_on_cancel=True)
    finally:
        check.interrupt()  # a stopping member does not wait for the check: end it at once
    if error is not None:
        fail(error)


async def _shielded(scopes: list[trio.CancelScope], fn: Callable[..., Any],
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``fn`` in a scope that outer cancellation does not reach; stopped via ``scopes``."""
    with trio.CancelScope(shield=True) as scope:
        scopes.append(scope)
        await fn(task_status=task_status)


def _wants_peers(config: Config, state: Any) -> bool:
    """A peer port is opened for a member of (or joining) a multi-member cluster, or when peer
    TLS material is configured; a plain single member stays without one."""
    names = {name for name, _ in config.initial_cluster}
    return (len(names) > 1 or len(state.membership.members) > 1 or config.initial_cluster_state == "existing"
            or bool(config.peer_cert_file) or config.peer_auto_tls)


def _peer_tls(config: Config) -> Any:
    from securekv.peer import PeerTLS

    if not any(u.is_tls for u in config.listen_peer_urls):
        return None  # http:// peers: only reachable with --insecure-allow-plaintext (checked by config)
    if config.peer_cert_file:
        tls = PeerTLS.from_files(config.peer_cert_file, config.peer_key_file, config.peer_trusted_ca_file or None,
                                 crl_file=config.peer_crl_file or None,
                                 allowed_cn=config.peer_cert_allowed_cn or None,
                                 allowed_hostname=config.peer_cert_allowed_hostname or None,
                                 insecure_skip_client_cert_auth=config.peer_insecure_skip_client_cert_auth,
                                 cipher_suites=config.cipher_suites,
                                 skip_client_san_verification=config.experimental_peer_skip_client_san_verification)
        _check_own_member_name(config, tls)
        return tls
    if config.peer_auto_tls:
        hosts = sorted({"127.0.0.1", "localhost", "::1", *(u.host for u in config.listen_peer_urls),
                        *(u.host for u in config.initial_advertise_peer_urls)} - {"0.0.0.0", "::"})
        if config.embedded_pki:
            # The embedded default has a CA of its own: the member's peer certificate comes from it
            # (named after the member), so links stay mutually authenticated.
            from securekv.pki.local import ensure_peer_cert

            cert, key, ca = ensure_peer_cert(Path(config.data_dir) / "pki", config.name, hosts)
            return PeerTLS.from_files(str(cert), str(key), str(ca), crl_file=config.peer_crl_file or None,
                                      cipher_suites=config.cipher_suites,
                                      skip_client_san_verification=config.experimental_peer_skip_client_san_verification)
        from securekv.pki.autotls import ensure_self_signed

        auto = ensure_self_signed(Path(config.data_dir) / "fixtures" / "peer", hosts,
                                  validity_years=config.self_signed_cert_validity)
        # Only with --peer-insecure-skip-client-cert-auth (config.load refuses it otherwise).
        return PeerTLS.from_files(str(auto.cert_path), str(auto.key_path), None,
                                  insecure_skip_client_cert_auth=config.peer_insecure_skip_client_cert_auth,
                                  cipher_suites=config.cipher_suites)
    raise UsageError("https:// peer URLs need --peer-cert-file/--peer-key-file/--peer-trusted-ca-file "
                     "(or --peer-auto-tls with the embedded default)")


def _check_own_member_name(config: Config, tls: Any) -> None:
    """The other members bind our certificate to our name: say so at start, not as refusals."""
    from securekv.pki.verify import load_cert_chain
    from securekv.tlspolicy import VerifiedPeer

    if not tls.authenticated or config.peer_cert_allowed_cn or config.peer_cert_allowed_hostname:
        return
    named = VerifiedPeer((load_cert_chain(config.peer_cert_file)[0],)).member_name
    if named != config.name:
        raise UsageError(f"--peer-cert-file {config.peer_cert_file} names member {named!r}, but this member is "
                         f"--name {config.name!r}: the other members would refuse it. Issue it with `securekv pki "
                         f"issue peer {config.name}`, or accept a shared certificate with --peer-cert-allowed-cn")


def _member_names(config: Config, node: Any) -> Callable[[], dict[int, str]]:
    """Member ID -> name for binding peer certificates: the applied membership, with the names
    --initial-cluster gives for members the membership has not named yet (a joining member
    knows nobody before the leader's log reaches it). With --discovery-srv the other members'
    bootstrap names are etcd's placeholders ("0", "1", ...) until they publish their own: they
    count as not named yet."""
    from securekv.server.cluster import initial_members

    placeholders = ({n for n, _ in config.initial_cluster if n != config.name} if config.discovery_srv
                    else set())
    initial = {m.id: ("" if m.name in placeholders else m.name)
               for m in initial_members(config.initial_cluster, config.initial_cluster_token)}

    def names() -> dict[int, str]:
        out = dict(initial)
        for m in node.membership.members.values():
            name = "" if m.name in placeholders else m.name
            if name or m.id not in out:
                out[m.id] = name
        return out

    return names


def _crl_status(tls: Any, transport: Any) -> list[tuple[str, str, Any]]:
    out = []
    if tls is not None and tls.crl is not None:
        out.append(("client", tls.crl.path, tls.crl.current.next_update))
    peer_tls = getattr(transport, "tls", None)
    if peer_tls is not None and peer_tls.crl is not None:
        out.append(("peer", peer_tls.crl.path, peer_tls.crl.current.next_update))
    return out


def _make_transport(config: Config, state: Any, node: Any) -> Any:
    if not _wants_peers(config, state):
        return None
    from securekv.peer import PeerTransport
    from securekv.server.cluster import initial_members

    transport = PeerTransport(state.member_id, state.cluster_id, _peer_tls(config), node.deliver,
                              node.report_unreachable, node.report_snapshot,
                              handshake_timeout=config.tls_handshake_timeout,
                              member_names=_member_names(config, node))
    node.transport = transport
    members = list(state.membership.members.values())
    if not members:
        members = initial_members(config.initial_cluster, config.initial_cluster_token)
    for m in members:
        if m.id != state.member_id and m.peer_urls:
            transport.add_peer(m.id, list(m.peer_urls))
    return transport


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
