"""etcd's grpc-gateway: the v3 API as JSON over HTTP/1.1 on the client port (``/v3/...``).

Why: etcd 3.4 serves it on every client URL and real clients depend on it (etcd3gw, used by
OpenStack; curl scripts in runbooks). It is a translation layer only: the JSON body becomes the
same protobuf request the gRPC path builds, the caller gets its identity from the same TLS
connection (or an ``Authorization`` token) and passes the same :class:`AuthGate`, and the same
trio-side server methods answer. JSON follows grpc-gateway with ``OrigName``: proto field names,
64-bit integers as strings, bytes as base64, enums by name, default values left out; unknown
request fields are ignored, an empty body is an empty request.

Streams (watch, lease keepalive, snapshot, election observe) answer with one
``{"result": ...}`` line per message. The request body of a client stream is read whole before
the first response, as curl and etcd3gw send it (one request object, or several in a row).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import attrs
import trio
from google.protobuf import json_format

from securekv.api.goerrors import check_bytes_fields, json_error
from securekv.rpctypes import public_code
from securekv.api.auth_gate import AuthGate, Caller
from securekv.api.status import status_code
from securekv.proto import rpc_pb2, v3election_pb2, v3lock_pb2
from securekv.rpctypes import EtcdError
from securekv.server.frontdoor import Identity

log = logging.getLogger(__name__)

# The path prefixes etcd 3.4 serves (v3alpha went away in 3.4).
PREFIXES = ("/v3/", "/v3beta/")

# grpc-gateway's HTTPStatusFromCode, indexed by gRPC code number.
HTTP_STATUS = [200, 408, 500, 400, 504, 404, 409, 403, 429, 412, 409, 400, 501, 500, 503, 500, 401]
HTTP_REASON = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 412: "Precondition Failed",
    413: "Request Entity Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
}


@attrs.frozen
class Route:
    rpc: str  # the RPC's name, as the auth gate and the metrics know it
    request: type
    kind: str  # "cb": fn(req, caller, reply); "call": await fn(req, caller); "stream": session
    target: str  # the EtcdServer attribute
    client_stream: bool = False


def _routes() -> dict[str, Route]:
    r, lk, el = rpc_pb2, v3lock_pb2, v3election_pb2
    table = {
        "kv/range": Route("Range", r.RangeRequest, "cb", "range_cb"),
        "kv/put": Route("Put", r.PutRequest, "cb", "put_cb"),
        "kv/deleterange": Route("DeleteRange", r.DeleteRangeRequest, "cb", "delete_range_cb"),
        "kv/txn": Route("Txn", r.TxnRequest, "cb", "txn_cb"),
        "kv/compaction": Route("Compact", r.CompactionRequest, "call", "compact"),
        "watch": Route("Watch", r.WatchRequest, "stream", "open_watch", client_stream=True),
        "lease/grant": Route("LeaseGrant", r.LeaseGrantRequest, "call", "lease_grant"),
        "lease/revoke": Route("LeaseRevoke", r.LeaseRevokeRequest, "call", "lease_revoke"),
        "lease/keepalive": Route("LeaseKeepAlive", r.LeaseKeepAliveRequest, "stream", "open_keepalive",
                                 client_stream=True),
        "lease/timetolive": Route("LeaseTimeToLive", r.LeaseTimeToLiveRequest, "call", "lease_time_to_live"),
        "lease/leases": Route("LeaseLeases", r.LeaseLeasesRequest, "call", "lease_leases"),
        "cluster/member/add": Route("MemberAdd", r.MemberAddRequest, "call", "member_add"),
        "cluster/member/remove": Route("MemberRemove", r.MemberRemoveRequest, "call", "member_remove"),
        "cluster/member/update": Route("MemberUpdate", r.MemberUpdateRequest, "call", "member_update"),
        "cluster/member/list": Route("MemberList", r.MemberListRequest, "call", "member_list"),
        "cluster/member/promote": Route("MemberPromote", r.MemberPromoteRequest, "call", "member_promote"),
        "maintenance/alarm": Route("Alarm", r.AlarmRequest, "call", "alarm"),
        "maintenance/status": Route("Status", r.StatusRequest, "call", "status"),
        "maintenance/defragment": Route("Defragment", r.DefragmentRequest, "call", "defragment"),
        # etcd binds Hash and HashKV to the same path; the first binding (Hash) answers.
        "maintenance/hash": Route("Hash", r.HashRequest, "call", "hash"),
        "maintenance/snapshot": Route("Snapshot", r.SnapshotRequest, "stream", "open_snapshot"),
        "maintenance/transfer-leadership": Route("MoveLeader", r.MoveLeaderRequest, "call", "move_leader"),
        "auth/enable": Route("AuthEnable", r.AuthEnableRequest, "call", "auth_enable"),
        "auth/disable": Route("AuthDisable", r.AuthDisableRequest, "call", "auth_disable"),
        "auth/authenticate": Route("Authenticate", r.AuthenticateRequest, "call", "authenticate"),
        "auth/user/add": Route("UserAdd", r.AuthUserAddRequest, "call", "user_add"),
        "auth/user/get": Route("UserGet", r.AuthUserGetRequest, "call", "user_get"),
        "auth/user/list": Route("UserList", r.AuthUserListRequest, "call", "user_list"),
        "auth/user/delete": Route("UserDelete", r.AuthUserDeleteRequest, "call", "user_delete"),
        "auth/user/changepw": Route("UserChangePassword", r.AuthUserChangePasswordRequest, "call",
                                    "user_change_password"),
        "auth/user/grant": Route("UserGrantRole", r.AuthUserGrantRoleRequest, "call", "user_grant_role"),
        "auth/user/revoke": Route("UserRevokeRole", r.AuthUserRevokeRoleRequest, "call", "user_revoke_role"),
        "auth/role/add": Route("RoleAdd", r.AuthRoleAddRequest, "call", "role_add"),
        "auth/role/get": Route("RoleGet", r.AuthRoleGetRequest, "call", "role_get"),
        "auth/role/list": Route("RoleList", r.AuthRoleListRequest, "call", "role_list"),
        "auth/role/delete": Route("RoleDelete", r.AuthRoleDeleteRequest, "call", "role_delete"),
        "auth/role/grant": Route("RoleGrantPermission", r.AuthRoleGrantPermissionRequest, "call",
                                 "role_grant_permission"),
        "auth/role/revoke": Route("RoleRevokePermission", r.AuthRoleRevokePermissionRequest, "call",
                                  "role_revoke_permission"),
        "lock/lock": Route("Lock", lk.LockRequest, "call", "lock"),
        "lock/unlock": Route("Unlock", lk.UnlockRequest, "call", "unlock"),
        "election/campaign": Route("Campaign", el.CampaignRequest, "call", "campaign"),
        "election/proclaim": Route("Proclaim", el.ProclaimRequest, "call", "proclaim"),
        "election/leader": Route("Leader", el.LeaderRequest, "call", "leader"),
        "election/observe": Route("Observe", el.LeaderRequest, "stream", "open_observe"),
        "election/resign": Route("Resign", el.ResignRequest, "call", "resign"),
    }
    # etcd's additional bindings for the lease calls.
    for name in ("revoke", "timetolive", "leases"):
        table["kv/lease/" + name] = table["lease/" + name]
    return table


ROUTES = _routes()


def route_for(path: str) -> Route | None:
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return ROUTES.get(path[len(prefix):])
    return None


def is_gateway_path(path: str) -> bool:
    return path.startswith(PREFIXES)


@attrs.frozen
class Reply:
    """A whole unary answer."""

    status: int
    body: bytes


class StreamReply:
    """A streaming answer: the HTTP layer pulls encoded lines until ``next_line`` gives None."""

    def __init__(self, session: Any, route: Route, observe: Callable[[str], None]) -> None:
        self.session = session
        self.route = route
        self._observe = observe
        self.code = "OK"
        self.lines = 0
        self.ended = False
        # The HTTP status of a stream that fails before its first message (grpc-gateway's rule).
        self.error_status = 0

    async def next_line(self) -> bytes | None:
        if self.ended:
            return None
        try:
            message = await self.session.next()
        except EtcdError as exc:
            self.code, self.ended = exc.code, True
            if not self.lines:
                self.error_status = HTTP_STATUS[_number(exc.code)]
            return stream_error(exc.code, exc.message)
        if message is None:
            self.ended = True
            return None
        self.lines += 1
        return b'{"result":' + encode(message) + b"}\n"

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            self._observe(self.code)


def _number(code: str) -> int:
    """The gRPC code number of an EtcdError code name (unknown names are Unknown, 2)."""
    return status_code(code).value[0]


def encode(message: Any) -> bytes:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True),
                      separators=(",", ":")).encode()


def error_body(code: str, message: str) -> tuple[int, bytes]:
    number = _number(code)
    body = json.dumps({"error": message, "message": message, "code": number}, separators=(",", ":"))
    return HTTP_STATUS[number], body.encode()


def stream_error(code: str, message: str) -> bytes:
    number = _number(code)
    status = HTTP_STATUS[number]
    chunk = {"error": {"grpc_code": number, "http_code": status, "message": message,
                       "http_status": HTTP_REASON.get(status, "")}}
    return json.dumps(chunk, separators=(",", ":")).encode() + b"\n"


def decode_all(body: bytes, message_type: type) -> list[Any]:
    """Every JSON object in the body, in order (an empty body is one empty request)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EtcdError("INVALID_ARGUMENT", f"request body is not UTF-8: {exc}") from None
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:  # Go's wording, as etcd's gateway answers (api/goerrors.py)
            raise EtcdError("INVALID_ARGUMENT", json_error(text, exc)) from None
        except RecursionError:  # found by fuzzing: [[[[... nested past the interpreter's limit
            raise EtcdError("INVALID_ARGUMENT", "invalid JSON in request body: nested too deeply") from None
        try:
            bad_base64 = check_bytes_fields(value, message_type.DESCRIPTOR)
        except RecursionError:
            raise EtcdError("INVALID_ARGUMENT", "invalid JSON in request body: nested too deeply") from None
        if bad_base64:
            raise EtcdError("INVALID_ARGUMENT", bad_base64)
        message = message_type()
        try:
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
            raise EtcdError("INVALID_ARGUMENT", f"invalid request: {exc}") from None
        out.append(message)
    return out or [message_type()]


