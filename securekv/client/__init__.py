"""securekv's Python client for the etcd v3 API (works against securekv and etcd).

    from securekv.client import Client
    with Client(["https://127.0.0.1:2379"], cacert="ca.pem", cert="root.pem", key="root-key.pem") as c:
        c.put("k", "v")
        print(c.get("k").kvs[0].value)
"""

from securekv.client.client import Client, compare, key_range, op_delete, op_get, op_put, prefix_end
from securekv.client.errors import ClientError, SnapshotError, WatchCanceled
from securekv.client.keepalive import KeepAlive, Session
from securekv.client.watch import Observe, Watch, cancel_error

__all__ = [
    "Client", "ClientError", "KeepAlive", "Observe", "Session", "SnapshotError", "Watch", "WatchCanceled",
    "cancel_error", "compare", "key_range", "op_delete", "op_get", "op_put", "prefix_end",
]
