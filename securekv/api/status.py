"""Map securekv's EtcdError (gRPC code *names*, exact etcd messages) onto grpc status codes."""

from __future__ import annotations

import grpc

from securekv.rpctypes import EtcdError


def status_code(name: str) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


def abort(context: grpc.ServicerContext, error: EtcdError) -> None:
    """Abort the RPC with etcd's code and byte-exact message (raises, as grpc does)."""
    context.abort(status_code(error.code), error.message)


def go_status_string(error: EtcdError) -> str:
    """Go's ``rpc error: code = X desc = msg`` form, used in watch cancel reasons."""
    go_names = {
        "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
        "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
        "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
        "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
        "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
        "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
    }
    return f"rpc error: code = {go_names.get(error.code, 'Unknown')} desc = {error.message}"
