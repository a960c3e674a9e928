"""Exact values of shard geometry at its edges: touching, empty and out-of-bounds chunks,
uneven and strided splits, and the errors for layouts that cannot be saved.

Written to kill the mutants that survived scripts/mutation (docs/mutation.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ckptconf.reference.geometry import (
    LocalPiece,
    Run,
    chunk_contains,
    chunk_in_bounds,
    chunk_overlap,
    chunk_volume,
    dtensor_pieces,
    local_pieces,
    local_runs,
    local_shape,
    mesh_coordinates,
)
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
from torch.distributed.tensor import Partial, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def as_tuple(c: ChunkStorageMetadata | None):
    return None if c is None else (tuple(c.offsets), tuple(c.sizes))


def test_chunk_volume():
    assert chunk_volume(chunk((1, 2), (3, 4))) == 12
    assert chunk_volume(chunk((0, 0), (0, 4))) == 0
    assert chunk_volume(chunk((), ())) == 1


def test_chunk_overlap_of_touching_nested_and_scalar_chunks():
    assert chunk_overlap(chunk((0, 0), (2, 2)), chunk((2, 0), (2, 2))) is None  # touching rows
    assert chunk_overlap(chunk((0, 0), (2, 2)), chunk((0, 2), (2, 2))) is None  # touching cols
    assert chunk_overlap(chunk((0,), (0,)), chunk((0,), (3,))) is None  # empty
    assert as_tuple(chunk_overlap(chunk((1, 1), (4, 4)), chunk((2, 0), (1, 9)))) == ((2, 1), (1, 4))
    assert as_tuple(chunk_overlap(chunk((), ()), chunk((), ()))) == ((), ())
    with pytest.raises(ValueError):
        chunk_overlap(chunk((0, 0), (1, 1)), chunk((0,), (1,)))


def test_chunk_contains_needs_both_ends_inside_on_every_dim():
    outer = chunk((2, 2), (4, 4))
    assert chunk_contains(outer, chunk((2, 2), (4, 4)))
    assert chunk_contains(outer, chunk((3, 3), (1, 1)))
    assert not chunk_contains(outer, chunk((1, 2), (2, 2)))  # starts before
    assert not chunk_contains(outer, chunk((5, 2), (2, 2)))  # ends after
    assert not chunk_contains(outer, chunk((2, 1), (2, 2)))
    assert not chunk_contains(outer, chunk((2, 5), (2, 2)))
    assert not chunk_contains(outer, chunk((0, 0), (9, 9)))  # holds outer
    assert not chunk_contains(chunk((0,), (4,)), chunk((3,), (2,)))
    with pytest.raises(ValueError):
        chunk_contains(outer, chunk((2,), (1,)))


def test_chunk_in_bounds_edges():
    size = (4, 3)
    assert chunk_in_bounds(size, chunk((0, 0), (4, 3)))
    assert chunk_in_bounds(size, chunk((4, 3), (0, 0)))  # empty, at the end
    assert not chunk_in_bounds(size, chunk((1, 0), (4, 3)))
    assert not chunk_in_bounds(size, chunk((0, 1), (4, 3)))
    assert not chunk_in_bounds(size, chunk((-1, 0), (1, 3)))
    assert not chunk_in_bounds(size, chunk((0, -1), (4, 1)))
    assert not chunk_in_bounds(size, chunk((2, 0), (-1, 3)))
    assert not chunk_in_bounds(size, chunk((0,), (4,)))
    assert not chunk_in_bounds(size, chunk((0, 0, 0), (1, 1, 1)))
    assert not chunk_in_bounds(size, ChunkStorageMetadata(torch.Size((0, 0)), torch.Size((4,))))
    assert not chunk_in_bounds(size, ChunkStorageMetadata(torch.Size((0,)), torch.Size((4, 3))))
    assert chunk_in_bounds((), chunk((), ()))


def test_local_piece_chunk():
    piece = LocalPiece((2, 0), (0, 0), (3, 5))
    assert as_tuple(piece.chunk()) == ((2, 0), (3, 5))


def test_local_runs_of_uneven_empty_and_strided_splits():
    assert local_runs((7,), (3,), [Shard(0)], (2,)) == [[Run(6, 1)]]
    assert local_runs((7,), (4,), [Shard(0)], (3,)) == [[Run(6, 1)]]  # 2, 2, 2, 1
    assert local_runs((5,), (4,), [Shard(0)], (3,)) == [[]]  # 2, 2, 1, 0
    assert local_runs((0, 3), (2,), [Shard(1)], (1,)) == [[], [Run(2, 1)]]
    assert local_runs((3, 4), (2,), [Replicate()], (1,)) == [[Run(0, 3)], [Run(0, 4)]]
    # Shard(0) then Shard(0): 10 rows -> 5 + 5 -> rank (1, 1) holds rows 8, 9
    assert local_runs((10,), (2, 2), [Shard(0), Shard(0)], (1, 1)) == [[Run(8, 2)]]
    # _StridedShard(0, sf=2) on 8 rows over 2 ranks: each half split in 2; rank 1 holds 2-3, 6-7
    ss = _StridedShard(0, split_factor=2)
    assert local_runs((8,), (2,), [ss], (1,)) == [[Run(2, 2), Run(6, 2)]]
    # split_factor 1 is a plain shard
    assert local_runs((8,), (2,), [_StridedShard(0, split_factor=1)], (1,)) == [[Run(4, 4)]]
    # Shard then strided on a 2 x 2 mesh over 9 rows (uneven), as DTensor's _split_tensor gives
    assert local_runs((9,), (2, 2), [Shard(0), _StridedShard(0, split_factor=2)], (0, 1)) == [
        [Run(2, 1), Run(4, 1)]
    ]
    assert local_runs((9,), (2, 2), [Shard(0), _StridedShard(0, split_factor=2)], (1, 1)) == [
        [Run(6, 1), Run(8, 1)]
    ]
    # strided with more pieces than rows: 2 rows in 3 pieces (1, 1, 0), each over 2 ranks
    ss3 = _StridedShard(0, split_factor=3)
    assert local_runs((2,), (2,), [ss3], (0,)) == [[Run(0, 2)]]
    assert local_runs((2,), (2,), [ss3], (1,)) == [[]]


def test_strided_split_matches_torch_chunk_by_hand():
    # 11 rows, split_factor 3: pieces of 4, 4, 3 rows; each piece split over 2 ranks: 2/2, 2/2, 2/1
    ss = _StridedShard(0, split_factor=3)
    assert local_runs((11,), (2,), [ss], (0,)) == [[Run(0, 2), Run(4, 2), Run(8, 2)]]
    assert local_runs((11,), (2,), [ss], (1,)) == [[Run(2, 2), Run(6, 2), Run(10, 1)]]
    assert local_shape((11,), (2,), [ss], (1,)) == (5,)


def test_local_runs_rejects_inconsistent_mesh_arguments():
    with pytest.raises(ValueError) as info:
        local_runs((4,), (2, 2), [Shard(0)], (0, 0))
    assert str(info.value) == (
        "mesh shape (2, 2), placements (Shard(dim=0),) and coordinate (0, 0) must have one "
        "entry per mesh dim"
    )
    with pytest.raises(ValueError, match="must have one entry per mesh dim"):
        local_runs((4,), (2,), [Shard(0)], (0, 0))
    with pytest.raises(ValueError) as info:
        local_runs((4, 4), (2, 2), [Replicate(), Shard(-1)], (0, 0))
    assert str(info.value) == (
        "placement Shard(dim=-1) on mesh dim 1 shards dim -1, but the tensor has 2 dims"
    )
    with pytest.raises(ValueError, match="shards dim 1, but the tensor has 1 dims"):
        local_runs((4,), (2,), [_StridedShard(1, split_factor=2)], (0,))


def test_partial_message_names_the_placement_and_the_alternatives():
    with pytest.raises(ValueError) as info:
        local_runs((4,), (2,), [Partial()], (0,))
    assert str(info.value) == (
        f"placement {Partial()!r} is not supported for checkpointing: expected Shard, "
        "_StridedShard or Replicate (Partial must be reduced before saving)"
    )


def test_empty_pieces_sit_where_dtensor_puts_them():
    # 2 rows on a 2 x 3 mesh, Shard(0) on mesh dim 1 and Replicate on mesh dim 0: rank (1, 2)
    # holds nothing; its piece is at row 2 (the dim's size), column 0, local offsets 0
    pieces = local_pieces((2, 4), (2, 3), [Replicate(), Shard(0)], (1, 2))
    assert pieces == [LocalPiece((2, 0), (0, 0), (0, 4))]
    # empty on a dim that is not sharded at all (size 0): offset 0 there
    assert local_pieces((3, 0), (2,), [Shard(0)], (1,)) == [LocalPiece((2, 0), (0, 0), (1, 0))]
    assert local_pieces((0, 3), (2,), [Shard(1)], (1,)) == [LocalPiece((0, 2), (0, 0), (0, 1))]
    # strided shard empty on its dim: offset is the dim's size too
    assert local_pieces((1,), (2,), [_StridedShard(0, split_factor=2)], (1,)) == [
        LocalPiece((1,), (0,), (0,))
    ]


def test_strided_pieces_have_local_offsets_in_local_order():
    pieces = local_pieces((8, 3), (2,), [_StridedShard(0, split_factor=2)], (1,))
    assert pieces == [LocalPiece((2, 0), (0, 0), (2, 3)), LocalPiece((6, 0), (2, 0), (2, 3))]
    pieces = local_pieces((3, 8), (2,), [_StridedShard(1, split_factor=2)], (0,))
    assert pieces == [LocalPiece((0, 0), (0, 0), (3, 2)), LocalPiece((0, 4), (0, 2), (3, 2))]


def test_mesh_coordinates_are_row_major():
    assert mesh_coordinates((2, 3)) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert mesh_coordinates((3,)) == [(0,), (1,), (2,)]
    assert mesh_coordinates(()) == [()]


def _fake_dtensor(shape, mesh_shape, placements, coordinate):
    mesh = SimpleNamespace(shape=mesh_shape, get_coordinate=lambda: coordinate)
    return SimpleNamespace(shape=torch.Size(shape), device_mesh=mesh, placements=placements)


def test_dtensor_pieces_use_the_mesh_coordinate():
    value = _fake_dtensor((7, 2), (3,), (Shard(0),), [2])
    assert dtensor_pieces(value) == [LocalPiece((6, 0), (0, 0), (1, 2))]
    value = _fake_dtensor((4, 4), (2, 2), (Shard(1), Shard(0)), [1, 0])
    assert dtensor_pieces(value) == [LocalPiece((0, 2), (0, 0), (2, 2))]


def test_dtensor_pieces_are_empty_off_the_mesh():
    assert dtensor_pieces(_fake_dtensor((4,), (2,), (Shard(0),), None)) == []


def test_runs_of_a_dim_cut_into_several_pieces_are_split_and_merged_by_position():
    ss2, ss3 = _StridedShard(0, split_factor=2), _StridedShard(0, split_factor=3)
    # one rank holds every strided piece: the pieces touch and merge into one run
    assert local_runs((8,), (1,), [ss2], (0,)) == [[Run(0, 8)]]
    assert local_pieces((8, 2), (1,), [ss2], (0,)) == [LocalPiece((0, 0), (0, 0), (8, 2))]
    # a Shard after a strided split cuts across the three runs it left: rows 6..11
    assert local_runs((12,), (1, 2), [ss3, Shard(0)], (0, 1)) == [[Run(6, 6)]]
    assert local_runs((12,), (1, 2), [ss3, Shard(0)], (0, 0)) == [[Run(0, 6)]]


def test_an_empty_tensor_is_one_empty_piece_even_when_another_dim_is_strided():
    pieces = local_pieces((0, 8), (2,), [_StridedShard(1, split_factor=2)], (1,))
    assert pieces == [LocalPiece((0, 2), (0, 0), (0, 4))]
