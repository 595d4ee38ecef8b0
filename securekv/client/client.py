"""A synchronous etcd v3 client over grpcio (mutual TLS), shaped after clientv3.

Methods return the raw protobuf responses (``securekv.proto.rpc_pb2``): they are what etcdctl
prints, so the CLI and library callers see exactly what the server said. Failures raise
:class:`securekv.client.errors.ClientError` whose text matches clientv3's.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Iterable, Sequence

import grpc

from securekv.client import watch as _watch
from securekv.client.endpoints import Endpoint, TLSFiles, open_channel, parse_endpoint
from securekv.client.errors import ClientError, from_rpc_error
from securekv.client.keepalive import KeepAlive, keepalive_once
from securekv.client.snapshot import Encryption, save_snapshot
from securekv.errors import UsageError
from securekv.proto import rpc_pb2, rpc_pb2_grpc, v3election_pb2, v3election_pb2_grpc, v3lock_pb2, v3lock_pb2_grpc

SORT_ORDERS = {"NONE": 0, "ASCEND": 1, "DESCEND": 2}
SORT_TARGETS = {"KEY": 0, "VERSION": 1, "CREATE": 2, "MOD": 3, "MODIFY": 3, "VALUE": 4}


def b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def prefix_end(key: bytes) -> bytes:
    """etcd's getPrefix: the smallest key greater than every key starting with ``key``."""
    end = bytearray(key)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # all 0xff (or empty): everything from key on


def key_range(key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
              from_key: bool = False) -> tuple[bytes, bytes]:
    """(key, range_end) for clientv3's WithRange / WithPrefix / WithFromKey options."""
    k = b(key)
    if prefix and from_key:
        raise UsageError("prefix and from_key are mutually exclusive")
    if prefix:
        if not k:
            return b"\0", b"\0"
        return k, prefix_end(k)
    if from_key:
        return (k or b"\0"), b"\0"
    return k, b(range_end) if range_end is not None else b""


