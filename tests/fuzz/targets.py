"""Fuzz targets: every decoder that reads untrusted or on-disk bytes, with the errors it may raise.

A target takes arbitrary bytes and feeds them to one decoder. The contract (issue 17): a
decoder answers bad input with its *typed* error — the one that says whose fault it is — and
never with anything else (IndexError, struct.error, UnicodeDecodeError, RecursionError, ...),
never hangs, never crashes the process. ``check(target, data)`` runs one input and raises
:class:`Escaped` when the contract breaks.

The same targets run under hypothesis in CI (``test_fuzz.py``, a bounded budget per target) and
under atheris for long runs (``atheris_run.py``, see docs/fuzzing.md). Seeds are valid encodings
made by the code's own encoders, so mutations start from deep inside each format.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable

import attrs

from securekv.client.boltread import BoltError, BoltFile
from securekv.errors import CorruptionError, PeerError, UsageError
from securekv.rpctypes import EtcdError


class Escaped(AssertionError):
    """A decoder raised something other than its typed error."""


@attrs.frozen
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    #: What the target reads, for docs/fuzzing.md.
    reads: str


def check(target: Target, data: bytes) -> None:
    try:
        target.run(data)
    except target.allowed:
        pass
    except Exception as exc:  # the finding
        raise Escaped(f"{target.name}: {type(exc).__name__}: {exc} on input {data[:200]!r}"
                      f"{'...' if len(data) > 200 else ''} ({len(data)} bytes)") from exc


# -- scratch space for the targets that read files ------------------------------------------------

_SCRATCH: Path | None = None


def scratch() -> Path:
    global _SCRATCH
    if _SCRATCH is None or not _SCRATCH.exists():
        _SCRATCH = Path(tempfile.mkdtemp(prefix="securekv-fuzz-"))
    return _SCRATCH


def set_scratch(path: Path) -> None:
    """Where the file-reading targets write their input (atheris runs keep it in their own dir)."""
    global _SCRATCH
    path.mkdir(parents=True, exist_ok=True)
    _SCRATCH = path


def cleanup() -> None:
    if _SCRATCH is not None:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


def _file(name: str, data: bytes) -> Path:
    path = scratch() / name
    path.write_bytes(data)
    return path


# -- WAL ----------------------------------------------------------------------------------------

def _wal_records(data: bytes) -> object:
    from securekv.storage import records as rec

    decoders = (rec.decode_entry, rec.decode_hard_state, rec.decode_snapshot, rec.decode_metadata, rec.decode_seed)
    if not data:
        return None
    return decoders[data[0] % len(decoders)](data[1:])


def _wal_seeds() -> list[bytes]:
    from securekv.storage import records as rec

    return [b"\0" + rec.encode_entry(rec.WalEntry(7, 3, b"payload", 1)),
            b"\1" + rec.encode_hard_state(rec.HardState(3, 2, 7)),
            b"\2" + rec.encode_snapshot(rec.SnapshotMarker(9, 3, (1, 2, 3), (4,))),
            b"\3" + rec.encode_metadata(rec.Metadata(11, 12, b"extra")),
            b"\4" + rec.encode_seed(1)]


def _wal_segment(data: bytes) -> object:
    """The whole reader over one segment file holding ``data`` (a torn tail is repaired)."""
    from securekv.storage import WAL
    from securekv.storage.wal import segment_name

    directory = scratch() / "wal"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    (directory / segment_name(1, 1)).write_bytes(data)
    wal, result = WAL.open(directory)
    wal.close()
    return result


def _segment_seeds() -> list[bytes]:
    from securekv.storage import WAL, HardState, Metadata, SnapshotMarker, WalEntry
    from securekv.storage.wal import segment_name

    directory = scratch() / "seed-wal"
    shutil.rmtree(directory, ignore_errors=True)
    wal = WAL.create(directory, Metadata(1, 2, b"x"))
    wal.append([WalEntry(i, 1, f"e{i}".encode() * i) for i in range(1, 6)], HardState(1, 1, 4))
    wal.save_snapshot(SnapshotMarker(3, 1, (1,)))
    wal.append([WalEntry(4, 2, b"replaced")], HardState(2, 1, 4))
    wal.close()
    data = (directory / segment_name(1, 1)).read_bytes()
    shutil.rmtree(directory, ignore_errors=True)
    return [data]


# -- peer protocol ------------------------------------------------------------------------------

def _peer_message(data: bytes) -> object:
    from securekv.peer.codec import decode_message

    return decode_message(data)


def _peer_message_seeds() -> list[bytes]:
    from securekv.peer.codec import encode_message
    from securekv.raft.types import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata

    app = Message(MessageType.APP, to=2, frm=1, term=3, log_term=2, index=5,
                  entries=(Entry(3, 6, EntryType.NORMAL, b"put"), Entry(3, 7, EntryType.CONF_CHANGE, b"cc")),
                  commit=5, context=b"ctx")
    snap = Message(MessageType.SNAP, to=2, frm=1, term=3,
                   snapshot=Snapshot(SnapshotMetadata(9, 3, ConfState((1, 2), (3,))), b"sqlite bytes"))
    resp = Message(MessageType.APP_RESP, to=1, frm=2, term=3, index=7, reject=True, reject_hint=4)
    return [encode_message(m) for m in (app, snap, resp)]


def _peer_frames(data: bytes) -> object:
    from securekv.peer import codec

    if not data:
        return None
    payload = data[1:]
    kind = data[0] % 6
    if kind == 0:
        return codec.decode_hello(payload)
    if kind == 1:
        return codec.decode_hello_ok(payload)
    if kind == 2:
        tid, flags, inner, total, piece = codec.decode_chunk(payload)
        return bytes(piece)
    if kind == 3:
        return codec.decode_call(payload)
    if kind == 4:
        return codec.decode_reply(payload)
    return [codec.decode_message(m) for m in codec.iter_batch(payload)]


def _peer_frame_seeds() -> list[bytes]:
    from securekv.peer import codec

    batch = codec.encode_batch(_peer_message_seeds())
    chunk = next(codec.chunk_frames(7, codec.FrameKind.MSGS, batch, chunk=16))[codec.FRAME_HEAD.size:]
    return [b"\0" + codec.encode_hello(5, 1, 2), b"\1" + codec.encode_hello_ok(5, 2),
            b"\2" + chunk, b"\3" + codec.encode_call(9, "lease_keepalive", b"\x08\x01"),
            b"\4" + codec.encode_reply(9, codec.REPLY_ERROR, b"etcdserver: no leader"), b"\5" + batch]


# -- bbolt (etcd snapshots) -----------------------------------------------------------------------

def _bolt_status(data: bytes) -> object:
    return BoltFile(data).status()


def _bolt_import(data: bytes) -> object:
    """What ``snapshot restore`` reads: the bbolt check, then every bucket's rows decoded."""
    from securekv.server import etcdimport as imp

    bolt = BoltFile(data)
    if bolt.check():
        return None
    rows = 0
    for name, items in imp.buckets(bolt):
        if name == b"key":
            rows += sum(1 for _ in map(lambda kv: imp.revision_row(*kv), items))
        elif name == b"lease":
            rows += sum(1 for _ in map(lambda kv: imp.lease_row(*kv), items))
        elif name == b"meta":
            imp.compaction_marks(items)
        elif name == b"alarm":
            imp.alarms_of(items)
        elif name in imp._BUCKET_ITEMS:
            imp.auth_items(name, items)
        else:
            rows += sum(1 for _ in items)
    return rows


