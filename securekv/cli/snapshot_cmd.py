"""``securekv ctl snapshot save|status|restore|keygen``: etcdctl's snapshot commands, encrypted by default.

A snapshot holds every secret in the cluster, so ``save`` refuses to write one in clear unless
asked (``--plaintext``): the key comes from ``--encryption-key-file``, ``--passphrase-file`` or
``SECUREKV_SNAPSHOT_KEY_FILE`` (flags win). ``restore`` and ``status`` read both kinds; an
encrypted file is authenticated chunk by chunk *before* anything is written, and when a key is
configured an unencrypted file is refused unless ``--plaintext`` says it is expected (someone
who can replace a backup must not be able to swap in a forged plaintext one).

Registered on ``ctl_cmd.cli`` by ctl_cmd itself; the shared pieces (``die``, exit codes,
``Ctl``) come from there.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any, Callable

import click

from securekv.cli.ctl_cmd import (
    EXIT_BAD_ARGS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Ctl,
    SubGroup,
    die,
    pass_ctl,
)

ENCRYPTION_HELP = ("make a key with `securekv ctl snapshot keygen FILE` and pass --encryption-key-file FILE "
                   "(or set SECUREKV_SNAPSHOT_KEY_FILE), or use --passphrase-file FILE")


def _key_options(plaintext_help: str | None) -> Callable[[Any], Any]:
    def wrap(fn: Any) -> Any:
        if plaintext_help is not None:
            fn = click.option("--plaintext", is_flag=True, help=plaintext_help)(fn)
        fn = click.option("--passphrase-file", default=None, metavar="FILE",
                          help="Passphrase (first line) to derive the key with scrypt.")(fn)
        fn = click.option("--encryption-key-file", default=None, metavar="FILE",
                          help="32-byte key (snapshot keygen); default $SECUREKV_SNAPSHOT_KEY_FILE.")(fn)
        return fn

    return wrap


def _choose(key_file: str | None, passphrase_file: str | None, plaintext: bool):
    from securekv.snapcrypt.keys import KeySourceError, choose, loosely_protected

    try:
        choice = choose(key_file, passphrase_file, plaintext, os.environ)
    except KeySourceError as exc:
        die(EXIT_ERROR, exc)
    if choice.path and loosely_protected(choice.path):
        sys.stderr.write(f"warning: {choice.path} is readable by group or others; it should be mode 0600\n")
    return choice


@click.group("snapshot", cls=SubGroup)
def snapshot_grp() -> None:
    """Snapshot commands (encrypted by default)."""


@snapshot_grp.command("save")
@click.argument("args", nargs=-1)
@_key_options("Write an unencrypted etcd snapshot (holds every key and value in clear).")
@click.option("--cipher", type=click.Choice(["aes-256-gcm", "chacha20-poly1305"], case_sensitive=False),
              default="aes-256-gcm", show_default=True, help="AEAD for the chunks.")
@click.option("--backup-dir", default=None, metavar="DIR",
              help="Instead of FILE: write DIR/securekv-backup-<UTC time>.snap and keep the newest --retain.")
@click.option("--retain", default=7, show_default=True, type=click.IntRange(min=1),
              help="With --backup-dir: backups kept (older ones are deleted).")
@pass_ctl
def snapshot_save(ctl: Ctl, args: tuple[str, ...], encryption_key_file: str | None, passphrase_file: str | None,
                  plaintext: bool, cipher: str, backup_dir: str | None, retain: int) -> None:
    """Stream a snapshot of one endpoint's backend to FILE (encrypted, atomically, checksum verified)."""
    import contextlib

    from securekv.client.snapshot import Encryption
    from securekv.snapcrypt import backupdir
    from securekv.snapcrypt.format import CIPHER_BY_NAME

    if len(args) != (0 if backup_dir else 1):
        die(EXIT_BAD_ARGS, "snapshot save expects one argument" if not backup_dir
            else "snapshot save takes no FILE with --backup-dir")
    if len(ctl.endpoints) != 1:
        die(EXIT_INTERRUPTED, f"snapshot must be requested to one selected node, not multiple [{' '.join(ctl.endpoints)}]")
    choice = _choose(encryption_key_file, passphrase_file, plaintext)
    if choice.source is None and not choice.plaintext:
        die(EXIT_ERROR, f"refusing to write an unencrypted snapshot: {ENCRYPTION_HELP}; "
                        "or pass --plaintext for an unencrypted etcd-format file")
    encryption = None if choice.plaintext else Encryption(choice.source, cipher=CIPHER_BY_NAME[cipher.lower()])
    held = contextlib.ExitStack()
    if backup_dir:
        try:
            os.makedirs(backup_dir, mode=0o700, exist_ok=True)
            held.enter_context(backupdir.exclusive(backup_dir))
            backupdir.remove_stale_parts(backup_dir)
        except (OSError, backupdir.BackupBusy) as exc:
            held.close()
            die(EXIT_ERROR, exc if isinstance(exc, backupdir.BackupBusy) else f"{backup_dir}: {exc.strerror or exc}")
        path = str(backupdir.backup_path(backup_dir, time.time()))
    else:
        path = args[0]
    with held:
        _save(ctl, path, encryption)
        if backup_dir:
            backupdir.rotate(backup_dir, retain)
    click.echo(f"Snapshot saved at {path}")