ERR_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
# clientv3 logs in again and retries once when a call fails with one of these (shouldRefreshToken).
REFRESH_TOKEN_ERRORS = frozenset({
    "etcdserver: user name is empty", "etcdserver: invalid auth token", "etcdserver: revision of auth store is old",
})
PERMISSION_TYPES = {"READ": 0, "WRITE": 1, "READWRITE": 2}


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the ``token`` metadata (when there is one) to every call on a channel."""

    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    def _details(self, d: Any) -> Any:
        token = self._token()
        if not token:
            return d
        metadata = [*(d.metadata or ()), ("token", token)]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready,
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(channel)
        self.lock = v3lock_pb2_grpc.LockStub(channel)
        self.election = v3election_pb2_grpc.ElectionStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)


class Client:
    """Connection to one or more etcd-compatible endpoints.

    ``timeout`` bounds each unary call (etcdctl's ``--command-timeout``); calls wait for the
    connection within that budget instead of failing fast, so a dead endpoint reports
    ``context deadline exceeded`` like clientv3. ``dial_timeout`` bounds picking a live
    endpoint when several are given.
    """

    def __init__(self, endpoints: Sequence[str] | str = ("127.0.0.1:2379",), *, cacert: str | None = None,
                 cert: str | None = None, key: str | None = None, timeout: float | None = 5.0,
                 dial_timeout: float = 2.0, user: str | None = None, password: str | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise UsageError("no endpoints given")
        self.tls = TLSFiles(cacert=cacert, cert=cert, key=key)
        if self.tls.any:
            self.tls.credentials()  # read the files now: a bad path is a usage error, not a hang
        self.endpoints: list[Endpoint] = [parse_endpoint(e, self.tls) for e in endpoints]
        self.timeout = timeout
        self.dial_timeout = dial_timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, _Stubs] = {}
        self._primary: str | None = None
        self._lock = threading.Lock()
        # clientv3 authenticates only when both are non-empty; the token then rides on every
        # call as the ``token`` metadata (etcd's rpctypes.TokenFieldNameGRPC).
        self._credentials = (user, password) if user and password else None
        self._token: str | None = None
        self._authenticated = False

    # -- plumbing -----------------------------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            self._stubs.clear()

    def _endpoint(self, text: str | None) -> Endpoint:
        if text is None:
            return self._pick()
        for ep in self.endpoints:
            if ep.text == text or ep.target == text:
                return ep
        return parse_endpoint(text, self.tls)

    def _pick(self) -> Endpoint:
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        if self._primary is None:
            chosen = self.endpoints[0]
            share = max(self.dial_timeout / len(self.endpoints), 0.1)
            for ep in self.endpoints:
                try:
                    grpc.channel_ready_future(self._channel(ep)).result(timeout=share)
                except grpc.FutureTimeoutError:
                    continue
                chosen = ep
                break
            self._primary = chosen.text
        return self._endpoint(self._primary)

    def _channel(self, ep: Endpoint) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(ep.text)
            if ch is None:
                ch = open_channel(ep, self.tls)
                if self._credentials is not None:
                    ch = grpc.intercept_channel(ch, TokenInterceptor(lambda: self._token))
                self._channels[ep.text] = ch
            return ch

    def authenticate(self) -> str | None:
        """Get an auth token for ``user``/``password`` (clientv3's getToken), once.

        Bounded by the dial timeout, as in clientv3. A server with auth disabled answers
        ``authentication is not enabled``: like clientv3 the client then goes on without a token.
        Returns the token (None without credentials or with auth disabled).
        """
        if self._credentials is None or self._authenticated:
            return self._token
        user, password = self._credentials
        stub = rpc_pb2_grpc.AuthStub(self._channel(self._pick()))
        try:
            resp = self._call(stub.Authenticate, rpc_pb2.AuthenticateRequest(name=user, password=password),
                              timeout=self.dial_timeout)
        except ClientError as exc:
            if exc.message != ERR_AUTH_NOT_ENABLED:
                raise
            self._token = None
        else:
            self._token = resp.token
        self._authenticated = True
        return self._token

    def stubs(self, endpoint: str | None = None) -> _Stubs:
        if self._credentials is not None and not self._authenticated:
            self.authenticate()
        ep = self._endpoint(endpoint)
        ch = self._channel(ep)
        with self._lock:
            st = self._stubs.get(ep.text)
            if st is None:
                st = self._stubs[ep.text] = _Stubs(ch)
            return st

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None,
              metadata: Iterable[tuple[str, str]] | None = None) -> Any:
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout,
                          wait_for_ready=True, metadata=metadata)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
        if self._credentials is None or error.message not in REFRESH_TOKEN_ERRORS or not self._authenticated:
            raise error
        # clientv3: the token expired, went to another member, or auth changed: log in again
        # and retry once (the interceptor reads the new token).
        self._authenticated = False
        self.authenticate()
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout,
                          wait_for_ready=True, metadata=metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def unary(self, path: str, request: Any, reply_type: type, endpoint: str | None = None) -> Any:
        """One unary call by gRPC path (securekv's own services, which have no generated stubs)."""
        if self._credentials is not None and not self._authenticated:
            self.authenticate()
        method = self._channel(self._endpoint(endpoint)).unary_unary(
            path, request_serializer=type(request).SerializeToString, response_deserializer=reply_type.FromString)
        return self._call(method, request)

    # -- KV -----------------------------------------------------------------------------
    def put(self, key: bytes | str, value: bytes | str = b"", *, lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False) -> rpc_pb2.PutResponse:
        req = rpc_pb2.PutRequest(key=b(key), value=b(value), lease=lease, prev_kv=prev_kv,
                                 ignore_value=ignore_value, ignore_lease=ignore_lease)
        return self._call(self.stubs().kv.Put, req)

    def get(self, key: bytes | str, range_end: bytes | str | None = None, **opts: Any) -> rpc_pb2.RangeResponse:
        """Range. Options: prefix, from_key, limit, revision, sort_order, sort_target,
        serializable, keys_only, count_only, min/max_mod_revision, min/max_create_revision."""
        return self._call(self.stubs().kv.Range, range_request(key, range_end, **opts))

    def delete(self, key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False) -> rpc_pb2.DeleteRangeResponse:
        return self._call(self.stubs().kv.DeleteRange, delete_request(key, range_end, prefix=prefix,
                                                                       from_key=from_key, prev_kv=prev_kv))

    def txn(self, compare: Sequence[rpc_pb2.Compare] = (), success: Sequence[rpc_pb2.RequestOp] = (),
            failure: Sequence[rpc_pb2.RequestOp] = ()) -> rpc_pb2.TxnResponse:
        req = rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))
        return self._call(self.stubs().kv.Txn, req)

    def compact(self, revision: int, *, physical: bool = False) -> rpc_pb2.CompactionResponse:
        return self._call(self.stubs().kv.Compact, rpc_pb2.CompactionRequest(revision=revision, physical=physical))

    # -- watch --------------------------------------------------------------------------
    def watch(self, key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
              from_key: bool = False, start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False, filters: Sequence[int] = ()) -> "_watch.Watch":
        """Open a watch on its own stream; iterate it for responses, ``cancel()`` to stop."""
        k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
        create = rpc_pb2.WatchCreateRequest(key=k, range_end=end, start_revision=start_revision,
                                            prev_kv=prev_kv, progress_notify=progress_notify,
                                            filters=list(filters))
        return _watch.Watch(self.stubs().watch, create, timeout=self.timeout)

    # -- leases -------------------------------------------------------------------------
    def lease_grant(self, ttl: int, lease_id: int = 0) -> rpc_pb2.LeaseGrantResponse:
        return self._call(self.stubs().lease.LeaseGrant, rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease_id))

    def lease_revoke(self, lease_id: int) -> rpc_pb2.LeaseRevokeResponse:
        return self._call(self.stubs().lease.LeaseRevoke, rpc_pb2.LeaseRevokeRequest(ID=lease_id))

    def lease_timetolive(self, lease_id: int, *, keys: bool = False) -> rpc_pb2.LeaseTimeToLiveResponse:
        return self._call(self.stubs().lease.LeaseTimeToLive,
                          rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id, keys=keys))

    def leases(self) -> rpc_pb2.LeaseLeasesResponse:
        return self._call(self.stubs().lease.LeaseLeases, rpc_pb2.LeaseLeasesRequest())

    def lease_keepalive_once(self, lease_id: int) -> rpc_pb2.LeaseKeepAliveResponse:
        """One renewal; a lease that is gone raises ``etcdserver: requested lease not found``."""
        return keepalive_once(self.stubs().lease, lease_id, self.timeout)

    def lease_keepalive(self, lease_id: int) -> KeepAlive:
        """Renew every TTL/3 on one stream until the lease is gone or ``close()`` is called.

        Iterate the returned object for each LeaseKeepAliveResponse.
        """
        return KeepAlive(self.stubs().lease, lease_id)

    # -- lock / election (server-side recipes, v3lock / v3election) ---------------------
    def lock(self, name: bytes | str, lease: int, timeout: float | None = None) -> v3lock_pb2.LockResponse:
        """Block until the lock ``name`` is held under ``lease``; returns the owner key."""
        return self._call(self.stubs().lock.Lock, v3lock_pb2.LockRequest(name=b(name), lease=lease),
                          timeout=timeout)

    def unlock(self, key: bytes | str) -> v3lock_pb2.UnlockResponse:
        return self._call(self.stubs().lock.Unlock, v3lock_pb2.UnlockRequest(key=b(key)))

    def campaign(self, name: bytes | str, lease: int, value: bytes | str,
                 timeout: float | None = None) -> v3election_pb2.CampaignResponse:
        """Block until elected leader of ``name``; the response's ``leader`` identifies us."""
        req = v3election_pb2.CampaignRequest(name=b(name), lease=lease, value=b(value))
        return self._call(self.stubs().election.Campaign, req, timeout=timeout)

    def proclaim(self, leader: v3election_pb2.LeaderKey, value: bytes | str) -> v3election_pb2.ProclaimResponse:
        return self._call(self.stubs().election.Proclaim, v3election_pb2.ProclaimRequest(leader=leader, value=b(value)))

    def leader(self, name: bytes | str) -> v3election_pb2.LeaderResponse:
        return self._call(self.stubs().election.Leader, v3election_pb2.LeaderRequest(name=b(name)))

    def resign(self, leader: v3election_pb2.LeaderKey) -> v3election_pb2.ResignResponse:
        return self._call(self.stubs().election.Resign, v3election_pb2.ResignRequest(leader=leader))

    def observe(self, name: bytes | str) -> "_watch.Observe":
        """Iterate LeaderResponses: the current leader, then each change; ``cancel()`` stops."""
        call = self.stubs().election.Observe(v3election_pb2.LeaderRequest(name=b(name)), wait_for_ready=True)
        return _watch.Observe(call)

    # -- cluster / maintenance ----------------------------------------------------------
    def member_list(self) -> rpc_pb2.MemberListResponse:
        return self._call(self.stubs().cluster.MemberList, rpc_pb2.MemberListRequest())

    def member_add(self, peer_urls: Sequence[str], *, learner: bool = False) -> rpc_pb2.MemberAddResponse:
        _check_urls(peer_urls)
        return self._call(self.stubs().cluster.MemberAdd,
                          rpc_pb2.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner))

    def member_remove(self, member_id: int) -> rpc_pb2.MemberRemoveResponse:
        return self._call(self.stubs().cluster.MemberRemove, rpc_pb2.MemberRemoveRequest(ID=member_id))

    def member_update(self, member_id: int, peer_urls: Sequence[str]) -> rpc_pb2.MemberUpdateResponse:
        _check_urls(peer_urls)
        return self._call(self.stubs().cluster.MemberUpdate,
                          rpc_pb2.MemberUpdateRequest(ID=member_id, peerURLs=list(peer_urls)))

    def member_promote(self, member_id: int) -> rpc_pb2.MemberPromoteResponse:
        return self._call(self.stubs().cluster.MemberPromote, rpc_pb2.MemberPromoteRequest(ID=member_id))

    def move_leader(self, target_id: int, endpoint: str | None = None) -> rpc_pb2.MoveLeaderResponse:
        """Transfer leadership to ``target_id``; must be sent to the current leader's endpoint."""
        return self._call(self.stubs(endpoint).maintenance.MoveLeader, rpc_pb2.MoveLeaderRequest(targetID=target_id))

    def status(self, endpoint: str | None = None) -> rpc_pb2.StatusResponse:
        return self._call(self.stubs(endpoint).maintenance.Status, rpc_pb2.StatusRequest())

    def hashkv(self, endpoint: str | None = None, revision: int = 0) -> rpc_pb2.HashKVResponse:
        return self._call(self.stubs(endpoint).maintenance.HashKV, rpc_pb2.HashKVRequest(revision=revision))

    def defragment(self, endpoint: str | None = None) -> rpc_pb2.DefragmentResponse:
        return self._call(self.stubs(endpoint).maintenance.Defragment, rpc_pb2.DefragmentRequest())

    def alarm_list(self) -> rpc_pb2.AlarmResponse:
        return self._call(self.stubs().maintenance.Alarm, rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET))

    def alarm_disarm(self) -> rpc_pb2.AlarmResponse:
        """Deactivate every active alarm (clientv3 AlarmDisarm with an empty member: all)."""
        listed = self.alarm_list()
        resp = rpc_pb2.AlarmResponse()
        resp.header.CopyFrom(listed.header)
        for alarm in listed.alarms:
            req = rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.DEACTIVATE, memberID=alarm.memberID,
                                       alarm=alarm.alarm)
            resp = self._call(self.stubs().maintenance.Alarm, req)
        return resp

    def snapshot_save(self, path: str, progress: Callable[[int, int], None] | None = None,
                      timeout: float | None = None, encryption: Encryption | None = None) -> int:
        """Stream the backend snapshot to ``path`` atomically; returns its size in bytes.

        ``progress(received, total)`` is called per chunk. The trailing SHA-256 is verified
        before the file is renamed into place. With ``encryption`` (a
        ``securekv.client.snapshot.Encryption``) the file is sealed as it arrives.
        """
        return save_snapshot(self.stubs().maintenance, path, progress=progress, timeout=timeout,
                             encryption=encryption)


    # -- auth (etcd's Auth service) ------------------------------------------------------
    def auth_enable(self) -> rpc_pb2.AuthEnableResponse:
        return self._call(self.stubs().auth.AuthEnable, rpc_pb2.AuthEnableRequest())

    def auth_disable(self) -> rpc_pb2.AuthDisableResponse:
        return self._call(self.stubs().auth.AuthDisable, rpc_pb2.AuthDisableRequest())

    def user_add(self, name: str, password: str = "", *, no_password: bool = False) -> rpc_pb2.AuthUserAddResponse:
        req = rpc_pb2.AuthUserAddRequest(name=name, password=password)
        req.options.no_password = no_password
        return self._call(self.stubs().auth.UserAdd, req)

    def user_get(self, name: str) -> rpc_pb2.AuthUserGetResponse:
        return self._call(self.stubs().auth.UserGet, rpc_pb2.AuthUserGetRequest(name=name))

    def user_list(self) -> rpc_pb2.AuthUserListResponse:
        return self._call(self.stubs().auth.UserList, rpc_pb2.AuthUserListRequest())

    def user_delete(self, name: str) -> rpc_pb2.AuthUserDeleteResponse:
        return self._call(self.stubs().auth.UserDelete, rpc_pb2.AuthUserDeleteRequest(name=name))

    def user_change_password(self, name: str, password: str) -> rpc_pb2.AuthUserChangePasswordResponse:
        return self._call(self.stubs().auth.UserChangePassword,
                          rpc_pb2.AuthUserChangePasswordRequest(name=name, password=password))

    def user_grant_role(self, user: str, role: str) -> rpc_pb2.AuthUserGrantRoleResponse:
        return self._call(self.stubs().auth.UserGrantRole, rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role))

    def user_revoke_role(self, name: str, role: str) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return self._call(self.stubs().auth.UserRevokeRole, rpc_pb2.AuthUserRevokeRoleRequest(name=name, role=role))

    def role_add(self, name: str) -> rpc_pb2.AuthRoleAddResponse:
        return self._call(self.stubs().auth.RoleAdd, rpc_pb2.AuthRoleAddRequest(name=name))

    def role_get(self, role: str) -> rpc_pb2.AuthRoleGetResponse:
        return self._call(self.stubs().auth.RoleGet, rpc_pb2.AuthRoleGetRequest(role=role))

    def role_list(self) -> rpc_pb2.AuthRoleListResponse:
        return self._call(self.stubs().auth.RoleList, rpc_pb2.AuthRoleListRequest())

    def role_delete(self, role: str) -> rpc_pb2.AuthRoleDeleteResponse:
        return self._call(self.stubs().auth.RoleDelete, rpc_pb2.AuthRoleDeleteRequest(role=role))

    def role_grant_permission(self, name: str, key: bytes | str, range_end: bytes | str,
                              perm_type: str | int) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        """``perm_type``: READ, WRITE, READWRITE (or 0, 1, 2)."""
        from securekv.proto import auth_pb2

        kind = PERMISSION_TYPES[perm_type.upper()] if isinstance(perm_type, str) else perm_type
        perm = auth_pb2.Permission(permType=kind, key=b(key), range_end=b(range_end))
        return self._call(self.stubs().auth.RoleGrantPermission,
                          rpc_pb2.AuthRoleGrantPermissionRequest(name=name, perm=perm))

    def role_revoke_permission(self, role: str, key: bytes | str,
                               range_end: bytes | str = b"") -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return self._call(self.stubs().auth.RoleRevokePermission,
                          rpc_pb2.AuthRoleRevokePermissionRequest(role=role, key=b(key), range_end=b(range_end)))