def _bolt_seeds() -> list[bytes]:
    import io

    from securekv.proto import kv_pb2, rpc_pb2
    from securekv.storage.boltwrite import write_bolt

    def rev(main: int, sub: int = 0, tomb: bool = False) -> bytes:
        return struct.pack(">Q1sQ", main, b"_", sub) + (b"t" if tomb else b"")

    keys = [(rev(i), kv_pb2.KeyValue(key=f"k{i}".encode(), value=b"v" * (i % 50), mod_revision=i,
                                     create_revision=2, version=i).SerializeToString()) for i in range(2, 300)]
    keys.append((rev(300, 0, True), kv_pb2.KeyValue(key=b"k2", mod_revision=300).SerializeToString()))
    alarm = rpc_pb2.AlarmMember(memberID=1, alarm=rpc_pb2.NOSPACE).SerializeToString()
    out = io.BytesIO()
    write_bolt(out, [
        (b"alarm", [(alarm, b"")]),
        (b"key", keys),
        (b"lease", [(struct.pack(">q", 7), b"\x08\x07\x10\x3c")]),
        (b"meta", [(b"consistent_index", struct.pack(">Q", 300)),
                   (b"finishedCompactRev", struct.pack(">q", 5) + b"_" + b"\0" * 8)]),
    ])
    return [out.getvalue()]


# -- JSON gateway bodies ----------------------------------------------------------------------------

def _gateway_types() -> list[type]:
    from securekv.api.table import GATEWAY

    return sorted({rpc.request for rpc in GATEWAY.values()}, key=lambda t: t.DESCRIPTOR.full_name)


def _gateway_body(data: bytes) -> object:
    """As the gateway reads a body: one object for a unary route, up to MAX_STREAM_OBJECTS for a
    client stream (the first byte picks the message type and, by its top bit, the limit)."""
    from securekv.api.gateway import MAX_STREAM_OBJECTS, decode_all

    types = _gateway_types()
    if not data:
        return None
    limit = MAX_STREAM_OBJECTS if data[0] & 0x80 else 1
    return decode_all(data[1:], types[(data[0] & 0x7F) % len(types)], limit)


