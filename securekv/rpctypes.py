"""etcd's client-visible errors: exact message strings and their gRPC status codes.

Clients (etcdctl, clientv3) classify errors by the *message text*, so these strings must be
byte-exact. Codes are kept as grpc.StatusCode member names so pure modules need not import
grpc; ``securekv.api`` maps them to real status codes.
"""

from __future__ import annotations

from securekv.errors import PeerError


class EtcdError(PeerError):
    """A request failed the way etcd fails it: gRPC code name + exact message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"EtcdError({self.code!r}, {self.message!r})"


def _e(code: str, message: str) -> EtcdError:
    return EtcdError(code, message)


# Raise copies, not these instances, so tracebacks don't accumulate: ``raise err(ERR_KEY_NOT_FOUND)``.
def err(template: EtcdError) -> EtcdError:
    return EtcdError(template.code, template.message)


def response_too_large(size: int, limit: int) -> EtcdError:
    """A response above ``--max-response-bytes``: grpc-go's text when a server's answer exceeds
    its send limit (etcd's is 2 GiB - 1, so etcd clients know this error from there)."""
    return EtcdError("RESOURCE_EXHAUSTED", f"grpc: trying to send message larger than max ({size} vs. {limit})")


ERR_EMPTY_KEY = _e("INVALID_ARGUMENT", "etcdserver: key is not provided")
ERR_KEY_NOT_FOUND = _e("INVALID_ARGUMENT", "etcdserver: key not found")
ERR_VALUE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: value is provided")
ERR_LEASE_PROVIDED = _e("INVALID_ARGUMENT", "etcdserver: lease is provided")
ERR_TOO_MANY_OPS = _e("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
ERR_DUPLICATE_KEY = _e("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
ERR_COMPACTED = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
ERR_FUTURE_REV = _e("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
ERR_NO_SPACE = _e("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")

ERR_LEASE_NOT_FOUND = _e("NOT_FOUND", "etcdserver: requested lease not found")
ERR_LEASE_EXIST = _e("FAILED_PRECONDITION", "etcdserver: lease already exists")
ERR_LEASE_TTL_TOO_LARGE = _e("OUT_OF_RANGE", "etcdserver: too large lease TTL")

ERR_WATCH_CANCELED = _e("CANCELLED", "etcdserver: watch canceled")

ERR_MEMBER_EXIST = _e("FAILED_PRECONDITION", "etcdserver: member ID already exist")
ERR_PEER_URL_EXIST = _e("FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
ERR_MEMBER_NOT_ENOUGH_STARTED = _e(
    "FAILED_PRECONDITION", "etcdserver: re-configuration failed due to not enough started members"
)
ERR_MEMBER_BAD_URLS = _e("INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
ERR_MEMBER_NOT_FOUND = _e("NOT_FOUND", "etcdserver: member not found")
ERR_MEMBER_NOT_LEARNER = _e("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
ERR_LEARNER_NOT_READY = _e(
    "FAILED_PRECONDITION", "etcdserver: can only promote a learner member which is in sync with leader"
)
ERR_TOO_MANY_LEARNERS = _e("FAILED_PRECONDITION", "etcdserver: too many learner members in cluster")

ERR_REQUEST_TOO_LARGE = _e("INVALID_ARGUMENT", "etcdserver: request is too large")
ERR_TOO_MANY_REQUESTS = _e("RESOURCE_EXHAUSTED", "etcdserver: too many requests")
# securekv's own (etcd has no such limits): concurrent Snapshot RPCs, and the disk they need.
ERR_SNAPSHOT_BUSY = _e("RESOURCE_EXHAUSTED", "etcdserver: too many snapshots in progress, retry later")
ERR_SNAPSHOT_NO_SPACE = _e("RESOURCE_EXHAUSTED", "etcdserver: not enough free disk space for a snapshot")

ERR_ROOT_USER_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not exist")
ERR_ROOT_ROLE_NOT_EXIST = _e("FAILED_PRECONDITION", "etcdserver: root user does not have root role")
ERR_USER_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: user name already exists")
ERR_USER_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: user name is empty")
ERR_USER_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: user name not found")
ERR_ROLE_ALREADY_EXIST = _e("FAILED_PRECONDITION", "etcdserver: role name already exists")
ERR_ROLE_NOT_FOUND = _e("FAILED_PRECONDITION", "etcdserver: role name not found")
ERR_ROLE_EMPTY = _e("INVALID_ARGUMENT", "etcdserver: role name is empty")
ERR_AUTH_FAILED = _e("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
ERR_PERMISSION_DENIED = _e("PERMISSION_DENIED", "etcdserver: permission denied")
ERR_ROLE_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")
ERR_PERMISSION_NOT_GRANTED = _e("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role")
ERR_AUTH_NOT_ENABLED = _e("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
ERR_INVALID_AUTH_TOKEN = _e("UNAUTHENTICATED", "etcdserver: invalid auth token")
ERR_INVALID_AUTH_MGMT = _e("INVALID_ARGUMENT", "etcdserver: invalid auth management")
ERR_AUTH_OLD_REVISION = _e("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
# Raw (untranslated) errors etcd lets through with code Unknown.
ERR_AUTH_RAW_PERMISSION_DENIED = _e("UNKNOWN", "auth: permission denied")
ERR_AUTH_NO_PASSWORD_USER = _e("UNKNOWN", "auth: authentication failed, password was given for no password user")

ERR_NO_LEADER = _e("UNAVAILABLE", "etcdserver: no leader")
ERR_NOT_LEADER = _e("FAILED_PRECONDITION", "etcdserver: not leader")
ERR_LEADER_CHANGED = _e("UNAVAILABLE", "etcdserver: leader changed")
ERR_NOT_CAPABLE = _e("UNAVAILABLE", "etcdserver: not capable")
ERR_STOPPED = _e("UNAVAILABLE", "etcdserver: server stopped")
ERR_TIMEOUT = _e("UNAVAILABLE", "etcdserver: request timed out")
ERR_TIMEOUT_DUE_TO_LEADER_FAIL = _e(
    "UNAVAILABLE", "etcdserver: request timed out, possibly due to previous leader failure"
)
ERR_TIMEOUT_DUE_TO_CONN_LOST = _e("UNAVAILABLE", "etcdserver: request timed out, possibly due to connection lost")
ERR_TIMEOUT_WAIT_APPLIED = _e(
    "UNAVAILABLE", "etcdserver: request timed out, waiting for the applied index took too long"
)
ERR_UNHEALTHY = _e("UNAVAILABLE", "etcdserver: unhealthy cluster")
ERR_CORRUPT = _e("DATA_LOSS", "etcdserver: corrupt cluster")
ERR_LEARNER_NOT_SUPPORTED = _e("UNAVAILABLE", "etcdserver: rpc not supported for learner")
ERR_BAD_LEADER_TRANSFEREE = _e("FAILED_PRECONDITION", "etcdserver: bad leader transferee")

# Watch-stream only (sent as cancel_reason / created+canceled, not as a status).
WATCH_DUPLICATE_ID_REASON = "mvcc: duplicate watch ID provided on the WatchStream"


# etcd's v3lock and v3election servers call the KV/Lease API through an in-process client and
# return its errors as plain Go errors, which gRPC sends as Unknown (HTTP 500 on the gateway)
# with the etcdserver message; only the election's own errors keep their status codes.
LOCK_ELECTION_METHODS = frozenset({"Lock", "Unlock", "Campaign", "Proclaim", "Leader", "Observe", "Resign"})


def public_code(method: str, code: str, message: str) -> str:
    """The gRPC code etcd 3.4 answers ``method``'s error with."""
    if method in LOCK_ELECTION_METHODS and message.startswith("etcdserver: "):
        return "UNKNOWN"
    return code
