"""Codec: every Raft message field survives a round trip; malformed input is a PeerError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securekv.errors import PeerError
from securekv.peer import decode_message, encode_message
from securekv.peer import codec
from securekv.raft.types import (ConfState, Entry, EntryType, Message, MessageType, Snapshot,
                                 SnapshotMetadata)

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
ids = st.integers(min_value=0, max_value=(1 << 64) - 1)
blobs = st.binary(max_size=64)

entries = st.builds(Entry, term=u64, index=u64, type=st.sampled_from(EntryType), data=blobs)
conf_states = st.builds(ConfState, voters=st.lists(ids, max_size=5), learners=st.lists(ids, max_size=3))
snapshots = st.builds(Snapshot, metadata=st.builds(SnapshotMetadata, index=u64, term=u64, conf_state=conf_states),
                      data=st.binary(max_size=256))
messages = st.builds(
    Message, type=st.sampled_from(MessageType), to=ids, frm=ids, term=u64, log_term=u64, index=u64,
    entries=st.lists(entries, max_size=5).map(tuple), commit=u64, reject=st.booleans(), reject_hint=u64,
    snapshot=st.none() | snapshots, context=blobs,
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(m: Message) -> None:
    assert decode_message(encode_message(m)) == m


@settings(max_examples=100, deadline=None)
@given(st.lists(messages, max_size=6))
def test_batch_round_trip(ms: list[Message]) -> None:
    payload = codec.encode_batch([encode_message(m) for m in ms])
    assert [decode_message(raw) for raw in codec.iter_batch(payload)] == ms


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_truncated_or_extended_input_is_a_peer_error(m: Message, data: st.DataObject) -> None:
    raw = encode_message(m)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(PeerError):
        decode_message(raw[:cut])
    with pytest.raises(PeerError):
        decode_message(raw + b"\0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(raw: bytes) -> None:
    try:
        decode_message(raw)
    except PeerError:
        pass


def test_absurd_entry_count_refused_before_allocating() -> None:
    raw = bytearray(encode_message(Message(MessageType.APP, to=1, frm=2)))
    raw[-4:] = (0xFFFFFFFF).to_bytes(4, "big")  # n_entries is the last header field
    with pytest.raises(PeerError, match="entries cannot fit"):
        decode_message(bytes(raw))


def test_unknown_type_refused() -> None:
    raw = bytearray(encode_message(Message(MessageType.APP)))
    raw[0] = 200
    with pytest.raises(PeerError, match="unknown message type 200"):
        decode_message(bytes(raw))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=3000), st.integers(min_value=1, max_value=700))
def test_chunks_reassemble(payload: bytes, size: int) -> None:
    from securekv.peer.transport import _Reassembler

    r = _Reassembler(max_bytes=4000)
    out = None
    frames = list(codec.chunk_frames(9, codec.FrameKind.CALL, payload, chunk=size))
    for i, f in enumerate(frames):
        got = r.feed(f[codec.FRAME_HEAD.size:])
        assert (got is None) == (i < len(frames) - 1)
        out = got
    assert out == (codec.FrameKind.CALL, payload)


def test_reassembly_size_cap() -> None:
    from securekv.peer.transport import _Reassembler

    r = _Reassembler(max_bytes=100)
    first = next(codec.chunk_frames(1, codec.FrameKind.MSGS, b"x" * 101, chunk=10))
    with pytest.raises(PeerError, match="limit is 100 bytes"):
        r.feed(first[codec.FRAME_HEAD.size:])


def test_hello_round_trip_and_magic() -> None:
    assert codec.decode_hello(codec.encode_hello(5, 1, 2)) == (codec.PROTOCOL_VERSION, 5, 1, 2)
    assert codec.decode_hello_ok(codec.encode_hello_ok(5, 2)) == (codec.PROTOCOL_VERSION, 5, 2)
    with pytest.raises(PeerError, match="not a securekv peer"):
        codec.decode_hello(b"GET " + codec.encode_hello(5, 1, 2)[4:])
