"""The encrypted snapshot format, version 1 (specified in docs/snapshots.md).

A snapshot holds every key and value of the cluster, so the file must keep them secret *and*
refuse anything that was changed: a restore that silently accepts a truncated or spliced file
would bring back a cluster that lies. The construction, in short:

- a fixed 156-byte **header** (magic, version, cipher, KDF and its parameters, key id, cluster
  and member id, revision, created time, plaintext size, nonce prefix, the wrapped data key),
  readable without a key (``snapshot status``) and authenticated as associated data of every
  chunk, so no field can be altered without every chunk failing;
- a fresh random 32-byte **data key** per file, wrapped (AEAD) under a key-encryption key
  derived with HKDF-SHA256 from either a 32-byte key file or an scrypt-stretched passphrase;
- the body in fixed-size **chunks** (64 KiB of plaintext by default), each sealed with
  AES-256-GCM (or ChaCha20-Poly1305) under the data key, nonce = 7-byte prefix || 32-bit chunk
  counter || last-chunk flag: Rogaway's STREAM construction. Reordering or dropping chunks breaks
  the counter, truncation at a chunk boundary breaks the last-chunk flag (and the size in the
  header), and chunks from another file fail under this file's key and header.

Pure: bytes in, bytes out (and file-like streaming through the two small protocols below); the
random source and the clock are the caller's, so tests can be deterministic. scrypt parameters
are capped on read (memory and work), so a hostile header cannot make a reader allocate
gigabytes or spin for minutes before the key check fails.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Callable, Iterator, Protocol

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from securekv.errors import CorruptionError, SecureKVError, UsageError

MAGIC = b"SKVSNAP\x00"
VERSION = 1
# magic, version, header length, cipher, kdf, scrypt log2(N), r, p, flags, reserved(2),
# chunk size, salt, key id, cluster id, member id, revision, created, plaintext size,
# nonce prefix, reserved(1), wrap nonce, wrapped data key (32-byte key + 16-byte tag).
HEADER = struct.Struct(">8sHHBBBBBB2sI16s8sQQqqQ7sB12s48s")
HEADER_LEN = HEADER.size  # 156
WRAP_AAD_LEN = HEADER_LEN - 48  # the wrapped key is sealed over every header byte before it
PREFIX = struct.Struct(">8sHH")  # enough to recognise the format and its version

CIPHER_AES_256_GCM = 1
CIPHER_CHACHA20_POLY1305 = 2
CIPHERS = {CIPHER_AES_256_GCM: "AES-256-GCM", CIPHER_CHACHA20_POLY1305: "ChaCha20-Poly1305"}
CIPHER_BY_NAME = {name.lower(): cid for cid, name in CIPHERS.items()}
KDF_NONE = 0  # a 32-byte key from a key file
KDF_SCRYPT = 1  # a passphrase stretched with scrypt
KDFS = {KDF_NONE: "none", KDF_SCRYPT: "scrypt"}

FLAG_REVISION_LOWER_BOUND = 0x01  # the server did not report the snapshot's revision
KNOWN_FLAGS = FLAG_REVISION_LOWER_BOUND

KEY_LEN = 32
TAG_LEN = 16
NONCE_PREFIX_LEN = 7
SALT_LEN = 16
KEY_ID_LEN = 8
CHUNK_SIZE = 64 * 1024
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 1024 * 1024
MAX_CHUNKS = 1 << 32  # the 32-bit counter

# scrypt: what we write, and the caps a reader enforces before running the KDF.
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 17, 8, 1  # 128 MiB, about 0.3 s on a 2020s core
SCRYPT_MIN_LOG_N, SCRYPT_MAX_LOG_N = 10, 22
SCRYPT_MAX_R, SCRYPT_MAX_P = 32, 16
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024  # 128 * N * r bytes
SCRYPT_MAX_WORK = 1 << 24  # N * r * p

_HKDF_INFO_KEK = b"securekv snapshot v1 key-encryption key"
_HKDF_INFO_KEY_ID = b"securekv snapshot v1 key id"
_NONCE_TAIL = struct.Struct(">IB")  # chunk counter, last-chunk flag


# -- errors: whose fault --------------------------------------------------------------------------
class SnapshotCryptError(SecureKVError):
    """Base of every refusal from this module; the text is meant for the operator."""


class NotEncrypted(SnapshotCryptError):
    """The data does not start with the encrypted snapshot magic."""


class SnapshotKeyError(SnapshotCryptError, UsageError):
    """The operator's key does not open the file (wrong key, wrong passphrase, wrong kind)."""


