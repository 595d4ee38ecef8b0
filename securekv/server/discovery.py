"""Learn the cluster ID of an existing cluster before joining it (``--initial-cluster-state existing``).

A joining member cannot derive the cluster ID: it was fixed when the cluster was founded from
the founders' IDs, and ``--initial-cluster`` now lists a different set. etcd asks a peer over
HTTP; we ask the peer transport itself: a handshake with cluster ID 0 is refused, and the
refusal names the listener's cluster. The peer's certificate is verified as for any peer
connection, so only a member of our PKI can tell us the ID.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

import trio

log = logging.getLogger(__name__)

_CLUSTER = re.compile(r"to cluster ([0-9a-f]+)\s*$")


async def discover_cluster_id(tls: Any, member_id: int, urls: Iterable[str], timeout: float = 5.0) -> int | None:
    from urllib.parse import urlsplit

    from securekv.peer import codec

    for url in urls:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 2380
        try:
            with trio.fail_after(timeout):
                stream: Any = await trio.open_tcp_stream(host, port)
                try:
                    if tls is not None:
                        ssl_stream = trio.SSLStream(stream, tls.client_context, server_hostname=host)
                        await ssl_stream.do_handshake()
                        tls.check_remote(ssl_stream.getpeercert(binary_form=True))
                        stream = ssl_stream
                    await stream.send_all(codec.frame(codec.FrameKind.HELLO, codec.encode_hello(0, member_id, 0)))
                    buf = b""
                    while len(buf) < codec.FRAME_HEAD.size:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            raise EOFError
                        buf += chunk
                    size, kind = codec.FRAME_HEAD.unpack_from(buf)
                    while len(buf) < codec.FRAME_HEAD.size + size:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            raise EOFError
                        buf += chunk
                    payload = buf[codec.FRAME_HEAD.size:codec.FRAME_HEAD.size + size]
                finally:
                    await trio.aclose_forcefully(stream)
        except Exception as exc:
            log.info("cluster ID discovery via %s failed: %s", url, exc)
            continue
        if kind == codec.FrameKind.REFUSE:
            match = _CLUSTER.search(payload.decode(errors="replace"))
            if match:
                return int(match.group(1), 16)
    return None
