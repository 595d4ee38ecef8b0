"""Encrypted snapshots end to end with real processes: ``securekv ctl snapshot keygen|save|status|
restore`` against ``securekv serve`` (mutual TLS, free loopback ports), and every refusal the
issue lists — each with a clear message, exit 1 and nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import REPO, clean_stderr, free_port

from securekv.proto import kv_pb2
from securekv.server.etcdsnap import export_snapshot
from securekv.snapcrypt import files
from securekv.snapcrypt.format import HEADER_LEN, Passphrase, SnapshotMeta, encrypt_stream, parse_header
from securekv.snapcrypt.keys import read_key_file
from securekv.storage import Backend, Revision, WriteBatch

SECRETS = [f"s3cr3t-value-{i:03d}-do-not-leak".encode() for i in range(40)]
FAST_PASS = b"correct horse battery staple"


def skv(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO)}
    full_env.pop("SECUREKV_SNAPSHOT_KEY_FILE", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "securekv", "ctl", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=full_env)


def ctl_args(member) -> list[str]:
    c = member.certs
    return ["--endpoints", member.endpoint, "--cacert", str(c.ca), "--cert", str(c.client_cert),
            "--key", str(c.client_key)]


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def keygen(path: Path) -> Path:
    out = skv("snapshot", "keygen", str(path))
    assert out.returncode == 0, out.stderr
    return path


# -- keygen ------------------------------------------------------------------------------------------
def test_keygen(tmp_path: Path) -> None:
    key = tmp_path / "backup.key"
    out = skv("snapshot", "keygen", str(key))
    assert out.returncode == 0 and out.stderr == ""
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert "(key id " in out.stdout and out.stdout.startswith(f"Key written to {key} ")
    before = key.read_bytes()
    again = skv("snapshot", "keygen", str(key))
    assert (again.returncode, again.stderr) == (
        1, f"Error: {key} exists; refusing to overwrite a key (an old backup may need it)\n")
    assert key.read_bytes() == before and listing(tmp_path) == ["backup.key"]
    assert skv("snapshot", "keygen").returncode == 128


# -- save refuses without a key, before any network call --------------------------------------------------
def test_save_without_a_key_is_refused_before_connecting(tmp_path: Path) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    out = skv("--endpoints", dead, "snapshot", "save", str(tmp_path / "s.snap"), cwd=tmp_path)
    assert out.returncode == 1
    assert clean_stderr(out.stderr) == (
        "Error: refusing to write an unencrypted snapshot: make a key with `securekv ctl snapshot keygen FILE` "
        "and pass --encryption-key-file FILE (or set SECUREKV_SNAPSHOT_KEY_FILE), or use --passphrase-file FILE; "
        "or pass --plaintext for an unencrypted etcd-format file")
    assert listing(tmp_path) == []
    key = keygen(tmp_path / "k")
    both = skv("--endpoints", dead, "snapshot", "save", "x", "--encryption-key-file", str(key), "--plaintext")
    assert clean_stderr(both.stderr) == "Error: --plaintext contradicts --encryption-key-file/--passphrase-file"
    (tmp_path / "bad.key").write_bytes(b"x" * 10)
    bad = skv("--endpoints", dead, "snapshot", "save", "x", "--encryption-key-file", str(tmp_path / "bad.key"))
    assert "must hold 32 bytes (or 64 hex digits), it holds 10 bytes" in bad.stderr and bad.returncode == 1


# -- save / status / restore against a real member ----------------------------------------------------------
def _fill(member) -> None:
    for i, value in enumerate(SECRETS):
        member.ctl("put", f"app/secret/{i:03d}", value.decode())
    member.ctl("put", "app/big", "B" * 20000)


def test_encrypted_save_status_restore_serve(make_member, tmp_path: Path) -> None:
    src = make_member("securekv", name="source")
    _fill(src)
    key = keygen(tmp_path / "backup.key")
    pw = tmp_path / "pass"
    pw.write_bytes(FAST_PASS + b"\n")
    pw.chmod(0o600)
    snap, plain, by_pass, by_env = (tmp_path / n for n in ("a.snap", "plain.db", "pw.snap", "env.snap"))
    for args, env in ((["snapshot", "save", str(snap), "--encryption-key-file", str(key)], None),
                      (["snapshot", "save", str(plain), "--plaintext"], None),
                      (["snapshot", "save", str(by_pass), "--passphrase-file", str(pw), "--cipher",
                        "chacha20-poly1305"], None),
                      (["snapshot", "save", str(by_env)], {"SECUREKV_SNAPSHOT_KEY_FILE": str(key)})):
        out = skv(*ctl_args(src), *args, env=env)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert out.stdout == f"Snapshot saved at {args[2]}\n"
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
    status = json.loads(src.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]

    for path in (snap, by_pass, by_env):
        data = path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and data.startswith(b"SKVSNAP\0")
        for needle in (*SECRETS, b"app/secret/", b"B" * 64):
            assert needle not in data  # no stored key or value readable in the file
    assert SECRETS[0] in plain.read_bytes()  # (the plain file does hold them)

    # status from the header alone
    head = json.loads(skv("-w", "json", "snapshot", "status", str(snap)).stdout)
    assert head["revision"] == status["revision"] and not head["authenticated"]
    assert (head["clusterID"], head["memberID"]) == (status["cluster_id"], status["member_id"])
    assert (head["cipher"], head["kdf"], head["fileSize"]) == ("AES-256-GCM", "none", snap.stat().st_size)
    assert "revisionIsLowerBound" not in head  # securekv reports the snapshot's exact revision
    assert json.loads(skv("-w", "json", "snapshot", "status", str(by_pass)).stdout)["cipher"] == "ChaCha20-Poly1305"
    # with the key: etcd's fields of the authenticated content equal the plain snapshot's
    etcd_plain = json.loads(skv("-w", "json", "snapshot", "status", str(plain)).stdout)
    full = json.loads(skv("-w", "json", "snapshot", "status", str(snap), "--encryption-key-file", str(key)).stdout)
    assert full["authenticated"] and {k: full[k] for k in etcd_plain} == etcd_plain
    assert full["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()  # the same plaintext, byte for byte
    table = skv("-w", "table", "snapshot", "status", str(by_pass), "--passphrase-file", str(pw)).stdout
    header, row = (line.split("|")[1:5] for line in table.splitlines()[1:4:2])
    assert [cell.strip() for cell in header] == ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    pass_status = skv("-w", "json", "snapshot", "status", str(by_pass), "--passphrase-file", str(pw)).stdout
    pass_hash = json.loads(pass_status)["hash"]
    assert row[0].strip() == f"{pass_hash:x}" and len(header[0]) == len(row[0])
    gap = len(header[0]) - len("HASH")  # centred as etcdctl's table writer does: the odd space goes right
    assert header[0] == " " * (gap // 2) + "HASH" + " " * (gap - gap // 2)
    simple = skv("snapshot", "status", str(plain)).stdout.split(", ")  # a plain file: etcdctl's output
    assert simple[:3] == [f"{etcd_plain['hash']:x}", str(etcd_plain["revision"]), str(etcd_plain["totalKey"])]

    want = json.loads(src.ctl("get", "app/", "--prefix", "-w", "json").stdout)["kvs"]
    hashkv = json.loads(src.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]["hash"]
    src.stop()
    for path, flags in ((snap, ["--encryption-key-file", str(key)]), (by_pass, ["--passphrase-file", str(pw)]),
                        (by_env, [])):
        dst = make_member("securekv", name=f"restored-{path.stem}", start=False)
        peer = f"https://127.0.0.1:{dst.peer_port}"
        out = skv("snapshot", "restore", str(path), "--data-dir", str(dst.data_dir), "--name", "m1",
                  "--initial-cluster", f"m1={peer}", "--initial-advertise-peer-urls", peer, *flags,
                  env={"SECUREKV_SNAPSHOT_KEY_FILE": str(key)} if not flags else None)
        assert out.returncode == 0 and out.stdout == "", out.stderr
        msgs = [json.loads(line)["msg"] for line in out.stderr.splitlines()]
        assert msgs[:2] == ["restoring snapshot", "decrypted and authenticated snapshot"]
        assert not [p for p in dst.data_dir.parent.iterdir() if "decrypt" in p.name or ".restore-" in p.name]
        dst.start()
        assert json.loads(dst.ctl("get", "app/", "--prefix", "-w", "json").stdout)["kvs"] == want
        assert json.loads(dst.ctl("endpoint", "hashkv", "-w", "json").stdout)[0]["HashKV"]["hash"] == hashkv
        dst.kill()


# -- refusals: clear message, exit 1, nothing written ---------------------------------------------------------
def _plain_snapshot(base: Path, tag: bytes) -> bytes:
    """A small etcd snapshot as the Snapshot RPC streams it (bbolt, padding, SHA-256)."""
    with Backend.open(base / f"db-{tag.decode()}.sqlite") as db:
        puts = [Revision(2 + i, 0, b"k%03d" % i, kv_pb2.KeyValue(key=b"k%03d" % i, create_revision=2 + i,
                                                                 mod_revision=2 + i, version=1,
                                                                 value=tag + SECRETS[i % 40]).SerializeToString())
                for i in range(300)]
        db.commit(WriteBatch(puts=puts, consistent_index=400))
        db.backup_to(base / f"copy-{tag.decode()}.sqlite")
    export_snapshot(base / f"copy-{tag.decode()}.sqlite", base / f"snap-{tag.decode()}.db")
    data = (base / f"snap-{tag.decode()}.db").read_bytes()
    data += bytes(-len(data) % 512)
    return data + hashlib.sha256(data).digest()


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("sealed")
    key = base / "backup.key"
    keygen(key)
    other = base / "other.key"
    keygen(other)
    pw = base / "pass"
    pw.write_bytes(FAST_PASS)
    pw.chmod(0o600)
    wrong = base / "wrongpass"
    wrong.write_bytes(b"not the right passphrase")
    wrong.chmod(0o600)
    out = {"key": key, "other": other, "pass": pw, "wrongpass": wrong, "base": base}
    for tag, source, name in ((b"A", read_key_file(str(key)), "a.snap"), (b"B", read_key_file(str(key)), "b.snap"),
                              (b"P", Passphrase(FAST_PASS, log_n=12), "p.snap")):
        plain = _plain_snapshot(base, tag)
        with open(base / name, "wb") as fh:
            encrypt_stream(io.BytesIO(plain), fh, SnapshotMeta(len(plain), revision=301), source, os.urandom,
                           chunk_size=4096)  # small chunks: several of them in a small file
        out[name] = base / name
    (base / "plain.db").write_bytes(_plain_snapshot(base, b"C"))
    out["plain"] = base / "plain.db"
    return out


def _variants(sealed: dict) -> dict[str, tuple[bytes, list[str], str]]:
    a, b = sealed["a.snap"].read_bytes(), sealed["b.snap"].read_bytes()
    h = parse_header(a)
    assert h.chunks >= 3 and len(a) == len(b)
    kf = ["--encryption-key-file", str(sealed["key"])]
    last = HEADER_LEN + (h.chunks - 1) * (h.chunk_size + 16)

    def flip(data: bytes, pos: int) -> bytes:
        bad = bytearray(data)
        bad[pos] ^= 0x04
        return bytes(bad)

    half = HEADER_LEN + (h.chunks // 2) * (h.chunk_size + 16)
    tampered = "failed authentication: the file was modified, damaged, or mixed with another snapshot"
    return {
        "header byte": (flip(a, 66), kf, "the snapshot header failed authentication: it was modified or damaged"),
        "body byte": (flip(a, HEADER_LEN + 100), kf, f"chunk 1 of {h.chunks} (file bytes"),
        "last chunk byte": (flip(a, len(a) - 30), kf, f"chunk {h.chunks} of {h.chunks} (file bytes {last}.."),
        "truncated": (a[:-1000], kf, f"the file is truncated: {len(a) - 1000} of {len(a)} bytes"),
        "dropped last chunk": (a[:last], kf, f"the file is truncated: {last} of {len(a)} bytes"),
        "spliced half": (a[:half] + b[half:], kf, tampered),
        "wrong key": (a, ["--encryption-key-file", str(sealed["other"])], "wrong key: it does not open this snapshot"),
        "wrong passphrase": (sealed["p.snap"].read_bytes(), ["--passphrase-file", str(sealed["wrongpass"])],
                             "wrong passphrase: it does not open this snapshot"),
        "passphrase for a key file": (a, ["--passphrase-file", str(sealed["pass"])],
                                      "encrypted with a key file, not a passphrase"),
        "no key": (a, [], "is an encrypted snapshot: give --encryption-key-file FILE or --passphrase-file FILE"),
        "plaintext flag on an encrypted file": (a, ["--plaintext"], "--plaintext only restores unencrypted ones"),
        "plain file with a key": (sealed["plain"].read_bytes(), kf,
                                  "is not an encrypted securekv snapshot, but a key was given"),
    }


def test_restore_refusals_write_nothing(sealed: dict, tmp_path: Path) -> None:
    for label, (data, flags, message) in _variants(sealed).items():
        work = tmp_path / label.replace(" ", "_")
        work.mkdir()
        (work / "in.snap").write_bytes(data)
        before = listing(work)
        out = skv("snapshot", "restore", str(work / "in.snap"), "--data-dir", str(work / "new" / "restored"), *flags,
                  cwd=work)
        err = clean_stderr(out.stderr)
        assert out.returncode == 1 and out.stdout == "", (label, out.stderr)
        assert err.startswith("Error: ") and message in err, (label, err)
        assert "Traceback" not in out.stderr
        assert listing(work) == before, label  # no data dir, no parent, no temp file
        # status with the same key refuses the same file (never a partial answer)
        if flags and label not in ("plaintext flag on an encrypted file", "plain file with a key"):
            st = skv("snapshot", "status", str(work / "in.snap"), *flags, cwd=work)
            assert st.returncode == 1 and st.stdout == "", (label, st.stdout)


def test_plain_file_restores_with_a_key_only_when_expected(sealed: dict, tmp_path: Path) -> None:
    out = skv("snapshot", "restore", str(sealed["plain"]), "--data-dir", str(tmp_path / "r"), "--plaintext",
              env={"SECUREKV_SNAPSHOT_KEY_FILE": str(sealed["key"])})
    assert out.returncode == 0, out.stderr
    out = skv("snapshot", "restore", str(sealed["plain"]), "--data-dir", str(tmp_path / "r2"),
              env={"SECUREKV_SNAPSHOT_KEY_FILE": str(sealed["key"])})
    assert out.returncode == 1 and "pass --plaintext" in out.stderr and not (tmp_path / "r2").exists()


# -- ctl save --backup-dir: rotation, one writer at a time ------------------------------------------------------
def test_ctl_backup_dir_rotates_and_locks(make_member, tmp_path: Path) -> None:
    from securekv.snapcrypt import backupdir

    m = make_member("securekv", name="m")
    m.ctl("put", "k", "v")
    key = keygen(tmp_path / "k")
    d = tmp_path / "backups"
    names = []
    for _ in range(3):
        out = skv(*ctl_args(m), "snapshot", "save", "--backup-dir", str(d), "--retain", "2",
                  "--encryption-key-file", str(key))
        assert out.returncode == 0, out.stderr
        names.append(out.stdout.split(" at ")[1].strip())
    kept = [str(p) for p in backupdir.list_backups(d)]
    assert kept == names[1:] and all(Path(p).name.startswith("securekv-backup-") for p in kept)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    with backupdir.exclusive(d):  # another writer holds the directory
        out = skv(*ctl_args(m), "snapshot", "save", "--backup-dir", str(d), "--encryption-key-file", str(key))
    assert (out.returncode, clean_stderr(out.stderr)) == (1, f"Error: another backup is being written into {d}")
    assert [str(p) for p in backupdir.list_backups(d)] == kept
    assert files.detect(kept[-1]) is files.Kind.ENCRYPTED


def test_encrypted_save_from_the_real_etcd(make_member, tmp_path: Path) -> None:
    """etcd 3.4 sends no header with the snapshot: the file records the revision of a Status
    call made just before as a lower bound, and restores like any other."""
    etcd = make_member("etcd", name="etcd")
    for i in range(5):
        etcd.ctl("put", f"e/{i}", SECRETS[i].decode())
    key = keygen(tmp_path / "k")
    snap = tmp_path / "etcd.snap"
    out = skv(*ctl_args(etcd), "snapshot", "save", str(snap), "--encryption-key-file", str(key))
    assert out.returncode == 0, out.stderr
    assert not any(s in snap.read_bytes() for s in SECRETS[:5])
    head = json.loads(skv("-w", "json", "snapshot", "status", str(snap)).stdout)
    status = json.loads(etcd.ctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["header"]
    assert head["revisionIsLowerBound"] and head["revision"] == status["revision"] == 6
    assert (head["clusterID"], head["memberID"]) == (status["cluster_id"], status["member_id"])
    assert skv("snapshot", "status", str(snap)).stdout.split(", ")[0] == "6+"
    full = json.loads(skv("-w", "json", "snapshot", "status", str(snap), "--encryption-key-file", str(key)).stdout)
    assert full["authenticated"] and full["revision"] == 6 and full["totalKey"] >= 5
    out = skv("snapshot", "restore", str(snap), "--data-dir", str(tmp_path / "restored"), "--encryption-key-file",
              str(key))
    assert out.returncode == 0, out.stderr