class SnapshotFormatError(SnapshotCryptError, CorruptionError):
    """The header is malformed, from an unknown version, or asks for more than a reader allows."""


class SnapshotTampered(SnapshotCryptError, CorruptionError):
    """Authentication failed: the file was modified, damaged, truncated or spliced."""


# -- streaming protocols (anything with read/write) ----------------------------------------------
class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


Random = Callable[[int], bytes]


# -- keys ------------------------------------------------------------------------------------------
@attrs.frozen(repr=False)
class KeyFileKey:
    """A 32-byte key (``snapshot keygen``); used through HKDF, never directly."""

    secret: bytes = attrs.field()

    @secret.validator
    def _check(self, _attr: object, value: bytes) -> None:
        if len(value) != KEY_LEN:
            raise SnapshotKeyError(f"an encryption key is {KEY_LEN} bytes, not {len(value)}")

    def __repr__(self) -> str:  # never print the secret
        return "KeyFileKey(<secret>)"


@attrs.frozen(repr=False)
class Passphrase:
    """A passphrase; scrypt parameters are those used when *writing* (a file carries its own)."""

    secret: bytes
    log_n: int = SCRYPT_LOG_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __repr__(self) -> str:
        return f"Passphrase(<secret>, log_n={self.log_n}, r={self.r}, p={self.p})"


KeySource = KeyFileKey | Passphrase


def check_scrypt(log_n: int, r: int, p: int) -> None:
    """The reader's caps (also applied when writing: never write what cannot be read)."""
    if not SCRYPT_MIN_LOG_N <= log_n <= SCRYPT_MAX_LOG_N:
        raise SnapshotFormatError(f"scrypt N = 2^{log_n} is outside the allowed 2^{SCRYPT_MIN_LOG_N}..2^{SCRYPT_MAX_LOG_N}")
    if not 1 <= r <= SCRYPT_MAX_R or not 1 <= p <= SCRYPT_MAX_P:
        raise SnapshotFormatError(f"scrypt r = {r}, p = {p} outside the allowed r 1..{SCRYPT_MAX_R}, p 1..{SCRYPT_MAX_P}")
    memory = 128 * (1 << log_n) * r
    if memory > SCRYPT_MAX_MEMORY:
        raise SnapshotFormatError(f"scrypt parameters need {memory >> 20} MiB of memory; "
                                  f"at most {SCRYPT_MAX_MEMORY >> 20} MiB is allowed")
    if (1 << log_n) * r * p > SCRYPT_MAX_WORK:
        raise SnapshotFormatError(f"scrypt work N*r*p = {(1 << log_n) * r * p} exceeds the allowed {SCRYPT_MAX_WORK}")


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def _root_secret(source: KeySource, header: "Header") -> bytes:
    if header.kdf == KDF_NONE:
        if not isinstance(source, KeyFileKey):
            raise SnapshotKeyError("this snapshot was encrypted with a key file, not a passphrase: "
                                   "give --encryption-key-file")
        return source.secret
    if not isinstance(source, Passphrase):
        raise SnapshotKeyError("this snapshot was encrypted with a passphrase, not a key file: give --passphrase-file")
    check_scrypt(header.log_n, header.r, header.p)
    return Scrypt(salt=header.salt, length=KEY_LEN, n=1 << header.log_n, r=header.r, p=header.p).derive(source.secret)


