"""Where snapshot keys come from: key files, passphrase files, ``SECUREKV_SNAPSHOT_KEY_FILE``,
and ``snapshot keygen``.

Every problem with a key source is the operator's (a UsageError) and is reported before any
network call or any write, naming the file and how to fix it. Secrets never appear in a
message or a repr.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Mapping

import attrs

from securekv.errors import UsageError
from securekv.fsutil import create_temp, fsync_dir
from securekv.snapcrypt.format import KEY_LEN, KeyFileKey, KeySource, Passphrase, key_id

ENV_KEY_FILE = "SECUREKV_SNAPSHOT_KEY_FILE"
MIN_PASSPHRASE = 8
MAX_SECRET_FILE = 4096  # a key or passphrase file larger than this is certainly the wrong file
HOW_TO_MAKE_A_KEY = "make one with `securekv ctl snapshot keygen FILE`"


class KeySourceError(UsageError):
    """A key file or passphrase file cannot be used (missing, unreadable, wrong size, empty)."""


def _read_secret(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise KeySourceError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE:
        raise KeySourceError(f"{what} {path} is larger than {MAX_SECRET_FILE} bytes: not a {what}")
    return data


def read_key_file(path: str) -> KeyFileKey:
    """32 raw bytes (what ``keygen`` writes), or 64 hex digits (``openssl rand -hex 32``)."""
    data = _read_secret(path, "key file")
    if len(data) == KEY_LEN:
        return KeyFileKey(data)
    text = data.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return KeyFileKey(bytes.fromhex(text.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeySourceError(f"key file {path} must hold {KEY_LEN} bytes (or {2 * KEY_LEN} hex digits), "
                         f"it holds {len(data)} bytes; {HOW_TO_MAKE_A_KEY}")


def read_passphrase_file(path: str) -> Passphrase:
    """The file's bytes without one trailing newline; at least MIN_PASSPHRASE characters."""
    data = _read_secret(path, "passphrase file")
    for end in (b"\r\n", b"\n"):
        if data.endswith(end):
            data = data[: -len(end)]
            break
    if not data:
        raise KeySourceError(f"passphrase file {path} is empty")
    if len(data.decode("utf-8", "replace")) < MIN_PASSPHRASE:
        raise KeySourceError(f"the passphrase in {path} is shorter than {MIN_PASSPHRASE} characters")
    return Passphrase(data)


def loosely_protected(path: str) -> bool:
    """Whether group or others may read the file (worth a warning: it guards every backup)."""
    try:
        return bool(stat.S_IMODE(os.stat(path).st_mode) & 0o077)
    except OSError:
        return False


@attrs.frozen
class KeyChoice:
    """What the operator asked for: a key source, explicit ``--plaintext``, or nothing."""

    source: KeySource | None
    origin: str = ""  # e.g. "--encryption-key-file /etc/securekv/backup.key"
    plaintext: bool = False
    explicit: bool = False  # from a flag (not only the environment)
    path: str = ""


def choose(key_file: str | None, passphrase_file: str | None, plaintext: bool,
           environ: Mapping[str, str]) -> KeyChoice:
    """Flags win over ``SECUREKV_SNAPSHOT_KEY_FILE``; contradictions are refused."""
    if key_file and passphrase_file:
        raise KeySourceError("give either --encryption-key-file or --passphrase-file, not both")
    if plaintext and (key_file or passphrase_file):
        raise KeySourceError("--plaintext contradicts --encryption-key-file/--passphrase-file")
    if plaintext:
        return KeyChoice(None, "--plaintext", plaintext=True, explicit=True)
    if key_file:
        return KeyChoice(read_key_file(key_file), f"--encryption-key-file {key_file}", explicit=True, path=key_file)
    if passphrase_file:
        return KeyChoice(read_passphrase_file(passphrase_file), f"--passphrase-file {passphrase_file}",
                         explicit=True, path=passphrase_file)
    env = environ.get(ENV_KEY_FILE, "")
    if env:
        return KeyChoice(read_key_file(env), f"{ENV_KEY_FILE}={env}", path=env)
    return KeyChoice(None)


def keygen(path: str | os.PathLike[str], random: Callable[[int], bytes] = os.urandom) -> bytes:
    """Write a new 32-byte key to ``path`` (0600, fsynced); refuses an existing path. Returns
    the key id. Written to a temp name and hard-linked into place, so ``path`` never holds a
    partial key and an existing file is never replaced (link fails with EEXIST)."""
    target = Path(path)
    if os.path.lexists(target):
        raise KeySourceError(f"{target} exists; refusing to overwrite a key (an old backup may need it)")
    secret = random(KEY_LEN)
    try:
        fd, tmp = create_temp(target.parent, f".{target.name}.keygen-")
    except OSError as exc:
        raise KeySourceError(f"cannot create {target}: {exc.strerror or exc}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask says
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise KeySourceError(f"{target} exists; refusing to overwrite a key (an old backup may need it)") from None
        except OSError as exc:
            raise KeySourceError(f"cannot create {target}: {exc.strerror or exc}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(target.parent)
    return key_id(KeyFileKey(secret))


__all__ = ["ENV_KEY_FILE", "KeyChoice", "KeySourceError", "choose", "keygen", "loosely_protected",
           "read_key_file", "read_passphrase_file"]
