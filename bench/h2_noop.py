"""A no-op etcd KV server on securekv's own client transport: the TLS listener, the sans-IO
gRPC connection and the trio pump (server/listener.py, grpcconn.py, grpcpump.py), with a
dispatcher that answers Range/Put at once. What is left between this and ``securekv serve`` is
the work itself (dispatch, the node, the store); what is left between this and the ceiling
probe (a bare h2 loop) is the transport's own cost.

    python3 bench/h2_noop.py --port P --ca CA --cert CERT --key KEY

Run by ``bench/server_bench.py --servers etcd,securekv,noop-h2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.proto import rpc_pb2  # noqa: E402
from securekv.server.grpcpump import Call, GrpcPump  # noqa: E402
from securekv.server.listener import ClientListener  # noqa: E402
from securekv.tlspolicy.contexts import TLSFiles  # noqa: E402
from securekv.tlspolicy.endpoint import ServerTLS  # noqa: E402

HEADER = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)
ANSWERS = {
    "/etcdserverpb.KV/Put": rpc_pb2.PutResponse(header=HEADER).SerializeToString(),
    "/etcdserverpb.KV/Range": rpc_pb2.RangeResponse(header=HEADER).SerializeToString(),
}


class NoopDispatcher:
    def started(self, call: Call) -> None:
        if call.path not in ANSWERS:
            call.fail(12, "unknown method")

    def message(self, call: Call, payload: bytes) -> None:
        call.pump.conn.ignore_input(call.sid)
        call.reply(ANSWERS[call.path])

    def half_closed(self, call: Call) -> None:
        call.fail(2, "EOF")


async def main(opts: argparse.Namespace) -> None:
    tls = ServerTLS(TLSFiles(opts.cert, opts.key, opts.ca, client_cert_auth=True))
    dispatcher = NoopDispatcher()

    async def grpc(stream, identity, live) -> None:
        await GrpcPump(stream, identity, dispatcher).run()

    async def http(stream, identity) -> None:
        pass

    listener = ClientListener(tls, http, grpc, 10.0, 4096)
    await trio.serve_tcp(listener.handle, opts.port, host="127.0.0.1")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    trio.run(main, ap.parse_args())