def derive(source: KeySource, header: "Header") -> tuple[bytes, bytes]:
    """(key-encryption key, key id) for ``source`` under ``header``'s KDF and parameters."""
    root = _root_secret(source, header)
    return _hkdf(root, _HKDF_INFO_KEK, KEY_LEN), _hkdf(root, _HKDF_INFO_KEY_ID, KEY_ID_LEN)


def key_id(key: KeyFileKey) -> bytes:
    """The id a key file's key gets in every header (HKDF output: reveals nothing of the key)."""
    return _hkdf(key.secret, _HKDF_INFO_KEY_ID, KEY_ID_LEN)


def _aead(cipher: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher == CIPHER_AES_256_GCM:
        return AESGCM(key)
    if cipher == CIPHER_CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise SnapshotFormatError(f"unknown cipher {cipher}")


# -- header ----------------------------------------------------------------------------------------
@attrs.frozen
class SnapshotMeta:
    """What the caller knows about the plaintext (an etcd-format snapshot) before writing it."""

    plaintext_size: int
    revision: int = 0
    cluster_id: int = 0
    member_id: int = 0
    created: int = 0  # unix seconds
    revision_is_lower_bound: bool = False


@attrs.frozen
class Header:
    cipher: int
    kdf: int
    log_n: int
    r: int
    p: int
    flags: int
    chunk_size: int
    salt: bytes
    key_id: bytes
    cluster_id: int
    member_id: int
    revision: int
    created: int
    plaintext_size: int
    nonce_prefix: bytes
    wrap_nonce: bytes
    wrapped_key: bytes
    version: int = VERSION

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, self.version, HEADER_LEN, self.cipher, self.kdf, self.log_n, self.r, self.p,
                           self.flags, b"\0\0", self.chunk_size, self.salt, self.key_id, self.cluster_id,
                           self.member_id, self.revision, self.created, self.plaintext_size, self.nonce_prefix, 0,
                           self.wrap_nonce, self.wrapped_key)

    @property
    def chunks(self) -> int:
        """Number of sealed chunks: at least one (an empty plaintext is one empty last chunk)."""
        return max(1, -(-self.plaintext_size // self.chunk_size))

    @property
    def encrypted_size(self) -> int:
        return HEADER_LEN + self.chunks * TAG_LEN + self.plaintext_size

    @property
    def cipher_name(self) -> str:
        return CIPHERS[self.cipher]

    @property
    def kdf_name(self) -> str:
        return KDFS[self.kdf]

    @property
    def revision_is_lower_bound(self) -> bool:
        return bool(self.flags & FLAG_REVISION_LOWER_BOUND)


def is_encrypted(prefix: bytes) -> bool:
    """Whether data starting with ``prefix`` (at least 8 bytes) is an encrypted snapshot."""
    return prefix[: len(MAGIC)] == MAGIC


def parse_header(data: bytes) -> Header:
    """The header at the start of ``data`` (at least HEADER_LEN bytes), checked for structure and
    the reader's caps. Not authenticated: that needs the key (``open_header``)."""
    if len(data) < len(MAGIC) or not is_encrypted(data):
        raise NotEncrypted("not an encrypted securekv snapshot (no SKVSNAP header)")
    if len(data) < PREFIX.size:
        raise SnapshotTampered(f"the file is truncated: it ends inside the header ({len(data)} of {HEADER_LEN} bytes)")
    _magic, version, length = PREFIX.unpack_from(data)
    if version != VERSION:
        raise SnapshotFormatError(f"unsupported encrypted snapshot version {version} (this securekv reads version {VERSION})")
    if length != HEADER_LEN:
        raise SnapshotFormatError(f"bad header length {length} (version {VERSION} headers are {HEADER_LEN} bytes)")
    if len(data) < HEADER_LEN:
        raise SnapshotTampered(f"the file is truncated: it ends inside the header ({len(data)} of {HEADER_LEN} bytes)")
    (_m, _v, _l, cipher, kdf, log_n, r, p, flags, reserved, chunk_size, salt, kid, cluster_id, member_id, revision,
     created, size, prefix, reserved2, wrap_nonce, wrapped) = HEADER.unpack_from(data)
    if cipher not in CIPHERS:
        raise SnapshotFormatError(f"unknown cipher id {cipher} in the header")
    if kdf not in KDFS:
        raise SnapshotFormatError(f"unknown key derivation id {kdf} in the header")
    if flags & ~KNOWN_FLAGS or reserved != b"\0\0" or reserved2:
        raise SnapshotFormatError("unknown flags or non-zero reserved bytes in the header")
    if kdf == KDF_SCRYPT:
        check_scrypt(log_n, r, p)
    elif log_n or r or p or salt != bytes(SALT_LEN):
        raise SnapshotFormatError("KDF parameters present for a key-file snapshot")
    if chunk_size & (chunk_size - 1) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise SnapshotFormatError(f"bad chunk size {chunk_size} (a power of two from {MIN_CHUNK} to {MAX_CHUNK})")
    header = Header(cipher=cipher, kdf=kdf, log_n=log_n, r=r, p=p, flags=flags, chunk_size=chunk_size, salt=salt,
                    key_id=kid, cluster_id=cluster_id, member_id=member_id, revision=revision, created=created,
                    plaintext_size=size, nonce_prefix=prefix, wrap_nonce=wrap_nonce, wrapped_key=wrapped,
                    version=version)
    if header.chunks > MAX_CHUNKS:
        raise SnapshotFormatError(f"plaintext size {size} needs more than 2^32 chunks")
    return header


# -- sealing ---------------------------------------------------------------------------------------
def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, 1 if last else 0)


class Encryptor:
    """Seals the body chunk by chunk; the plaintext size is fixed by the header."""

    def __init__(self, header: Header, data_key: bytes) -> None:
        self.header = header
        self.header_bytes = header.encode()
        self._aead = _aead(header.cipher, data_key)
        self._buf = bytearray()
        self._index = 0
        self._taken = 0
        self._last = header.chunks - 1

    def _seal(self, data: bytes | bytearray | memoryview, last: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self.header.nonce_prefix, self._index, last), data, self.header_bytes)
        self._index += 1
        return out

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Seal every complete chunk that ``data`` finishes; returns the sealed bytes. Whole
        chunks are sealed straight from ``data`` (no copy); the last one waits for finalize."""
        self._taken += len(data)
        if self._taken > self.header.plaintext_size:
            raise UsageError(f"more plaintext than the {self.header.plaintext_size} bytes the header announces")
        size = self.header.chunk_size
        view = memoryview(data)
        out = []
        if self._buf:
            take = view[: size - len(self._buf)]
            self._buf += take
            view = view[len(take):]
            if len(self._buf) < size or self._index >= self._last:
                self._buf += view  # (only the last chunk can still be growing here)
                return b""
            out.append(self._seal(self._buf, False))
            self._buf = bytearray()
        while len(view) >= size and self._index < self._last:
            out.append(self._seal(view[:size], False))
            view = view[size:]
        self._buf += view
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> bytes:
        """Seal the last chunk; the plaintext must be exactly as long as announced."""
        if self._taken != self.header.plaintext_size:
            raise UsageError(f"the plaintext was {self._taken} bytes, not the {self.header.plaintext_size} announced")
        out = self._seal(self._buf, True)
        self._buf = bytearray()
        return out


def seal_header(meta: SnapshotMeta, source: KeySource, random: Random, *, cipher: int = CIPHER_AES_256_GCM,
                chunk_size: int = CHUNK_SIZE) -> Encryptor:
    """A new header with a fresh data key wrapped for ``source``; returns the body's Encryptor
    (its ``header_bytes`` go first in the file)."""
    if chunk_size & (chunk_size - 1) or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise UsageError(f"bad chunk size {chunk_size}")
    if cipher not in CIPHERS:
        raise UsageError(f"unknown cipher {cipher}")
    if isinstance(source, Passphrase):
        check_scrypt(source.log_n, source.r, source.p)
        kdf, log_n, r, p, salt = KDF_SCRYPT, source.log_n, source.r, source.p, random(SALT_LEN)
    else:
        kdf, log_n, r, p, salt = KDF_NONE, 0, 0, 0, bytes(SALT_LEN)
    data_key = random(KEY_LEN)
    draft = Header(cipher=cipher, kdf=kdf, log_n=log_n, r=r, p=p,
                   flags=FLAG_REVISION_LOWER_BOUND if meta.revision_is_lower_bound else 0,
                   chunk_size=chunk_size, salt=salt, key_id=bytes(KEY_ID_LEN), cluster_id=meta.cluster_id,
                   member_id=meta.member_id, revision=meta.revision, created=meta.created,
                   plaintext_size=meta.plaintext_size, nonce_prefix=random(NONCE_PREFIX_LEN),
                   wrap_nonce=random(12), wrapped_key=bytes(KEY_LEN + TAG_LEN))
    if draft.chunks > MAX_CHUNKS:
        raise UsageError("snapshot too large for one file")
    kek, kid = derive(source, draft)
    draft = attrs.evolve(draft, key_id=kid)
    wrapped = _aead(cipher, kek).encrypt(draft.wrap_nonce, data_key, draft.encode()[:WRAP_AAD_LEN])
    return Encryptor(attrs.evolve(draft, wrapped_key=wrapped), data_key)


# -- opening ---------------------------------------------------------------------------------------
class Decryptor:
    """Authenticates and opens the body chunk by chunk (fed in pieces of any size)."""

    def __init__(self, header: Header, data_key: bytes) -> None:
        self.header = header
        self.header_bytes = header.encode()
        self._aead = _aead(header.cipher, data_key)
        self._buf = bytearray()
        self._index = 0
        self._done = False
        self._seen = 0  # body bytes received

    def _sealed_len(self, index: int) -> int:
        h = self.header
        if index < h.chunks - 1:
            return h.chunk_size + TAG_LEN
        return h.plaintext_size - (h.chunks - 1) * h.chunk_size + TAG_LEN

    def _open(self, sealed: bytes | bytearray | memoryview) -> bytes:
        h = self.header
        last = self._index == h.chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(h.nonce_prefix, self._index, last), sealed, self.header_bytes)
        except InvalidTag:
            start = HEADER_LEN + self._index * (h.chunk_size + TAG_LEN)
            raise SnapshotTampered(
                f"chunk {self._index + 1} of {h.chunks} (file bytes {start}..{start + len(sealed) - 1}) failed "
                "authentication: the file was modified, damaged, or mixed with another snapshot") from None
        self._index += 1
        self._done = last
        return plain

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Plaintext of every chunk ``data`` completes (each authenticated before it is returned).
        Chunks are opened straight from ``data`` where they lie whole in it (no copy)."""
        if self._done and data:
            raise SnapshotTampered("unexpected data after the last chunk (the file is longer than its header says)")
        self._seen += len(data)
        view = memoryview(data)
        out = []
        if self._buf:  # finish the chunk the previous call left incomplete
            take = view[: self._sealed_len(self._index) - len(self._buf)]
            self._buf += take
            view = view[len(take):]
            if len(self._buf) < self._sealed_len(self._index):
                return b""
            out.append(self._open(self._buf))
            self._buf = bytearray()
        while not self._done:
            need = self._sealed_len(self._index)
            if len(view) < need:
                break
            out.append(self._open(view[:need]))
            view = view[need:]
        if view:
            if self._done:
                raise SnapshotTampered("unexpected data after the last chunk (the file is longer than its header says)")
            self._buf += view
        return out[0] if len(out) == 1 else b"".join(out)

    def finalize(self) -> None:
        """Raise unless every chunk arrived (and nothing after the last)."""
        if not self._done:
            raise SnapshotTampered(
                f"the file is truncated: {HEADER_LEN + self._seen} of {self.header.encrypted_size} bytes, "
                f"it ends in chunk {self._index + 1} of {self.header.chunks}")


