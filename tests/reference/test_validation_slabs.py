"""Validation of irregular layouts (no small grid): slabs split them, only the rest is swept.

Regression: brick layouts (row blocks cut at other columns each) used to go through a
pairwise sweep building a ChunkStorageMetadata per test; at 8,192 chunks that took
longer than DCP's own validation (found by the plan-validation conformance suite).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ckptconf.reference import validation
from ckptconf.reference.validation import chunk_layout_problems
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def bricks(blocks: int, per_block: int, rows: int = 2, width: int = 4096) -> list:
    piece = width // per_block
    out = []
    for b in range(blocks):
        shift = (b * 37) % piece
        cuts = [0] + [k * piece + shift for k in range(1, per_block)] + [width]
        out += [chunk((b * rows, lo), (rows, hi - lo)) for lo, hi in zip(cuts, cuts[1:])]
    return out


@pytest.fixture
def counted_pairs(monkeypatch):
    calls = []
    real = validation._boxes_overlap

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(validation, "_boxes_overlap", counting)
    return calls


def test_ten_thousand_bricks_validate_without_pairwise_tests(counted_pairs):
    chunks = bricks(100, 100)
    size = (200, 4096)
    assert chunk_layout_problems("t", size, chunks) == []
    assert counted_pairs == []  # every chunk is separated by a slab, none compared pairwise


def test_planted_overlap_and_gap_in_bricks_are_named():
    chunks = bricks(100, 100)
    size = (200, 4096)
    moved = chunks[5050]
    chunks[5050] = chunk((moved.offsets[0], moved.offsets[1] + 1), moved.sizes)
    problems = chunk_layout_problems("t", size, chunks)
    assert any("overlap" in p and str(tuple(chunks[5050].offsets)) in p for p in problems)
    dropped = bricks(100, 100)
    lost = dropped.pop(777)
    (gap,) = chunk_layout_problems("t", size, dropped)
    assert f"{lost.sizes[0] * lost.sizes[1]} of {200 * 4096} elements are not covered" in gap


def test_a_layout_no_slab_separates_is_swept():
    # a pinwheel: four chunks around a centre cell, no dim splits them into disjoint slabs
    chunks = [
        chunk((0, 0), (2, 1)),
        chunk((0, 1), (1, 2)),
        chunk((1, 2), (2, 1)),
        chunk((2, 0), (1, 2)),
    ]
    center = chunk((1, 1), (1, 1))
    saved = validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS
    validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = 0, 0
    try:
        assert chunk_layout_problems("t", (3, 3), chunks + [center]) == []
        (gap,) = chunk_layout_problems("t", (3, 3), chunks)
        assert "1 of 9 elements" in gap
        problems = chunk_layout_problems("t", (3, 3), chunks + [center, chunk((1, 1), (2, 2))])
        assert sum("overlap" in p for p in problems) >= 2
    finally:
        validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = saved


box3 = st.tuples(*[st.integers(0, 4)] * 3, *[st.integers(1, 3)] * 3)


@given(st.lists(box3, min_size=1, max_size=12))
def test_slabs_and_sweep_agree_with_an_element_count_in_3d(boxes):
    size = (5, 5, 5)
    specs = [chunk(b[:3], b[3:]) for b in boxes]
    if any(o + n > m for s in specs for o, n, m in zip(s.offsets, s.sizes, size)):
        return
    counts = np.zeros(size, dtype=np.int64)
    for s in specs:
        counts[tuple(slice(o, o + n) for o, n in zip(s.offsets, s.sizes))] += 1
    saved = validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS
    validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = 0, 0
    try:
        problems = chunk_layout_problems("k", size, specs)
    finally:
        validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = saved
    assert any("overlap" in p for p in problems) == bool((counts > 1).any()), problems
    if not (counts > 1).any() and (counts == 0).any():
        assert any(f"{int((counts == 0).sum())} of 125 elements" in p for p in problems)