def _check_urls(urls: Sequence[str]) -> None:
    """clientv3 checks peer URLs before sending (etcd's types.NewURLs, Go's messages)."""
    from securekv.client.gourl import check_peer_urls

    try:
        check_peer_urls(list(urls))
    except ValueError as exc:
        raise ClientError(str(exc)) from None


def range_request(key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
                  from_key: bool = False, limit: int = 0, revision: int = 0, sort_order: str | int = 0,
                  sort_target: str | int = 0, serializable: bool = False, keys_only: bool = False,
                  count_only: bool = False, min_mod_revision: int = 0, max_mod_revision: int = 0,
                  min_create_revision: int = 0, max_create_revision: int = 0) -> rpc_pb2.RangeRequest:
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    order = SORT_ORDERS[sort_order.upper()] if isinstance(sort_order, str) else sort_order
    target = SORT_TARGETS[sort_target.upper()] if isinstance(sort_target, str) else sort_target
    # clientv3: sorting by key ascending is what the server does anyway, so it sends NONE.
    if target == 0 and order == 1:
        order = 0
    return rpc_pb2.RangeRequest(key=k, range_end=end, limit=limit, revision=revision, sort_order=order,
                                sort_target=target, serializable=serializable, keys_only=keys_only,
                                count_only=count_only, min_mod_revision=min_mod_revision,
                                max_mod_revision=max_mod_revision, min_create_revision=min_create_revision,
                                max_create_revision=max_create_revision)