def _gateway_seeds() -> list[bytes]:
    types = [t.DESCRIPTOR.name for t in _gateway_types()]
    bodies = {
        "RangeRequest": {"key": "Zm9v", "range_end": "Zm9w", "limit": "10", "sort_order": "DESCEND"},
        "PutRequest": {"key": "Zm9v", "value": "YmFy", "lease": "7"},
        "TxnRequest": {"compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "YmFy"}],
                       "success": [{"request_put": {"key": "Zm9v", "value": "YmF6"}}],
                       "failure": [{"request_range": {"key": "Zm9v"}}]},
        "WatchRequest": {"create_request": {"key": "Zm9v", "start_revision": "3", "filters": ["NOPUT"]}},
        "LeaseKeepAliveRequest": {"ID": "123"},
    }
    out = []
    for name, body in bodies.items():
        if name in types:
            out.append(bytes([types.index(name)]) + json.dumps(body).encode())
    out.append(bytes([0x80 | types.index("WatchRequest")])
               + b'{"create_request":{"key":"YQ=="}} {"progress_request":{}}')
    return out


# -- YAML config ----------------------------------------------------------------------------------

def _yaml_config(data: bytes) -> object:
    from securekv.config.load import resolve

    path = _file("config.yaml", data)
    return resolve({}, {}, str(path))


def _yaml_seeds() -> list[bytes]:
    return [b"name: m1\ndata-dir: /var/lib/securekv\nlisten-client-urls: https://127.0.0.1:2379\n"
            b"initial-cluster: m1=https://127.0.0.1:2380\ninitial-advertise-peer-urls: https://127.0.0.1:2380\n"
            b"heartbeat-interval: 100\nelection-timeout: 1000\nsnapshot-count: 10000\n"
            # the embedded default on the client port (its CA also issues the --peer-auto-tls
            # certificate): a self-signed auto-tls pair without a CA is refused since issue 12
            b"client-transport-security:\n  client-cert-auth: true\n"
            b"peer-transport-security:\n  auto-tls: true\nlog-level: info\nquota-backend-bytes: 0\n"]


# -- cfssl JSON -------------------------------------------------------------------------------------

def _cfssl_csr(data: bytes) -> object:
    from securekv.pki.cfssl import load_csr

    return load_csr(_file("csr.json", data))


def _cfssl_config(data: bytes) -> object:
    from securekv.pki.cfssl import load_config

    return load_config(_file("ca-config.json", data))


def _csr_seeds() -> list[bytes]:
    return [json.dumps({"CN": "etcd", "hosts": ["127.0.0.1", "etcd.local"], "key": {"algo": "ecdsa", "size": 256},
                        "names": [{"C": "US", "ST": "CA", "L": "SF", "O": "ops", "OU": "etcd"}],
                        "ca": {"expiry": "87600h", "pathlen": 1}}).encode()]


def _config_seeds() -> list[bytes]:
    from securekv.pki.cfssl import default_config_json

    cfg = default_config_json()
    cfg["signing"]["profiles"]["ca"] = {"expiry": "43800h", "usages": ["cert sign", "crl sign"],
                                        "ca_constraint": {"is_ca": True, "max_path_len": 0}}
    return [json.dumps(cfg).encode()]


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("wal-records", _wal_records, (CorruptionError,), _wal_seeds,
           "WAL record payloads (entry, hard state, snapshot marker, metadata, crc seed): storage/records.py"),
    Target("wal-segment", _wal_segment, (CorruptionError, UsageError), _segment_seeds,
           "a whole WAL segment file through WAL.open (frames, CRC chain, torn-tail repair): storage/wal.py"),
    Target("peer-message", _peer_message, (PeerError,), _peer_message_seeds,
           "a Raft message from a peer: peer/codec.py decode_message"),
    Target("peer-frames", _peer_frames, (PeerError,), _peer_frame_seeds,
           "peer frames: HELLO, HELLO_OK, CHUNK, CALL, REPLY, MSGS batches: peer/codec.py"),
    Target("bbolt-status", _bolt_status, (BoltError,), _bolt_seeds,
           "an etcd snapshot file for `snapshot status`: client/boltread.py"),
    Target("bbolt-import", _bolt_import, (BoltError, ValueError), _bolt_seeds,
           "an etcd snapshot file for `snapshot restore`: the bbolt check, then every bucket's rows "
           "(server/etcdimport.py; SnapshotImportError is a ValueError)"),
    Target("gateway-json", _gateway_body, (EtcdError,), _gateway_seeds,
           "a JSON gateway request body for each route's message type (api/table.py GATEWAY): api/gateway.py decode_all"),
    Target("yaml-config", _yaml_config, (UsageError,), _yaml_seeds,
           "a --config-file YAML file through config/load.py resolve"),
    Target("cfssl-csr", _cfssl_csr, (UsageError,), _csr_seeds,
           "a cfssl CSR JSON file: pki/cfssl.py load_csr"),
    Target("cfssl-config", _cfssl_config, (UsageError,), _config_seeds,
           "a cfssl signing config JSON file: pki/cfssl.py load_config"),
]}

__all__ = ["TARGETS", "Target", "check", "Escaped", "cleanup", "scratch"]
