"""Encrypted snapshots: the file format (``format``, pure), key sources (``keys``) and whole-file
helpers (``files``). The format is specified in docs/snapshots.md."""
