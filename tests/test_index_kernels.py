"""The index's compiled kernels (actdb/index/kernels.py) against their references: the n-gram
statistics against the numpy path of stats.segment_stats, the projection's top and bottom k
against a stable sort, on rows built to hit every branch (counts past the histogram, ties,
fewer n-grams than k, empty rows, p at 0 and 1). The counting kernel is checked against a direct
np.add.at computation in test_index_device.py, and whole indexes with and without the kernels
there too."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from actdb.index import count, stats


@pytest.fixture(scope="module")
def kernels():
    k = count.compiled()
    assert k is not None, "the compiled index kernels did not load (numba is a dependency)"
    return k


def _segments(rng):
    for trial in range(150):
        ch, W = int(rng.integers(1, 10)), int(rng.integers(1, 260))
        kind = trial % 6
        if kind == 0:
            seg = rng.integers(0, 3, (ch, W))                                         # many ties
        elif kind == 1:
            seg = (rng.random((ch, W)) < 0.05) * rng.integers(1, 10000, (ch, W))      # counts past HIST
        elif kind == 2:
            seg = rng.geometric(0.3, (ch, W)) - 1
        elif kind == 3:
            seg = np.zeros((ch, W), int)
            seg[:, :1] = rng.integers(0, 5000, (ch, 1))                               # one n-gram, or none
        elif kind == 4:
            seg = rng.choice([0, 1, 4095, 4096, 4097, 9000], (ch, W))                 # at the histogram's edge
        else:
            seg = np.zeros((ch, W), int)                                              # dead rows
        padded = np.zeros((ch, W + 7), np.int32)
        padded[:, 3:3 + W] = seg
        yield padded[:, 3:3 + W]    # a strided view, as unit_tables passes a column range of the counts


@pytest.mark.slow
def test_segment_stats_kernel_equals_numpy(kernels):
    rng = np.random.default_rng(0)
    for seg in _segments(rng):
        for k in (1, 3, 64):
            for p in (0.0, 0.5, 0.95, 1.0):
                got = stats._segment_stats_compiled(kernels, seg, k, p)
                want = stats._segment_stats_numpy(seg, k, p)
                for f in dataclasses.fields(want):
                    a, b = getattr(got, f.name), getattr(want, f.name)
                    assert a.dtype == b.dtype, f.name
                    np.testing.assert_array_equal(a, b, err_msg=f"{f.name} k={k} p={p}\n{seg}")
    assert stats.segment_stats(seg, 3, 0.5).total.shape == (seg.shape[0],)   # the default path runs


@pytest.mark.parametrize("n", [1, 7, 64, 65, 1000, 5000])
def test_top_bottom_kernel_equals_stable_sort(kernels, n):
    rng = np.random.default_rng(n)
    for s in (rng.standard_normal((13, n)).astype(np.float32),
              rng.integers(-3, 4, (13, n)).astype(np.float32),                      # ties everywhere
              np.where(rng.random((13, n)) < 0.5, np.float32(-0.0), np.float32(0.0)),
              np.sort(rng.standard_normal((13, n)).astype(np.float32), axis=1)):    # worst order for the lists
        for k in {1, min(n, 5), min(n, 50)}:
            top, bot = np.empty((13, k), np.int64), np.empty((13, k), np.int64)
            kernels.top_bottom_k(s, top, bot)
            np.testing.assert_array_equal(top, np.argsort(-s, axis=1, kind="stable")[:, :k])
            np.testing.assert_array_equal(bot, np.argsort(s, axis=1, kind="stable")[:, :k])
