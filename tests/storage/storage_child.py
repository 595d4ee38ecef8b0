"""Child process for the storage tests (run as a script, never collected by pytest).

    storage_child.py wal-writer DIR SEED   append+sync batches forever, print each acked index
    storage_child.py wal-fsize DIR         append under a small RLIMIT_FSIZE until a write fails
    storage_child.py lock DIR              take the data-dir lock, print "locked", wait for stdin
    storage_child.py backend-writer PATH   commit batches forever, print each committed index
"""

from __future__ import annotations

import os
import random
import sys

from securekv.errors import UsageError
from securekv.storage import WAL, Backend, HardState, Metadata, Revision, WalEntry, WriteBatch, \
    lock_data_dir
from storage_helpers import entry_data


def wal_writer(directory: str, seed: int) -> None:
    rng = random.Random(seed)
    if WAL.exists(directory):
        wal, state = WAL.open(directory, segment_size=64 * 1024)
    else:
        wal = WAL.create(directory, Metadata(1, 2), segment_size=64 * 1024)
    index = wal.last_index
    while True:
        batch = [WalEntry(i, 1, entry_data(i)) for i in range(index + 1, index + 1 + rng.randint(1, 16))]
        index = batch[-1].index
        wal.append(batch, HardState(1, 1, index))
        wal.sync()
        sys.stdout.write(f"{index}\n")
        sys.stdout.flush()


def wal_fsize(directory: str) -> None:
    """Hit the file size limit mid-batch: the write fails, the WAL then refuses use."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    wal = WAL.create(directory, Metadata(1, 2))
    limit = os.path.getsize(wal.segments()[0]) + 5000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    acked = 0
    try:
        while True:
            batch = [WalEntry(i, 1, entry_data(i)) for i in range(acked + 1, acked + 4)]
            wal.append(batch)
            wal.sync()
            acked = batch[-1].index
    except OSError as exc:
        print(f"failed {acked} {exc.errno}", flush=True)
    try:
        wal.append([WalEntry(wal.last_index + 1, 1, b"x")])
    except UsageError as exc:
        print(f"refused {exc}", flush=True)


def lock(directory: str) -> None:
    try:
        held = lock_data_dir(directory)
    except UsageError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    sys.stdin.read()
    held.release()


def backend_writer(path: str) -> None:
    backend = Backend.open(path)
    index = backend.consistent_index()
    while True:
        index += 1
        backend.commit(WriteBatch(puts=[Revision(index, 0, b"k%d" % index, b"v%d" % index)],
                                  consistent_index=index))
        sys.stdout.write(f"{index}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "wal-writer":
        wal_writer(sys.argv[2], int(sys.argv[3]))
    elif mode == "wal-fsize":
        wal_fsize(sys.argv[2])
    elif mode == "lock":
        lock(sys.argv[2])
    elif mode == "backend-writer":
        backend_writer(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