class Gateway:
    def __init__(self, server: Any, gate: AuthGate, metrics: Any | None = None) -> None:
        self.server = server
        self.gate = gate
        self.metrics = metrics

    def _observer(self, rpc: str, start: float) -> Callable[[str], None]:
        if self.metrics is not None:
            self.metrics.started(rpc)

        def observe(code: str) -> None:
            if self.metrics is not None:
                self.metrics.observe(rpc, code, time.monotonic() - start)
        return observe

    async def call(self, route: Route, body: bytes, identity: Identity, token: str) -> Reply | StreamReply:
        """Answer one request; never raises for a request's own failure (that is an error body)."""
        start = time.monotonic()
        observe = self._observer(route.rpc, start)
        try:
            requests = decode_all(body, route.request)
            if not route.client_stream:
                requests = requests[:1]
            caller = self.gate.caller_for(identity, token)
            # As on the gRPC path: streams are authorised when opened, before any request is read.
            # Client streams (watch, keepalive) are authorised per message by their session.
            self.gate.authorize(caller, route.rpc, None if route.client_stream else requests[0])
            fn = getattr(self.server, route.target)
            if route.kind == "cb":
                response = await _run_cb(fn, requests[0], caller)
            elif route.kind == "call":
                response = await fn(requests[0], caller)
            else:
                return await self._open_stream(route, fn, requests, caller, observe)
        except EtcdError as exc:
            code = public_code(route.rpc, exc.code, exc.message)
            observe(code)
            if route.kind == "stream":  # grpc-gateway: a stream failing before its first message
                return Reply(HTTP_STATUS[_number(code)], stream_error(code, exc.message))
            return Reply(*error_body(code, exc.message))
        except trio.Cancelled:
            observe("CANCELLED")
            raise
        except Exception as exc:  # a bug or an unsupported request: etcd answers Unknown
            log.exception("gateway %s failed", route.rpc)
            observe("UNKNOWN")
            return Reply(*error_body("UNKNOWN", str(exc)))
        observe("OK")
        return Reply(200, encode(response))

    async def _open_stream(self, route: Route, fn: Any, requests: list[Any], caller: Caller,
                           observe: Callable[[str], None]) -> StreamReply:
        session = await fn(None if route.client_stream else requests[0], caller)
        reply = StreamReply(session, route, observe)
        if route.client_stream:
            try:
                for request in requests:
                    await session.handle(request)
                await session.half_close()
            except BaseException:
                session.close()
                raise
        return reply


async def _run_cb(fn: Callable[..., None], request: Any, caller: Caller) -> Any:
    """Await a callback-style server method (the gRPC hot path's shape) from a trio task."""
    done = trio.Event()
    result: list[Any] = [None, None]

    def reply(response: Any, error: BaseException | None) -> None:
        result[0], result[1] = response, error
        done.set()

    fn(request, caller, reply)
    await done.wait()
    if result[1] is not None:
        raise result[1]
    return result[0]
