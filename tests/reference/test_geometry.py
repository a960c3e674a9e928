"""Shard geometry agrees with DTensor's own splitting, and chunks tile the tensor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ckptconf.reference.compat import uneven_strided_shard
from ckptconf.reference.geometry import (
    chunk_contains,
    chunk_in_bounds,
    chunk_overlap,
    local_pieces,
    local_shape,
    mesh_coordinates,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

from .strategies import layouts

try:
    from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
except ImportError:  # torch 2.6: only the public form, which asks a DeviceMesh for its coordinate
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    class _MeshAt:
        """What 2.6's ``compute_local_shape_and_global_offset`` asks of a mesh, at a coordinate."""

        def __init__(self, shape, coordinate):
            self.shape, self.coordinate, self.ndim = tuple(shape), list(coordinate), len(shape)

        def get_coordinate(self):
            return self.coordinate

        def size(self, mesh_dim):
            return self.shape[mesh_dim]

    def _compute_local_shape_and_global_offset(global_shape, mesh_shape, coordinate, placements):
        return compute_local_shape_and_global_offset(
            global_shape, _MeshAt(mesh_shape, coordinate), placements
        )


def dtensor_local_indices(shape, mesh, placements, coordinate) -> torch.Tensor:
    """The global indices a rank holds, by DTensor's own split code applied left to right."""
    local = torch.arange(math.prod(shape)).reshape(shape)
    for mesh_dim, placement in enumerate(placements):
        if isinstance(placement, Replicate):
            continue
        parts, _ = placement._split_tensor(
            local, mesh[mesh_dim], with_padding=False, contiguous=True
        )
        local = parts[coordinate[mesh_dim]]
    return local


def assemble(shape, pieces) -> torch.Tensor:
    """A rank's local tensor of global indices, built from our pieces."""
    index = torch.arange(math.prod(shape)).reshape(shape)
    local_size = [0] * len(shape)
    for piece in pieces:
        for d in range(len(shape)):
            local_size[d] = max(local_size[d], piece.local_offsets[d] + piece.sizes[d])
    local = torch.full(local_size, -1, dtype=torch.int64)
    for piece in pieces:
        dst = tuple(slice(o, o + n) for o, n in zip(piece.local_offsets, piece.sizes))
        src = tuple(slice(o, o + n) for o, n in zip(piece.global_offsets, piece.sizes))
        local[dst] = index[src]
    return local


@given(layouts())
def test_local_pieces_hold_what_dtensor_holds(layout):
    shape, mesh, placements = layout
    for coordinate in mesh_coordinates(mesh):
        try:
            expected = dtensor_local_indices(shape, mesh, placements, coordinate)
        except AssertionError:  # torch 2.6's _StridedShard asserts even sharding
            if uneven_strided_shard():
                raise
            assume(False)  # no DTensor of this torch has the layout
        pieces = local_pieces(shape, mesh, placements, coordinate)
        assert local_shape(shape, mesh, placements, coordinate) == tuple(expected.shape)
        if expected.numel():
            torch.testing.assert_close(assemble(shape, pieces), expected, rtol=0, atol=0)


@given(layouts(strided=False))
def test_contiguous_layouts_match_compute_local_shape_and_global_offset(layout):
    shape, mesh, placements = layout
    for coordinate in mesh_coordinates(mesh):
        size, offset = _compute_local_shape_and_global_offset(
            shape, mesh, list(coordinate), placements
        )
        pieces = local_pieces(shape, mesh, placements, coordinate)
        assert len(pieces) == 1
        assert pieces[0].sizes == tuple(size)
        assert pieces[0].global_offsets == tuple(offset)


@given(layouts())
def test_pieces_tile_the_tensor_once_per_replica(layout):
    shape, mesh, placements = layout
    counts = np.zeros(shape, dtype=np.int64)
    for coordinate in mesh_coordinates(mesh):
        for piece in local_pieces(shape, mesh, placements, coordinate):
            assert chunk_in_bounds(shape, piece.chunk())
            counts[tuple(slice(o, o + n) for o, n in zip(piece.global_offsets, piece.sizes))] += 1
    replicas = math.prod(n for n, p in zip(mesh, placements) if isinstance(p, Replicate))
    assert (counts == replicas).all()


def test_uneven_and_empty_shards():
    # 7 rows on 3 ranks: torch.chunk gives 3, 3, 1
    sizes = [local_pieces((7, 2), (3,), [Shard(0)], (r,))[0].sizes[0] for r in range(3)]
    assert sizes == [3, 3, 1]
    # 1 row on 4 ranks: ranks 1..3 are empty, placed at offset 1 as DTensor places them
    pieces = [local_pieces((1, 5), (4,), [Shard(0)], (r,))[0] for r in range(4)]
    assert [p.sizes for p in pieces] == [(1, 5), (0, 5), (0, 5), (0, 5)]
    assert [p.global_offsets for p in pieces] == [(0, 0), (1, 0), (1, 0), (1, 0)]


def test_strided_shard_gives_non_contiguous_rows():
    # S(0) then SS(0, sf=2) over 8 rows on a 2x2 mesh: rank (0, 0) holds rows 0 and 2
    pieces = local_pieces((8,), (2, 2), [Shard(0), _StridedShard(0, split_factor=2)], (0, 0))
    assert [(p.global_offsets, p.sizes) for p in pieces] == [((0,), (1,)), ((2,), (1,))]


def test_partial_placement_is_rejected_with_a_reason():
    from torch.distributed.tensor import Partial

    with pytest.raises(ValueError, match="Partial must be reduced"):
        local_pieces((4,), (2,), [Partial()], (0,))


def test_shard_dim_out_of_range_names_the_dim():
    with pytest.raises(ValueError, match="shards dim 2, but the tensor has 2 dims"):
        local_pieces((4, 4), (2,), [Shard(2)], (0,))


boxes = st.tuples(st.integers(0, 6), st.integers(0, 4))


@given(st.lists(boxes, min_size=2, max_size=2), st.lists(boxes, min_size=2, max_size=2))
def test_chunk_overlap_matches_element_masks(a, b):
    def chunk(spec):
        return ChunkStorageMetadata(
            offsets=torch.Size([o for o, _ in spec]), sizes=torch.Size([n for _, n in spec])
        )

    def mask(spec):
        m = np.zeros((12, 12), dtype=bool)
        m[tuple(slice(o, o + n) for o, n in spec)] = True
        return m

    both = chunk_overlap(chunk(a), chunk(b))
    expected = mask(a) & mask(b)
    if both is None:
        assert not expected.any()
    else:
        assert (mask(list(zip(both.offsets, both.sizes))) == expected).all()
        assert chunk_contains(chunk(a), both) and chunk_contains(chunk(b), both)