def open_header(header: Header, source: KeySource) -> Decryptor:
    """Check the key against the header and unwrap the data key (this authenticates the header)."""
    kek, kid = derive(source, header)
    if kid != header.key_id:
        what = "passphrase" if header.kdf == KDF_SCRYPT else "key"
        extra = "" if header.kdf == KDF_SCRYPT else f" (the file needs key id {header.key_id.hex()}, the given key is {kid.hex()})"
        raise SnapshotKeyError(f"wrong {what}: it does not open this snapshot{extra}")
    try:
        data_key = _aead(header.cipher, kek).decrypt(header.wrap_nonce, header.wrapped_key,
                                                      header.encode()[:WRAP_AAD_LEN])
    except InvalidTag:
        raise SnapshotTampered("the snapshot header failed authentication: it was modified or damaged") from None
    return Decryptor(header, data_key)


# -- whole streams ---------------------------------------------------------------------------------
def _read_exactly(src: Readable, size: int) -> bytes:
    parts = []
    left = size
    while left > 0:
        part = src.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_header(src: Readable) -> Header:
    """Read and parse the header from the start of ``src``."""
    return parse_header(_read_exactly(src, HEADER_LEN))


def encrypt_stream(src: Readable, dst: Writable, meta: SnapshotMeta, source: KeySource, random: Random, *,
                   cipher: int = CIPHER_AES_256_GCM, chunk_size: int = CHUNK_SIZE,
                   progress: Callable[[int], None] | None = None) -> Header:
    """Encrypt exactly ``meta.plaintext_size`` bytes of ``src`` into ``dst``."""
    enc = seal_header(meta, source, random, cipher=cipher, chunk_size=chunk_size)
    dst.write(enc.header_bytes)
    done = 0
    while done < meta.plaintext_size:
        block = src.read(min(1 << 20, meta.plaintext_size - done))
        if not block:
            raise UsageError(f"the plaintext ended after {done} of {meta.plaintext_size} bytes")
        done += len(block)
        dst.write(enc.update(block))
        if progress is not None:
            progress(done)
    dst.write(enc.finalize())
    return enc.header


