"""Hypothesis strategies for the reference tests: meshes, placements, shapes."""

from __future__ import annotations

from hypothesis import strategies as st
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard


@st.composite
def layouts(
    draw, *, max_ndim: int = 3, max_mesh_dims: int = 2, max_dim: int = 9, strided: bool = True
):
    """(global_shape, mesh_shape, placements): dims may be smaller than the mesh, or zero."""
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(0, max_dim), min_size=ndim, max_size=ndim)))
    mesh = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=max_mesh_dims)))
    kinds = ["replicate", "shard"] + (["strided"] if strided else [])
    placements = []
    for _ in mesh:
        kind = draw(st.sampled_from(kinds))
        dim = draw(st.integers(0, ndim - 1))
        if kind == "replicate":
            placements.append(Replicate())
        elif kind == "shard":
            placements.append(Shard(dim))
        else:
            placements.append(_StridedShard(dim, split_factor=draw(st.integers(1, 3))))
    return shape, mesh, placements
