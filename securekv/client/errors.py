"""Client-side errors with the text etcdctl (clientv3) would print for the same failure.

clientv3 turns a gRPC status whose message is one of etcd's known error strings into that
bare string (``etcdserver: requested lease not found``); anything else keeps grpc-go's
``rpc error: code = X desc = Y`` form; a client-side deadline is ``context deadline exceeded``.
"""

from __future__ import annotations

import grpc

from securekv import rpctypes
from securekv.errors import PeerError, UsageError

KNOWN_MESSAGES = frozenset(
    v.message for v in vars(rpctypes).values()
    if isinstance(v, rpctypes.EtcdError) and v.message.startswith("etcdserver: ")
)

# grpc-go's code names (codes.Code.String()).
_GO_CODE = {
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

CONTEXT_DEADLINE = "context deadline exceeded"


class ClientError(PeerError):
    """An RPC failed; ``str()`` is etcdctl's text, ``code`` the gRPC status code (or None)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class WatchCanceled(ClientError):
    """The server canceled a watch (e.g. its start revision was compacted)."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, grpc.StatusCode.CANCELLED)
        self.compact_revision = compact_revision


class SnapshotError(ClientError):
    """A snapshot stream was short, cut, or its trailing SHA-256 did not match."""


def from_rpc_error(exc: grpc.RpcError) -> ClientError:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    if details in KNOWN_MESSAGES:
        return ClientError(details, code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ClientError(CONTEXT_DEADLINE, code)
    if code == grpc.StatusCode.CANCELLED and details == "Locally cancelled by application!":
        return ClientError("context canceled", code)
    name = _GO_CODE.get(code, "Unknown")
    return ClientError(f"rpc error: code = {name} desc = {details}", code)


__all__ = ["ClientError", "SnapshotError", "UsageError", "WatchCanceled", "from_rpc_error", "KNOWN_MESSAGES"]
