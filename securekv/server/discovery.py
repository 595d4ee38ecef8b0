"""Learn the cluster ID of an existing cluster before joining it (``--initial-cluster-state existing``).

A joining member cannot derive the cluster ID: it was fixed when the cluster was founded from
the founders' IDs, and ``--initial-cluster`` now lists a different set. etcd asks a peer over
HTTP; we ask the peer transport itself with a HELLO whose cluster and receiver IDs are 0. The
listener answers ``HELLO_OK(cluster ID, its member ID)`` only to a member of its applied
membership (added with ``member add``) whose certificate names it; and we accept the answer only
from a listener whose certificate names the member ``--initial-cluster`` lists at that URL.
A refusal never carries the ID.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import trio

log = logging.getLogger(__name__)


async def discover_cluster_id(tls: Any, member_id: int, members: Iterable[tuple[str, str]],
                              timeout: float = 5.0) -> int | None:
    """Ask each ``(name, peer URL)`` in turn; the first cluster ID a member tells us, or None."""
    from urllib.parse import urlsplit

    from securekv.errors import PeerError
    from securekv.peer import codec

    for name, url in members:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 2380
        try:
            with trio.fail_after(timeout):
                stream: Any = await trio.open_tcp_stream(host, port)
                try:
                    if tls is not None:
                        ssl_stream = trio.SSLStream(stream, tls.client_context, server_hostname=host)
                        stream = ssl_stream
                        await ssl_stream.do_handshake()
                        identity = tls.admit(ssl_stream, url)
                        reason = tls.bind(identity, 1, {1: name})
                        if reason:
                            raise PeerError(f"refusing the certificate of {name} at {url}: {reason}")
                    await stream.send_all(codec.frame(codec.FrameKind.HELLO, codec.encode_hello(0, member_id, 0)))
                    kind, payload = await _read_frame(stream)
                finally:
                    await trio.aclose_forcefully(stream)
        except Exception as exc:
            log.info("cluster ID discovery via %s (%s) failed: %s", url, name, exc)
            continue
        if kind == codec.FrameKind.HELLO_OK:
            _version, cluster, _member = codec.decode_hello_ok(payload)
            if cluster:
                return cluster
        elif kind == codec.FrameKind.REFUSE:
            log.info("cluster ID discovery via %s (%s) refused: %s", url, name, payload.decode(errors="replace"))
    return None


async def _read_frame(stream: Any) -> tuple[int, bytes]:
    from securekv.errors import PeerError
    from securekv.peer import codec

    buf = b""
    while len(buf) < codec.FRAME_HEAD.size:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    size, kind = codec.FRAME_HEAD.unpack_from(buf)
    if size > codec.MAX_FRAME:
        raise PeerError(f"answer of {size} bytes is too large")
    while len(buf) < codec.FRAME_HEAD.size + size:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return kind, buf[codec.FRAME_HEAD.size:codec.FRAME_HEAD.size + size]
