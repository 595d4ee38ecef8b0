"""securekv's Python client for the etcd v3 API (works against securekv and etcd).

    from securekv.client import Client
    with Client(["https://127.0.0.1:2379"], cacert="ca.pem", cert="root.pem", key="root-key.pem") as c:
        c.put("k", "v")
        print(c.get("k").kvs[0].value)

The names below are loaded on first use (PEP 562), so the gRPC-free helpers of this package
(``boltread``, ``gourl``, ``printer``; used by ``snapshot status/restore``) import without grpc.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "client", "compare": "client", "key_range": "client", "op_delete": "client", "op_get": "client",
    "op_put": "client", "prefix_end": "client",
    "ClientError": "errors", "SnapshotError": "errors", "WatchCanceled": "errors",
    "KeepAlive": "keepalive", "Session": "keepalive",
    "Observe": "watch", "Watch": "watch", "cancel_error": "watch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