def _save(ctl: Ctl, path: str, encryption: Any) -> None:
    from securekv.client.errors import ClientError

    c = ctl.client()
    timeout = ctl.command_timeout if ctl.command_timeout_set else None
    try:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            # Progress goes to stderr so stdout stays etcdctl's single "Snapshot saved" line.
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), transient=True, console=Console(stderr=True)) as bar:
                task = bar.add_task("snapshot", total=None)
                c.snapshot_save(path, progress=lambda done, total: bar.update(task, completed=done, total=total),
                                timeout=timeout, encryption=encryption)
        else:
            c.snapshot_save(path, timeout=timeout, encryption=encryption)
    except ClientError as exc:
        die(EXIT_INTERRUPTED, exc)
    except OSError as exc:
        die(EXIT_INTERRUPTED, f"could not open {path}.part ({exc.strerror})")


@snapshot_grp.command("keygen")
@click.argument("args", nargs=-1)
def snapshot_keygen(args: tuple[str, ...]) -> None:
    """Write a new random 32-byte snapshot key to FILE (mode 0600; never overwrites)."""
    from securekv.snapcrypt.keys import KeySourceError, keygen

    if len(args) != 1:
        die(EXIT_BAD_ARGS, "snapshot keygen requires exactly one argument")
    try:
        kid = keygen(args[0])
    except KeySourceError as exc:
        die(EXIT_ERROR, exc)
    click.echo(f"Key written to {args[0]} (key id {kid.hex()}); keep a copy off this machine: "
               "without it the snapshots it encrypts cannot be restored")


