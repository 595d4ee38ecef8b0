"""The one error mapper: what a failed call answers, on gRPC and on the JSON gateway.

securekv's errors are :class:`securekv.rpctypes.EtcdError` (a gRPC code *name* and etcd's
byte-exact message). Everything else a handler raises is a bug or an unsupported request,
which etcd answers as Unknown with the error's text. This module turns both into the gRPC
status number + message, and the gateway's HTTP status (grpc-gateway's HTTPStatusFromCode).
No grpcio here: the server speaks gRPC itself (``server/grpcconn.py``).
"""

from __future__ import annotations

# gRPC status code names (as grpc.StatusCode spells them) -> numbers.
CODES: dict[str, int] = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
NAMES: dict[int, str] = {number: name for name, number in CODES.items()}

# grpc-gateway's HTTPStatusFromCode, indexed by gRPC code number.
HTTP_STATUS = [200, 408, 500, 400, 504, 404, 409, 403, 429, 412, 409, 400, 501, 500, 503, 500, 401]

_GO_NAMES = {
    "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


def code_number(name: str) -> int:
    """The gRPC code number of a code name (unknown names are Unknown, 2)."""
    return CODES.get(name, 2)


def status_of(exc: BaseException, method: str = "") -> tuple[int, str, str]:
    """(code number, code name, message) a call of ``method`` (its short name) that raised
    ``exc`` answers with. etcd's lock and election servers pass the KV/Lease layer's errors on
    as plain Go errors: those are Unknown there (``rpctypes.public_code``)."""
    from securekv.rpctypes import EtcdError, public_code

    if isinstance(exc, EtcdError):
        number = code_number(public_code(method, exc.code, exc.message) if method else exc.code)
        return number, NAMES[number], exc.message
    return 2, "UNKNOWN", str(exc) or type(exc).__name__


def http_status(number: int) -> int:
    return HTTP_STATUS[number] if 0 <= number < len(HTTP_STATUS) else 500


def go_status_string(code: str, message: str) -> str:
    """Go's ``rpc error: code = X desc = msg`` form (watch cancel reasons, logs)."""
    return f"rpc error: code = {_GO_NAMES.get(code, 'Unknown')} desc = {message}"


__all__ = ["CODES", "NAMES", "HTTP_STATUS", "code_number", "status_of", "http_status", "go_status_string"]