def delete_request(key: bytes | str, range_end: bytes | str | None = None, *, prefix: bool = False,
                   from_key: bool = False, prev_kv: bool = False) -> rpc_pb2.DeleteRangeRequest:
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=prev_kv)


def put_request(key: bytes | str, value: bytes | str = b"", *, lease: int = 0, prev_kv: bool = False,
                ignore_value: bool = False, ignore_lease: bool = False) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(key=b(key), value=b(value), lease=lease, prev_kv=prev_kv,
                              ignore_value=ignore_value, ignore_lease=ignore_lease)


# Txn building blocks ---------------------------------------------------------------------
COMPARE_RESULTS = {"=": rpc_pb2.Compare.EQUAL, ">": rpc_pb2.Compare.GREATER,
                   "<": rpc_pb2.Compare.LESS, "!=": rpc_pb2.Compare.NOT_EQUAL}
COMPARE_TARGETS = {"version": rpc_pb2.Compare.VERSION, "create": rpc_pb2.Compare.CREATE,
                   "mod": rpc_pb2.Compare.MOD, "value": rpc_pb2.Compare.VALUE, "lease": rpc_pb2.Compare.LEASE}
_TARGET_FIELD = {"version": "version", "create": "create_revision", "mod": "mod_revision", "value": "value",
                 "lease": "lease"}


def compare(target: str, key: bytes | str, op: str, value: int | bytes | str,
            range_end: bytes | str = b"") -> rpc_pb2.Compare:
    """``compare("mod", "k", ">", 0)``; ops are =, !=, <, >."""
    if op not in COMPARE_RESULTS:
        raise UsageError(f"Unknown result op {op!r}")
    cmp = rpc_pb2.Compare(result=COMPARE_RESULTS[op], target=COMPARE_TARGETS[target], key=b(key),
                          range_end=b(range_end))
    field = _TARGET_FIELD[target]
    setattr(cmp, field, b(value) if target == "value" else int(value))
    return cmp


def op_put(key: bytes | str, value: bytes | str = b"", **opts: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=put_request(key, value, **opts))


def op_get(key: bytes | str, range_end: bytes | str | None = None, **opts: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=range_request(key, range_end, **opts))


def op_delete(key: bytes | str, range_end: bytes | str | None = None, **opts: Any) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=delete_request(key, range_end, **opts))


__all__ = ["Client", "ClientError", "compare", "op_put", "op_get", "op_delete", "key_range", "prefix_end"]
