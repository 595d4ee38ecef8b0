"""The encrypted snapshot format (securekv/snapcrypt/format.py) in-process: round trips, every
kind of tampering, keys, the reader's caps, the documented test vector, an independent reader
written from docs/snapshots.md alone, and a bounded hypothesis fuzz of the decoder."""

from __future__ import annotations

import hashlib
import io
import struct
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securekv.snapcrypt import format as f

KEY = f.KeyFileKey(bytes(range(32)))
OTHER_KEY = f.KeyFileKey(bytes(range(1, 33)))
FAST_PASS = f.Passphrase(b"correct horse battery", log_n=10, r=8, p=1)  # cheap scrypt for tests
CHUNK = 4096  # the smallest allowed: many chunks from small inputs
DOCS = Path(__file__).resolve().parents[2] / "docs" / "snapshots.md"


def counter_random(seed: int = 0):
    """Deterministic 'random' bytes: SHA-256 in counter mode."""
    state = {"n": 0}

    def rnd(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(b"%d/%d" % (seed, state["n"])).digest()
            state["n"] += 1
        return out[:size]

    return rnd


def seal(plain: bytes, source: f.KeySource = KEY, seed: int = 0, cipher: int = f.CIPHER_AES_256_GCM,
         chunk: int = CHUNK, **meta) -> bytes:
    out = io.BytesIO()
    f.encrypt_stream(io.BytesIO(plain), out, f.SnapshotMeta(len(plain), **meta), source, counter_random(seed),
                     cipher=cipher, chunk_size=chunk)
    return out.getvalue()


def unseal(data: bytes, source: f.KeySource = KEY) -> bytes:
    out = io.BytesIO()
    f.decrypt_stream(io.BytesIO(data), out, source)
    return out.getvalue()


def plaintext(size: int, seed: int = 1) -> bytes:
    return counter_random(seed)(size)


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
@pytest.mark.parametrize("cipher", [f.CIPHER_AES_256_GCM, f.CIPHER_CHACHA20_POLY1305])
def test_round_trip_sizes_and_ciphers(size: int, cipher: int) -> None:
    data = plaintext(size)
    sealed = seal(data, cipher=cipher, revision=42, cluster_id=7, member_id=9, created=1_700_000_000)
    header = f.parse_header(sealed)
    assert len(sealed) == header.encrypted_size == f.HEADER_LEN + header.chunks * 16 + size
    assert header.chunks == max(1, -(-size // CHUNK))
    assert (header.revision, header.cluster_id, header.member_id, header.created, header.plaintext_size) == (
        42, 7, 9, 1_700_000_000, size)
    assert unseal(sealed) == data


def test_passphrase_round_trip_and_deterministic_output() -> None:
    data = plaintext(10_000)
    a, b = seal(data, FAST_PASS, seed=5), seal(data, FAST_PASS, seed=5)
    assert a == b  # the injected random source is the only randomness
    assert seal(data, FAST_PASS, seed=6) != a
    h = f.parse_header(a)
    assert (h.kdf, h.log_n, h.r, h.p, h.kdf_name) == (f.KDF_SCRYPT, 10, 8, 1, "scrypt")
    assert unseal(a, f.Passphrase(FAST_PASS.secret)) == data  # the file's parameters, not the default


def test_pieces_of_any_size_give_the_same_result() -> None:
    data = plaintext(5 * CHUNK + 3)
    enc = f.seal_header(f.SnapshotMeta(len(data)), KEY, counter_random(), chunk_size=CHUNK)
    out = [enc.header_bytes]
    for i in range(0, len(data), 777):
        out.append(enc.update(data[i:i + 777]))
    out.append(enc.finalize())
    sealed = b"".join(out)
    assert sealed == seal(data)
    dec = f.open_header(f.parse_header(sealed), KEY)
    got = [dec.update(sealed[i:i + 1000]) for i in range(f.HEADER_LEN, len(sealed), 1000)]
    dec.finalize()
    assert b"".join(got) == data


def test_writer_refuses_more_or_less_than_announced() -> None:
    enc = f.seal_header(f.SnapshotMeta(10), KEY, counter_random(), chunk_size=CHUNK)
    with pytest.raises(f.UsageError):
        enc.update(b"x" * 11)
    enc = f.seal_header(f.SnapshotMeta(10), KEY, counter_random(), chunk_size=CHUNK)
    enc.update(b"x" * 9)
    with pytest.raises(f.UsageError):
        enc.finalize()


def test_no_plaintext_bytes_in_the_file() -> None:
    secret = b"the-password-of-the-payroll-db=hunter2"
    data = (b"k/" + secret + b"\0") * 500
    for source in (KEY, FAST_PASS):
        sealed = seal(data, source)
        for needle in (secret, secret[:12], b"k/the-passw", b"hunter2"):
            assert needle not in sealed


# -- tampering -----------------------------------------------------------------------------------
def _refused(data: bytes, source: f.KeySource = KEY) -> f.SnapshotCryptError:
    with pytest.raises(f.SnapshotCryptError) as info:
        unseal(data, source)
    return info.value


def test_every_header_byte_is_covered() -> None:
    sealed = seal(plaintext(2 * CHUNK + 5))
    for i in range(f.HEADER_LEN):
        for flip in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= flip
            err = _refused(bytes(bad))
            if 40 <= i < 48:
                assert isinstance(err, f.SnapshotKeyError), i  # the key id: reads as a wrong key
            elif 64 <= i < 88 or 48 <= i < 64 or 88 <= i < 95 or 96 <= i:
                # informational fields, nonces, wrapped key: the unwrap (or a chunk) fails
                assert isinstance(err, (f.SnapshotTampered, f.SnapshotFormatError)), (i, err)
            else:
                assert isinstance(err, (f.NotEncrypted, f.SnapshotFormatError, f.SnapshotTampered)), (i, err)


def test_header_field_changes_are_named() -> None:
    sealed = seal(plaintext(100), revision=5)
    bad = bytearray(sealed)
    struct.pack_into(">q", bad, 64, 6)  # a forged revision
    assert str(_refused(bytes(bad))) == "the snapshot header failed authentication: it was modified or damaged"
    bad = bytearray(sealed)
    struct.pack_into(">H", bad, 8, 2)
    assert "unsupported encrypted snapshot version 2" in str(_refused(bytes(bad)))
    bad = bytearray(sealed)
    bad[0] ^= 1
    assert isinstance(_refused(bytes(bad)), f.NotEncrypted)


@pytest.mark.parametrize("where", ["first", "middle", "last", "last tag"])
def test_body_byte_flips(where: str) -> None:
    sealed = seal(plaintext(3 * CHUNK + 100))
    pos = {"first": f.HEADER_LEN, "middle": f.HEADER_LEN + CHUNK + 16 + 50, "last": len(sealed) - 20,
           "last tag": len(sealed) - 1}[where]
    bad = bytearray(sealed)
    bad[pos] ^= 0x10
    err = _refused(bytes(bad))
    assert isinstance(err, f.SnapshotTampered) and "failed authentication" in str(err)
    chunk = (pos - f.HEADER_LEN) // (CHUNK + 16) + 1
    assert str(err).startswith(f"chunk {chunk} of 4 ")


def test_truncation_dropped_last_chunk_and_trailing_data() -> None:
    sealed = seal(plaintext(3 * CHUNK + 100))
    last_chunk = 100 + 16
    for cut in (len(sealed) - 1, len(sealed) - last_chunk, len(sealed) - last_chunk - 1, f.HEADER_LEN + 5,
                f.HEADER_LEN, 100, 9):
        err = _refused(sealed[:cut])
        assert isinstance(err, f.SnapshotTampered) and "truncated" in str(err), cut
    assert "after the last chunk" in str(_refused(sealed + b"\0"))
    # A file whose plaintext is an exact number of chunks: dropping the last chunk still fails.
    exact = seal(plaintext(3 * CHUNK))
    assert "truncated" in str(_refused(exact[:-(CHUNK + 16)]))


def test_reordered_duplicated_and_spliced_chunks() -> None:
    a, b = seal(plaintext(4 * CHUNK, seed=1), seed=1), seal(plaintext(4 * CHUNK, seed=2), seed=2)
    body = a[f.HEADER_LEN:]
    sealed = [body[i:i + CHUNK + 16] for i in range(0, len(body), CHUNK + 16)]
    swapped = a[:f.HEADER_LEN] + sealed[1] + sealed[0] + b"".join(sealed[2:])
    assert "chunk 1 of 4" in str(_refused(swapped))
    dup = a[:f.HEADER_LEN] + sealed[0] + sealed[0] + b"".join(sealed[2:])
    assert "chunk 2 of 4" in str(_refused(dup))
    half = len(a) // 2
    spliced = a[:half] + b[half:]  # same key, same sizes: another file's second half
    assert isinstance(_refused(spliced), f.SnapshotTampered)
    other_header = b[:f.HEADER_LEN] + a[f.HEADER_LEN:]  # another file's header on this body
    assert isinstance(_refused(other_header), f.SnapshotTampered)


def test_wrong_keys() -> None:
    sealed = seal(plaintext(50))
    err = _refused(sealed, OTHER_KEY)
    assert isinstance(err, f.SnapshotKeyError)
    assert str(err) == (f"wrong key: it does not open this snapshot (the file needs key id {f.key_id(KEY).hex()}, "
                        f"the given key is {f.key_id(OTHER_KEY).hex()})")
    assert str(_refused(sealed, FAST_PASS)) == ("this snapshot was encrypted with a key file, not a passphrase: "
                                                "give --encryption-key-file")
    by_pass = seal(plaintext(50), FAST_PASS)
    assert str(_refused(by_pass, f.Passphrase(b"wrong horse battery"))) == "wrong passphrase: it does not open this snapshot"
    assert "not a key file" in str(_refused(by_pass, KEY))
    with pytest.raises(f.SnapshotKeyError):
        f.KeyFileKey(b"short")
    assert "secret" not in repr(KEY) or "<secret>" in repr(KEY)
    assert bytes(range(32)).hex() not in repr(KEY)


def test_scrypt_caps_refuse_before_any_work() -> None:
    sealed = bytearray(seal(plaintext(50), FAST_PASS))
    for log_n, r, p, text in [(30, 8, 1, "outside the allowed"), (21, 8, 1, "MiB of memory"),
                              (18, 8, 16, "exceeds the allowed"), (12, 0, 1, "outside the allowed"),
                              (12, 8, 17, "outside the allowed")]:
        bad = bytearray(sealed)
        bad[14], bad[15], bad[16] = log_n, r, p
        started = time.monotonic()
        err = _refused(bytes(bad), FAST_PASS)
        assert isinstance(err, f.SnapshotFormatError) and text in str(err), (log_n, r, p, err)
        assert time.monotonic() - started < 0.5
    with pytest.raises(f.SnapshotFormatError):
        seal(b"x", f.Passphrase(b"long enough pass", log_n=23))  # never write what cannot be read


# -- the documented test vector and an independent reader ----------------------------------------
def _doc_vector() -> bytes:
    text = DOCS.read_text()
    block = text.split("The 193-byte file:\n\n```\n", 1)[1].split("```", 1)[0]
    return bytes.fromhex("".join(block.split()))


def test_documented_test_vector() -> None:
    randoms = [bytes(range(0x40, 0x60)), bytes(range(0x60, 0x67)), bytes(range(0x70, 0x7C))]
    out = io.BytesIO()
    pt = b"securekv test vector\n"
    f.encrypt_stream(io.BytesIO(pt), out, f.SnapshotMeta(len(pt), revision=7, cluster_id=0x1111111111111111,
                                                         member_id=0x2222222222222222, created=1767225600),
                     KEY, lambda n: randoms.pop(0))
    assert out.getvalue() == _doc_vector()
    assert f.key_id(KEY).hex() == "98ba4edd2041b3ea"
    assert independent_reader(_doc_vector(), key=bytes(range(32))) == pt


def independent_reader(data: bytes, key: bytes | None = None, passphrase: bytes | None = None) -> bytes:
    """A reader written from docs/snapshots.md only (no securekv code)."""
    assert data[:8] == b"SKVSNAP\x00" and data[8:10] == b"\x00\x01" and data[10:12] == b"\x00\x9c"
    h = data[:156]
    cipher, kdf, log_n, r, p = h[12], h[13], h[14], h[15], h[16]
    (chunk,) = struct.unpack(">I", h[20:24])
    (size,) = struct.unpack(">Q", h[80:88])
    if kdf == 0:
        root = key
    else:
        assert 128 * (1 << log_n) * r <= 256 << 20
        root = Scrypt(salt=h[24:40], length=32, n=1 << log_n, r=r, p=p).derive(passphrase)

    def hkdf(info: bytes, n: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=info).derive(root)

    aead = AESGCM if cipher == 1 else ChaCha20Poly1305
    assert hkdf(b"securekv snapshot v1 key id", 8) == h[40:48]
    dk = aead(hkdf(b"securekv snapshot v1 key-encryption key", 32)).decrypt(h[96:108], h[108:156], h[:108])
    n = max(1, -(-size // chunk))
    out, pos = [], 156
    for i in range(n):
        length = (chunk if i < n - 1 else size - (n - 1) * chunk) + 16
        nonce = h[88:95] + struct.pack(">IB", i, 1 if i == n - 1 else 0)
        out.append(aead(dk).decrypt(nonce, data[pos:pos + length], h))
        pos += length
    assert pos == len(data)
    return b"".join(out)


@pytest.mark.parametrize("cipher", [f.CIPHER_AES_256_GCM, f.CIPHER_CHACHA20_POLY1305])
def test_independent_reader_opens_writer_output(cipher: int) -> None:
    data = plaintext(3 * f.CHUNK_SIZE + 1234)
    assert independent_reader(seal(data, cipher=cipher, chunk=f.CHUNK_SIZE), key=KEY.secret) == data
    assert independent_reader(seal(data, FAST_PASS, cipher=cipher), passphrase=FAST_PASS.secret) == data


# -- fuzzing the decoder (bounded, fast) ---------------------------------------------------------
VALID = seal(plaintext(2 * CHUNK + 300))


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, f.MAGIC + data, VALID[:12] + data, VALID[:f.HEADER_LEN] + data):
        try:
            unseal(candidate)
        except f.SnapshotCryptError:
            pass


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID)), st.binary(max_size=64))
def test_fuzz_mutated_valid_file(flips: list[tuple[int, int]], cut: int, tail: bytes) -> None:
    bad = bytearray(VALID)
    for pos, x in flips:
        bad[pos] ^= x
    mutated = bytes(bad[:cut]) + tail
    if mutated == VALID:
        return
    started = time.monotonic()
    with pytest.raises(f.SnapshotCryptError):
        unseal(mutated)
    assert time.monotonic() - started < 1.0  # no hang: parameters are capped before any KDF runs


@settings(max_examples=200, deadline=2000)
@given(st.binary(min_size=f.HEADER_LEN, max_size=f.HEADER_LEN))
def test_fuzz_header_parser(raw: bytes) -> None:
    for candidate in (raw, f.MAGIC + b"\x00\x01\x00\x9c" + raw[12:]):
        try:
            h = f.parse_header(candidate)
        except f.SnapshotCryptError:
            continue
        assert h.encode() == candidate  # whatever parses re-encodes to the same bytes
