"""SortedKeys (the store's two-level sorted key set) against a plain sorted list.

The chunk size is shrunk so that a few dozen keys exercise chunk splits, emptied chunks and
range scans that cross chunk boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securekv.mvcc import sortedkeys
from securekv.mvcc.sortedkeys import SortedKeys

keys = st.binary(max_size=3)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sortedkeys, "_LOAD", 2)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), keys), max_size=60), st.lists(st.tuples(keys, st.one_of(st.none(), keys)),
                                                                       max_size=8))
def test_sorted_keys_match_a_sorted_list(ops, scans) -> None:
    sortedkeys._LOAD = 2  # hypothesis runs the body outside the fixture's scope on replay
    sk, model = SortedKeys(), set()
    for add, k in ops:
        if add and k not in model:
            sk.add(k)
            model.add(k)
        elif not add and k in model:
            sk.remove(k)
            model.discard(k)
        assert (k in sk) == (k in model)
    ordered = sorted(model)
    assert list(sk) == ordered and len(sk) == len(ordered)
    for start, end in scans:
        want = [k for k in ordered if k >= start and (end is None or k < end)]
        assert list(sk.irange(start, end)) == want
    assert list(SortedKeys(ordered)) == ordered
