"""CPU time of the sans-IO gRPC connection (server/grpcconn.py) per lone unary call, in process.

Why: under sequential puts the connection's h2 parse and the answer's encoding are the largest
phases of the trio thread after TLS (docs/benchmarks.md). This replays, one call at a time,
the bytes a grpc-go client (etcd's benchmark tool, ``put`` with 1 client) sends, and times
what the server does with them: ``receive_data``, the dispatcher's ``ignore_input``, then
``send_unary`` of a small answer and ``data_to_send``. No sockets, no TLS, no trio.

The call sequence is what the real tool sends (recorded from etcd 3.4's benchmark tool,
grpc-go 1.33.3, against this server): after the preface and SETTINGS, every call arrives in
one read as WINDOW_UPDATE (connection, the size of the previous answer) + PING (grpc-go's BDP
estimator; it sends the window update first) + HEADERS (``:method``, ``:scheme``, ``:path``,
``:authority``, ``content-type``, ``user-agent``, ``te``, ``client-api-version``; all indexed
after the first call: an 8-byte block) + DATA(END_STREAM) with a 274-byte gRPC message.

    python3 bench/grpcconn_bench.py                  # CPU µs per call, min of --rounds
    python3 bench/grpcconn_bench.py --profile        # cProfile of one round, top functions
    python3 bench/grpcconn_bench.py --timeout 5      # add grpc-timeout (a new table entry per call)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from securekv.server.grpcconn import GrpcConnection, MessageReceived  # noqa: E402

PATH = b"/etcdserverpb.KV/Put"
PING_DATA = b"\x02\x04\x10\x10\t\x0e\x07\x07"  # grpc-go's BDP ping payload (constant)
REQUEST = b"\x0a\x08" + b"k" * 8 + b"\x12\x80\x02" + b"v" * 256  # PutRequest key 8 B, value 256 B
ANSWER = b"\x0a\x1a" + b"\x08\x01\x10\x02\x18\x03\x20\x04" + b"\x00" * 18  # ~30-byte PutResponse


def grpc_go_headers(timeout: bytes | None) -> list[tuple[bytes, bytes]]:
    """grpc-go's createHeaderFields order, then etcd clientv3's metadata."""
    headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", PATH),
               (b":authority", b"127.0.0.1:2379"), (b"content-type", b"application/grpc"),
               (b"user-agent", b"grpc-go/1.33.3"), (b"te", b"trailers")]
    if timeout:
        headers.append((b"grpc-timeout", timeout))
    headers.append((b"client-api-version", b"3.4"))
    return headers


def record(calls: int, timeout: float | None) -> tuple[bytes, list[bytes]]:
    """The client's bytes: (preface + SETTINGS + the ACK of the server's, one chunk per call),
    made by an h2 client talking to a real GrpcConnection (so the client's state follows the
    server's answers exactly as it would over a socket)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    server = GrpcConnection()
    server.initiate()
    client.initiate_connection()
    preface = client.data_to_send()
    server.receive_data(preface, 0.0)
    client.receive_data(server.data_to_send())
    preface += client.data_to_send()  # SETTINGS ACK (and nothing else)
    server.receive_data(preface[len(preface) - 9:], 0.0)
    server.data_to_send()
    message = b"\x00" + len(REQUEST).to_bytes(4, "big") + REQUEST
    chunks = []
    last_answer = 0
    for i in range(calls):
        if i:
            client.increment_flow_control_window(last_answer)
            client.ping(PING_DATA)
        sid = client.get_next_available_stream_id()
        # grpc-go sends the time left, in microseconds here: a new value (and a new HPACK
        # table entry) per call.
        left = None if timeout is None else b"%du" % (timeout * 1e6 - i % 997)
        client.send_headers(sid, grpc_go_headers(left))
        client.send_data(sid, message, end_stream=True)
        chunk = client.data_to_send()
        chunks.append(chunk)
        back = drive(server, chunk)
        for ev in client.receive_data(back):
            if isinstance(ev, h2.events.DataReceived):
                last_answer = ev.flow_controlled_length
                client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        client.data_to_send()  # the stream's own window update is not what grpc-go sends: drop
    return preface, chunks


def drive(server: GrpcConnection, chunk: bytes) -> bytes:
    """What the pump and the dispatcher do with one read of a unary call; the bytes out."""
    for ev in server.receive_data(chunk, 1.0):
        if type(ev) is MessageReceived:
            server.ignore_input(ev.stream_id)
            server.send_unary(ev.stream_id, ANSWER)
    server.unsent  # the reader asks whether the input made output
    return server.data_to_send()


def one_round(preface: bytes, chunks: list[bytes]) -> float:
    server = GrpcConnection()
    server.initiate()
    server.receive_data(preface, 0.0)
    server.data_to_send()
    t0 = time.thread_time()  # CPU time: the machine is shared, wall time is not ours
    for chunk in chunks:
        drive(server, chunk)
    return (time.thread_time() - t0) / len(chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=None, help="send grpc-timeout (this many seconds, less a little per call)")
    ap.add_argument("--profile", action="store_true")
    opts = ap.parse_args()
    preface, chunks = record(opts.calls, opts.timeout)
    if opts.profile:
        prof = cProfile.Profile()
        prof.enable()
        one_round(preface, chunks)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    best = min(one_round(preface, chunks) for _ in range(opts.rounds))
    print(f"{best * 1e6:.1f} µs CPU per call (min of {opts.rounds} rounds of {opts.calls} calls; "
          f"{len(chunks[-1])} bytes in, {drive_size(preface, chunks)} bytes out per call)")


def drive_size(preface: bytes, chunks: list[bytes]) -> int:
    server = GrpcConnection()
    server.initiate()
    server.receive_data(preface, 0.0)
    server.data_to_send()
    for chunk in chunks[:-1]:
        drive(server, chunk)
    return len(drive(server, chunks[-1]))


if __name__ == "__main__":
    main()
