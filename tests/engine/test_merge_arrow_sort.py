"""`_sort_order`, the merge's multi-key sort: the same order as `np.lexsort` (ties in row order) whatever the keys'
widths — narrow keys packed as they are, wide ones (64-bit hashes, microsecond times) ranked first, keys that do
not fit left to the tied rows' second sort."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from openprofile.engine.merge_arrow import _sort_order

KINDS = {
    "few": (np.int64, st.integers(0, 3)),
    "signed": (np.int64, st.integers(-(1 << 63), (1 << 63) - 1)),
    "hash": (np.uint64, st.integers(0, (1 << 64) - 1)),
    "spread": (np.int64, st.integers(-4, 4).map(lambda v: v * 10**15)),
}


@st.composite
def keys(draw: st.DrawFn) -> list[np.ndarray]:
    rows = draw(st.integers(0, 60))
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=7))
    return [np.array(draw(st.lists(KINDS[k][1], min_size=rows, max_size=rows)), dtype=KINDS[k][0]) for k in kinds]


@settings(max_examples=400, deadline=None)
@given(keys())
def test_sort_order_is_lexsorts(columns: list[np.ndarray]) -> None:
    assert np.array_equal(_sort_order(*columns), np.lexsort(columns[::-1]))


def test_wide_keys_with_ties_beyond_the_packed_ones() -> None:
    rng = np.random.default_rng(7)
    rows = 5_000
    group = rng.integers(0, 50, rows)
    time = rng.integers(0, 3, rows) * (1 << 50)  # wide, few values: ranked, then packed
    hashes = rng.integers(0, 1 << 63, rows, dtype=np.uint64) * np.uint64(2)
    ties = np.zeros(rows, dtype=np.int64)  # every row tied on the packed keys but for the hash
    columns = [group, time, ties, hashes, rng.integers(0, 2, rows)]
    assert np.array_equal(_sort_order(*columns), np.lexsort(columns[::-1]))