# -- status ------------------------------------------------------------------------------------
def _created(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def encrypted_status_fields(st: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """(table header, row, JSON object) of an EncryptedStatus. With a key the first four columns
    are etcdctl's (hash, revision, total keys, total size of the decrypted file)."""
    from securekv.client.gofmt import humanize_bytes

    h = st.header
    revision = f"{h.revision}+" if h.revision_is_lower_bound else str(h.revision)
    head: list[str] = []
    row: list[str] = []
    obj: dict[str, Any] = {}
    if st.verified:  # the decrypted file's own numbers, as etcdctl computes them
        head += ["hash", "revision", "total keys", "total size"]
        row += [f"{st.hash:x}", str(st.revision), str(st.total_key), humanize_bytes(st.total_size)]
        obj.update(hash=st.hash, revision=st.revision, totalKey=st.total_key, totalSize=st.total_size)
    else:
        head += ["revision", "size"]
        row += [revision, humanize_bytes(h.plaintext_size)]
        obj.update(revision=h.revision, size=h.plaintext_size)
    head += ["cluster id", "member id", "created", "cipher", "kdf", "key id"]
    row += [f"{h.cluster_id:x}", f"{h.member_id:x}", _created(h.created), h.cipher_name,
            h.kdf_name if h.kdf == 0 else f"scrypt(N=2^{h.log_n},r={h.r},p={h.p})", h.key_id.hex()]
    obj.update(encrypted=True, version=h.version, clusterID=h.cluster_id, memberID=h.member_id,
               created=_created(h.created), cipher=h.cipher_name, kdf=h.kdf_name, keyID=h.key_id.hex(),
               fileSize=st.file_size, authenticated=st.verified)
    if h.kdf:
        obj.update(scryptLogN=h.log_n, scryptR=h.r, scryptP=h.p)
    if h.revision_is_lower_bound and not st.verified:
        obj["revisionIsLowerBound"] = True
    if st.verified:
        obj["sha256"] = st.sha256.hex()
    return head, row, obj


@snapshot_grp.command("status")
@click.argument("args", nargs=-1)
@_key_options(None)
@pass_ctl
def snapshot_status(ctl: Ctl, args: tuple[str, ...], encryption_key_file: str | None,
                    passphrase_file: str | None) -> None:
    """Hash, revision, key count and size of a snapshot file; for an encrypted one the header
    (no key needed) and, with a key, etcd's fields of the authenticated content."""
    from securekv.client import boltread
    from securekv.snapcrypt import files
    from securekv.snapcrypt.format import SnapshotCryptError

    if len(args) != 1:
        die(EXIT_BAD_ARGS, "snapshot status requires exactly one argument")
    printer = ctl.printer
    path = args[0]
    try:
        kind = files.detect(path)
    except OSError:
        kind = files.Kind.UNKNOWN  # boltread reports it with etcdctl's text
    if kind is not files.Kind.ENCRYPTED:
        try:
            st = boltread.snapshot_status(path)
        except boltread.BoltError as exc:
            die(EXIT_ERROR, exc)
        except OSError as exc:
            die(EXIT_ERROR, f"stat {path}: {(exc.strerror or str(exc)).lower()}")
        ctl.show("db_status", st)
        return
    choice = _choose(encryption_key_file, passphrase_file, False)
    try:
        est = files.status(path, choice.source)
    except SnapshotCryptError as exc:
        die(EXIT_ERROR, f"{path}: {exc}")
    except boltread.BoltError as exc:
        die(EXIT_ERROR, exc)
    except OSError as exc:
        die(EXIT_ERROR, f"{path}: {exc.strerror or exc}")
    from securekv.client import table

    head, row, obj = encrypted_status_fields(est)
    if printer.fmt == "json":
        printer.json(obj)
    elif printer.fmt == "table":
        printer.out.write(table.render(head, [row]).encode())
        printer.out.flush()
    else:
        printer.line(", ".join(row))


# -- restore -----------------------------------------------------------------------------------
@snapshot_grp.command("restore")
@click.argument("args", nargs=-1)
@click.option("--data-dir", default="", help="Path to the data directory (default: NAME.etcd).")
@click.option("--wal-dir", default="", help="Path to the WAL directory (default: DATA-DIR/member/wal).")
@click.option("--initial-cluster", default="default=http://localhost:2380",
              help="Initial cluster configuration for restore bootstrap.")
@click.option("--initial-cluster-token", default="etcd-cluster",
              help="Initial cluster token for the cluster during restore bootstrap.")
@click.option("--initial-advertise-peer-urls", default="http://localhost:2380",
              help="List of this member's peer URLs to advertise to the rest of the cluster.")
@click.option("--name", default="default", help="Human-readable name for this member.")
@click.option("--skip-hash-check", is_flag=True,
              help="Ignore snapshot integrity hash value (required if copied from data directory).")
@_key_options("Accept an unencrypted snapshot although a key is configured.")
def snapshot_restore(args: tuple[str, ...], data_dir: str, wal_dir: str, initial_cluster: str,
                     initial_cluster_token: str, initial_advertise_peer_urls: str, name: str,
                     skip_hash_check: bool, encryption_key_file: str | None, passphrase_file: str | None,
                     plaintext: bool) -> None:
    """Restore a snapshot (encrypted, securekv's or etcd 3.4's) into a new securekv data directory."""
    from securekv.server.restore import RestoreConfig, RestoreError, restore
    from securekv.snapcrypt import files

    if len(args) != 1:
        die(EXIT_BAD_ARGS, "snapshot restore requires exactly one argument")
    path = args[0]
    choice = _choose(encryption_key_file, passphrase_file, plaintext)

    def log(msg: str, **fields: Any) -> None:
        # etcdctl's zap lines on stderr (info level, epoch seconds), with the fields it logs.
        line = {"level": "info", "ts": time.time(), "caller": "securekv/restore", "msg": msg, **fields}
        sys.stderr.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stderr.flush()

    try:
        kind = files.detect(path)
    except OSError:
        kind = None  # restore reports the open error with etcdctl's text
    opener = None
    if kind is files.Kind.ENCRYPTED:
        if choice.plaintext:
            die(EXIT_ERROR, f"{path} is an encrypted snapshot; --plaintext only restores unencrypted ones: "
                            "give --encryption-key-file or --passphrase-file")
        if choice.source is None:
            die(EXIT_ERROR, f"{path} is an encrypted snapshot: give --encryption-key-file FILE or "
                            "--passphrase-file FILE (or set SECUREKV_SNAPSHOT_KEY_FILE)")
        opener = _decrypting_opener(choice.source, log)
    elif kind is not None and choice.source is not None and not choice.plaintext:
        die(EXIT_ERROR, f"{path} is not an encrypted securekv snapshot, but a key was given ({choice.origin}); "
                        "pass --plaintext to restore an unencrypted etcd snapshot")

    cfg = RestoreConfig(path, name=name, data_dir=data_dir, wal_dir=wal_dir,
                        peer_urls=initial_advertise_peer_urls, initial_cluster=initial_cluster,
                        initial_cluster_token=initial_cluster_token, skip_hash_check=skip_hash_check)
    try:
        restore(cfg, log=log, open_file=opener)
    except RestoreError as exc:
        die(EXIT_ERROR, exc)


def _decrypting_opener(source: Any, log: Callable[..., None]) -> Callable[[str, str], Any]:
    """Decrypt into a nameless temp file beside the target, authenticating every chunk before
    the restore reads (let alone writes) anything."""
    from securekv.server.restore import RestoreError
    from securekv.snapcrypt import files
    from securekv.snapcrypt.format import SnapshotCryptError

    def open_encrypted(path: str, beside: str) -> Any:
        try:
            # no digest here: the restore checks etcd's own SHA-256 trailer of the plaintext next
            fh, header, _ = files.decrypt_to_private_file(path, source, files.nearest_dir(beside), digest=False)
        except SnapshotCryptError as exc:
            raise RestoreError(f"{path}: {exc}") from None
        except OSError as exc:
            raise RestoreError(f"open {path}: {(exc.strerror or str(exc)).lower()}") from None
        log("decrypted and authenticated snapshot", path=path, cipher=header.cipher_name, kdf=header.kdf_name,
            **{"key-id": header.key_id.hex(), "revision": header.revision, "size": header.plaintext_size})
        return fh

    return open_encrypted


__all__ = ["snapshot_grp"]
