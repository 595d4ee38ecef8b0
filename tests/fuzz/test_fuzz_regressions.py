"""Inputs the fuzzers found that once escaped a decoder's typed error; each must stay answered.

Every entry: (target, input, what used to happen). Add new findings here with the exact input
(the hypothesis "Falsifying example" or atheris's crash file).
"""

from __future__ import annotations

import time

import pytest

from targets import TARGETS, check

LAUGHS = b"".join(f"{a}: &{a} [{','.join([f'*{p}'] * 10 if p else ['x'] * 10)}]\n".encode()
                  for a, p in zip("abcdefghi", ["", *"abcdefgh"]))

FOUND = [
    ("cfssl-csr", b"\x80", "UnicodeDecodeError reading a CSR file that is not UTF-8"),
    ("cfssl-config", b"\x80{}", "UnicodeDecodeError reading a signing config that is not UTF-8"),
    ("yaml-config", b"\x80ame: m1\n", "UnicodeDecodeError reading a config file that is not UTF-8"),
    ("yaml-config", b"name: 2001-13-45\n", "ValueError from PyYAML's timestamp constructor"),
    ("yaml-config", b"name: !!int 'zz'\n", "ValueError from an explicitly typed scalar"),
    ("yaml-config", b"name: !!float 'zz'\n", "ValueError from an explicitly typed scalar"),
    ("yaml-config", b"name: " + b"[" * 5000 + b"]" * 5000, "RecursionError in the YAML composer"),
    ("yaml-config", LAUGHS + b"listen-client-urls: [*i]\n", "a hang: aliases expanded by str() (10^9 items)"),
    ("yaml-config", LAUGHS + b"heartbeat-interval: *i\n", "a hang: aliases expanded by str() (10^9 items)"),
    ("yaml-config", LAUGHS + b"initial-cluster: {k: *i}\n", "a hang: aliases expanded by str() (10^9 items)"),
    ("yaml-config", b"name: m1\ninitial-cluster: m1=https://127.0.0[.1:2380\n",
     "ValueError (Invalid IPv6 URL) from urlsplit; the same from a --listen-client-urls flag (atheris)"),
    ("yaml-config", b"name: m1\nlisten-client-urls: https://[::1\n", "ValueError (Invalid IPv6 URL) from urlsplit"),
    ("yaml-config", b"name: m1\n&listen-client-urls: https://127.0.0.1:2379\n",
     "TypeError sorting the keys: an anchor made a key None (atheris)"),
    ("yaml-config", b"1: 2\nname: m1\n", "TypeError sorting the keys: a numeric key"),
    ("gateway-json", b"\x00" + b"[" * 100_000 + b"]" * 100_000, "RecursionError in the JSON decoder"),
]


@pytest.mark.parametrize("name,data,what", FOUND, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FOUND)])
def test_fuzz_regression(name: str, data: bytes, what: str) -> None:
    started = time.monotonic()
    check(TARGETS[name], data)
    assert time.monotonic() - started < 10, f"{name} took too long on a finding ({what})"
