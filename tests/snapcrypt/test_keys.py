"""Key sources (securekv/snapcrypt/keys.py) and whole-file helpers (files.py) on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from securekv.snapcrypt import files, keys
from securekv.snapcrypt.format import KeyFileKey, Passphrase, SnapshotMeta, SnapshotTampered, key_id


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k"
    old = os.umask(0)
    try:
        kid = keys.keygen(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert kid == key_id(KeyFileKey(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(keys.KeySourceError, match="exists; refusing to overwrite"):
        keys.keygen(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temp file left
    with pytest.raises(keys.KeySourceError, match="cannot create"):
        keys.keygen(tmp_path / "missing-dir" / "k")


def test_key_file_formats_and_errors(tmp_path: Path) -> None:
    raw = bytes(range(32))
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "hex").write_text(raw.hex() + "\n")
    assert keys.read_key_file(str(tmp_path / "raw")).secret == raw
    assert keys.read_key_file(str(tmp_path / "hex")).secret == raw
    (tmp_path / "short").write_bytes(b"x" * 31)
    with pytest.raises(keys.KeySourceError, match=r"must hold 32 bytes .* it holds 31 bytes; make one with"):
        keys.read_key_file(str(tmp_path / "short"))
    with pytest.raises(keys.KeySourceError, match="cannot read key file .*missing: No such file"):
        keys.read_key_file(str(tmp_path / "missing"))


def test_passphrase_files(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"correct horse\r\n")
    assert keys.read_passphrase_file(str(tmp_path / "p")).secret == b"correct horse"
    (tmp_path / "e").write_bytes(b"\n")
    with pytest.raises(keys.KeySourceError, match="is empty"):
        keys.read_passphrase_file(str(tmp_path / "e"))
    (tmp_path / "s").write_bytes(b"short\n")
    with pytest.raises(keys.KeySourceError, match="shorter than 8"):
        keys.read_passphrase_file(str(tmp_path / "s"))


def test_choose_precedence_and_contradictions(tmp_path: Path) -> None:
    (tmp_path / "k1").write_bytes(b"1" * 32)
    (tmp_path / "k2").write_bytes(b"2" * 32)
    (tmp_path / "p").write_bytes(b"a long passphrase")
    env = {keys.ENV_KEY_FILE: str(tmp_path / "k2")}
    assert keys.choose(None, None, False, env).source == KeyFileKey(b"2" * 32)
    assert keys.choose(str(tmp_path / "k1"), None, False, env).source == KeyFileKey(b"1" * 32)
    assert isinstance(keys.choose(None, str(tmp_path / "p"), False, env).source, Passphrase)
    plain = keys.choose(None, None, True, env)
    assert plain.source is None and plain.plaintext
    assert keys.choose(None, None, False, {}).source is None
    with pytest.raises(keys.KeySourceError, match="not both"):
        keys.choose(str(tmp_path / "k1"), str(tmp_path / "p"), False, {})
    with pytest.raises(keys.KeySourceError, match="contradicts"):
        keys.choose(str(tmp_path / "k1"), None, True, {})


def test_encrypt_bolt_file_is_the_saved_stream(tmp_path: Path) -> None:
    """A bolt file encrypted from disk (the member's backups) holds exactly what `snapshot save`
    stores: the file zero-padded to 512 bytes, then its SHA-256."""
    import hashlib
    import io

    from securekv.snapcrypt.format import decrypt_stream

    bolt = tmp_path / "snap.db"
    body = os.urandom(4096 * 3 + 100)
    bolt.write_bytes(body)
    key = KeyFileKey(os.urandom(32))
    target = tmp_path / "out.snap"
    header = files.encrypt_bolt_file(bolt, target, SnapshotMeta(0, revision=3), key)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and files.detect(target) is files.Kind.ENCRYPTED
    padded = body + bytes(-len(body) % 512)
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(target.read_bytes()), out, key)
    assert out.getvalue() == padded + hashlib.sha256(padded).digest()
    assert header.plaintext_size == len(out.getvalue()) and header.revision == 3
    assert files.read_file_header(target) == header
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(SnapshotTampered, match="truncated"):
        files.read_file_header(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.snap", "snap.db"]


def test_failed_atomic_output_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with files.atomic_output(tmp_path / "x") as out:
            out.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
