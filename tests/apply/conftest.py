"""The applier tests drive the same request builders as the MVCC tests (tests/mvcc/mvcc_support.py)."""

import sys
from pathlib import Path

_MVCC_TESTS = str(Path(__file__).resolve().parent.parent / "mvcc")
if _MVCC_TESTS not in sys.path:
    sys.path.insert(0, _MVCC_TESTS)
