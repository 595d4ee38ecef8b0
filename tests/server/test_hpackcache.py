"""The caching HPACK coders give exactly what hpack gives, block after block (the reference
coders run beside them on the same input; a remembered block must never outlive a table
change)."""

from __future__ import annotations

import random

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from securekv.server.hpackcache import CachingDecoder, CachingEncoder

REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/etcdserverpb.KV/Put"),
           (b":authority", b"127.0.0.1:2379"), (b"content-type", b"application/grpc"),
           (b"user-agent", b"grpc-go/1.26.0"), (b"te", b"trailers")]
OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


def _lists(rng: random.Random) -> list[list[tuple[bytes, bytes]]]:
    """Mostly repeated blocks, some with new literals (insertions and, with a small table,
    evictions), some sensitive."""
    out = []
    for i in range(400):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice([REQUEST, OK, TRAILERS]))
        elif r < 0.8:
            out.append([(b"grpc-status", b"5"), (b"grpc-message", b"key %d not found" % rng.randrange(30))])
        elif r < 0.9:
            out.append([(b"token", b"t%d" % rng.randrange(5)), (b"x-big", b"v" * rng.randrange(1, 300))])
        else:
            out.append([NeverIndexedHeaderTuple(b"authorization", b"secret%d" % rng.randrange(3)), (b"te", b"trailers")])
    return out


def test_encoder_and_decoder_match_hpack_through_insertions_evictions_and_resizes() -> None:
    rng = random.Random(7)
    ours_enc, ref_enc = CachingEncoder(), Encoder()
    ours_dec, ref_dec = CachingDecoder(), Decoder()
    for i, headers in enumerate(_lists(rng)):
        if i % 97 == 96:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice([0, 256, 4096])
            ours_enc.header_table_size = ref_enc.header_table_size = size
        block = ours_enc.encode(list(headers))
        assert block == ref_enc.encode(list(headers)), i
        assert ours_dec.decode(block, raw=True) == ref_dec.decode(block, raw=True), i
        assert list(ours_dec.header_table.dynamic_entries) == list(ref_dec.header_table.dynamic_entries)
        assert list(ours_enc.header_table.dynamic_entries) == list(ref_enc.header_table.dynamic_entries)


def test_sensitive_and_plain_fields_are_not_confused() -> None:
    enc, ref = CachingEncoder(), Encoder()
    plain = [(b"authorization", b"x")]
    sensitive = [NeverIndexedHeaderTuple(b"authorization", b"x")]
    for headers in (sensitive, sensitive, plain, plain, sensitive):
        assert enc.encode(headers) == ref.encode(headers)


def test_a_remembered_result_is_a_fresh_list() -> None:
    dec = CachingDecoder()
    block = Encoder().encode(OK)
    first = dec.decode(block, raw=True)
    first.append((b"mutated", b"1"))
    assert dec.decode(block, raw=True) == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert dec.decode(block, raw=True) == [(b":status", b"200"), (b"content-type", b"application/grpc")]
