"""A no-op etcd KV servicer on grpcio with grpcio's own mutual TLS: the ceiling of the stack.

securekv's client API is grpcio in CPython, so nothing securekv does can beat what grpcio
alone reaches on the same machine with the same client. Modes:

- ``sync``: ``grpc.server(ThreadPoolExecutor)`` answering Range/Put at once (securekv's shape);
- ``aio``:  ``grpc.aio`` answering at once;
- ``trio``: the sync server handing every call to a trio thread and back, with the same
  one-shot lock hand-off securekv's bridge uses (the price of the crossing alone).

    python3 bench/grpc_noop.py --port P --mode sync|aio|trio --ca CA --cert CERT --key KEY

Run by ``bench/server_bench.py --servers etcd,securekv,noop-sync,noop-aio,noop-trio``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.proto import rpc_pb2, rpc_pb2_grpc  # noqa: E402


def credentials(opts: argparse.Namespace) -> grpc.ServerCredentials:
    read = lambda p: Path(p).read_bytes()  # noqa: E731
    return grpc.ssl_server_credentials([(read(opts.key), read(opts.cert))], root_certificates=read(opts.ca),
                                       require_client_auth=True)


def serve_sync(opts: argparse.Namespace, via_trio: bool) -> None:
    hand_off = _trio_hand_off() if via_trio else None

    class KV(rpc_pb2_grpc.KVServicer):
        def Range(self, request, context):
            return hand_off(rpc_pb2.RangeResponse) if hand_off else rpc_pb2.RangeResponse()

        def Put(self, request, context):
            return hand_off(rpc_pb2.PutResponse) if hand_off else rpc_pb2.PutResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=1024))
    rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)
    server.add_secure_port(f"127.0.0.1:{opts.port}", credentials(opts))
    server.start()
    server.wait_for_termination()


def _trio_hand_off():
    import trio

    from securekv.api.bridge import _ThreadWaiter

    ready = threading.Event()
    tokens: list[trio.lowlevel.TrioToken] = []

    async def main() -> None:
        tokens.append(trio.lowlevel.current_trio_token())
        ready.set()
        await trio.sleep_forever()

    threading.Thread(target=trio.run, args=(main,), daemon=True, name="trio").start()
    ready.wait()
    token = tokens[0]

    def hand_off(make):
        waiter = _ThreadWaiter()
        token.run_sync_soon(lambda: waiter.reply(make(), None))
        return waiter.wait(lambda: False)[0]

    return hand_off


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
    ap.add_argument("--mode", choices=["sync", "aio", "trio"], default="sync")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    opts = ap.parse_args()
    if opts.mode == "aio":
        serve_aio(opts)
    else:
        serve_sync(opts, via_trio=opts.mode == "trio")


if __name__ == "__main__":
    main()
