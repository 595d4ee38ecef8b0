"""A no-op etcd KV servicer on grpcio with grpcio's own mutual TLS: the ceiling of the stack.

securekv's client API is grpcio in CPython, so nothing securekv does can beat what grpcio
alone reaches on the same machine with the same client. Modes:

- ``sync``: ``grpc.server(ThreadPoolExecutor)`` answering Range/Put at once (securekv's shape);
- ``aio``:  ``grpc.aio`` answering at once.

(securekv no longer serves with grpcio: this is kept as the reference the one-thread h2 server
replaced; ``bench/h2_noop.py`` is the same no-op on securekv's own transport.)

    python3 bench/grpc_noop.py --port P --mode sync|aio --ca CA --cert CERT --key KEY

Run by ``bench/server_bench.py --servers etcd,securekv,noop-sync,noop-aio``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402


def credentials(opts: argparse.Namespace) -> grpc.ServerCredentials:
    read = lambda p: Path(p).read_bytes()  # noqa: E731
    return grpc.ssl_server_credentials([(read(opts.key), read(opts.cert))], root_certificates=read(opts.ca),
                                       require_client_auth=True)


def serve_sync(opts: argparse.Namespace) -> None:
    class KV(rpc_pb2_grpc.KVServicer):
        def Range(self, request, context):
            return rpc_pb2.RangeResponse()

        def Put(self, request, context):
            return rpc_pb2.PutResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=1024))
    rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)
    server.add_secure_port(f"127.0.0.1:{opts.port}", credentials(opts))
    server.start()
    server.wait_for_termination()


def serve_aio(opts: argparse.Namespace) -> None:
    class KV(rpc_pb2_grpc.KVServicer):
        async def Range(self, request, context):
            return rpc_pb2.RangeResponse()

        async def Put(self, request, context):
            return rpc_pb2.PutResponse()

    async def main() -> None:
        server = grpc.aio.server()
        rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)
        server.add_secure_port(f"127.0.0.1:{opts.port}", credentials(opts))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["sync", "aio"], default="sync")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    opts = ap.parse_args()
    if opts.mode == "aio":
        serve_aio(opts)
    else:
        serve_sync(opts)


if __name__ == "__main__":
    main()