def decrypt_chunks(src: Readable, source: KeySource, *, block: int = 1 << 20) -> tuple[Header, Iterator[bytes]]:
    """The header (already authenticated with ``source``) and an iterator of authenticated
    plaintext pieces. The iterator raises SnapshotTampered at the first bad or missing chunk,
    so a consumer must treat what it got so far as untrusted until the iterator is exhausted."""
    header = read_header(src)
    dec = open_header(header, source)

    def pieces() -> Iterator[bytes]:
        while True:
            data = src.read(block)
            if not data:
                break
            out = dec.update(data)
            if out:
                yield out
        dec.finalize()

    return header, pieces()


def decrypt_stream(src: Readable, dst: Writable, source: KeySource,
                   progress: Callable[[int], None] | None = None, digest: bool = True) -> tuple[Header, bytes]:
    """Decrypt ``src`` into ``dst``; returns the header and the plaintext's SHA-256 (b"" when
    ``digest`` is False). ``dst`` holds unauthenticated data if this raises: write it somewhere
    private and throw it away."""
    header, pieces = decrypt_chunks(src, source)
    sha = hashlib.sha256() if digest else None
    done = 0
    for piece in pieces:
        if sha is not None:
            sha.update(piece)
        dst.write(piece)
        done += len(piece)
        if progress is not None:
            progress(done)
    return header, sha.digest() if sha is not None else b""


__all__ = [
    "CHUNK_SIZE", "CIPHERS", "CIPHER_AES_256_GCM", "CIPHER_BY_NAME", "CIPHER_CHACHA20_POLY1305", "Decryptor",
    "Encryptor", "HEADER_LEN", "Header", "KeyFileKey", "KeySource", "MAGIC", "NotEncrypted", "Passphrase",
    "SnapshotCryptError", "SnapshotFormatError", "SnapshotKeyError", "SnapshotMeta", "SnapshotTampered",
    "decrypt_chunks", "decrypt_stream", "encrypt_stream", "is_encrypted", "key_id", "open_header", "parse_header",
    "read_header", "seal_header",
]
