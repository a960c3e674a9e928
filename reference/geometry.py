"""Shard geometry: which elements of a global tensor each rank holds, and chunk arithmetic.

A chunk is an axis-aligned box of a global tensor, given by ``offsets`` and ``sizes``
(DCP's :class:`ChunkStorageMetadata`). A DTensor's local shard is one chunk for
``Shard``/``Replicate`` placements; a ``_StridedShard`` placement can give a rank a
set of rows that is not contiguous, which is several chunks here (DCP records only
the first offset and so saves the wrong rows; see docs/dcp-findings.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

__all__ = [
    "Run",
    "LocalPiece",
    "chunk_volume",
    "chunk_overlap",
    "chunk_contains",
    "chunk_in_bounds",
    "local_runs",
    "local_pieces",
    "local_shape",
    "dtensor_pieces",
    "mesh_coordinates",
    "as_tuple",
]


@dataclass(frozen=True)
class Run:
    """A contiguous range ``[start, start + length)`` of global indices on one dim."""

    start: int
    length: int


@dataclass(frozen=True)
class LocalPiece:
    """One contiguous box of a rank's local tensor and where it lies in the global tensor."""

    global_offsets: tuple[int, ...]
    local_offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    def chunk(self) -> ChunkStorageMetadata:
        """The piece as a DCP chunk in global coordinates."""
        import torch

        return ChunkStorageMetadata(
            offsets=torch.Size(self.global_offsets), sizes=torch.Size(self.sizes)
        )


def chunk_volume(chunk: ChunkStorageMetadata) -> int:
    """Number of elements in ``chunk``."""
    return math.prod(chunk.sizes)


def chunk_overlap(a: ChunkStorageMetadata, b: ChunkStorageMetadata) -> ChunkStorageMetadata | None:
    """The intersection of two chunks, or ``None`` when it holds no element."""
    import torch

    offsets, sizes = [], []
    for ao, asz, bo, bsz in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True):
        lo = max(ao, bo)
        hi = min(ao + asz, bo + bsz)
        if hi <= lo:
            return None
        offsets.append(lo)
        sizes.append(hi - lo)
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def chunk_contains(outer: ChunkStorageMetadata, inner: ChunkStorageMetadata) -> bool:
    """Whether every element of ``inner`` lies in ``outer``."""
    return all(
        oo <= io and io + isz <= oo + osz
        for oo, osz, io, isz in zip(
            outer.offsets, outer.sizes, inner.offsets, inner.sizes, strict=True
        )
    )


def chunk_in_bounds(size: Sequence[int], chunk: ChunkStorageMetadata) -> bool:
    """Whether ``chunk`` has the rank of ``size``, non-negative extents and lies inside it."""
    if len(chunk.offsets) != len(size) or len(chunk.sizes) != len(size):
        return False
    return all(
        o >= 0 and s >= 0 and o + s <= n
        for o, s, n in zip(chunk.offsets, chunk.sizes, size, strict=True)
    )


def _even_split(length: int, parts: int, index: int) -> tuple[int, int]:
    """Start and length of part ``index`` when ``torch.chunk`` splits ``length`` into ``parts``."""
    full = -(-length // parts)  # ceil, as torch.chunk
    start = min(full * index, length)
    return start, max(0, min(length, start + full) - start)


def _take(runs: list[Run], start: int, length: int) -> list[Run]:
    """The runs holding positions ``[start, start + length)`` of the concatenation of ``runs``."""
    out: list[Run] = []
    pos = 0
    end = start + length
    for run in runs:
        lo = max(start, pos)
        hi = min(end, pos + run.length)
        if hi > lo:
            out.append(Run(run.start + lo - pos, hi - lo))
        pos += run.length
        if pos >= end:
            break
    return out


def _merge(runs: list[Run]) -> list[Run]:
    """Join runs that touch, so a contiguous range is one run."""
    out: list[Run] = []
    for run in runs:
        if out and out[-1].start + out[-1].length == run.start:
            out[-1] = Run(out[-1].start, out[-1].length + run.length)
        else:
            out.append(run)
    return out


def _placement_kind(placement: object) -> tuple[str, int, int]:
    """Classify a placement as ('shard', dim, 1), ('strided', dim, split_factor) or ('replicate', -1, 1)."""
    from torch.distributed.tensor import Replicate, Shard

    strided = _strided_shard_type()
    if strided is not None and isinstance(placement, strided):
        return "strided", placement.dim, int(placement.split_factor)
    if isinstance(placement, Shard):
        return "shard", placement.dim, 1
    if isinstance(placement, Replicate):
        return "replicate", -1, 1
    raise ValueError(
        f"placement {placement!r} is not supported for checkpointing: expected Shard, "
        "_StridedShard or Replicate (Partial must be reduced before saving)"
    )


def _strided_shard_type() -> type | None:
    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # older torch
        return None
    return _StridedShard


def local_runs(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    coordinate: Sequence[int],
) -> list[list[Run]]:
    """Per tensor dim, the runs of global indices the rank at ``coordinate`` holds, in local order.

    Placements apply left to right over the mesh dims, each splitting what the
    previous ones left, as ``torch.chunk`` does (``_StridedShard(d, split_factor=f)``
    first cuts the dim into ``f`` pieces and takes this rank's part of each).
    """
    if len(placements) != len(mesh_shape) or len(coordinate) != len(mesh_shape):
        raise ValueError(
            f"mesh shape {tuple(mesh_shape)}, placements {tuple(placements)} and coordinate "
            f"{tuple(coordinate)} must have one entry per mesh dim"
        )
    runs = [[Run(0, n)] if n > 0 else [] for n in global_shape]
    for mesh_dim, placement in enumerate(placements):
        kind, dim, split_factor = _placement_kind(placement)
        if kind == "replicate":
            continue
        if not 0 <= dim < len(global_shape):
            raise ValueError(
                f"placement {placement!r} on mesh dim {mesh_dim} shards dim {dim}, "
                f"but the tensor has {len(global_shape)} dims"
            )
        parts, index = mesh_shape[mesh_dim], coordinate[mesh_dim]
        current = sum(r.length for r in runs[dim])
        if kind == "shard":
            start, length = _even_split(current, parts, index)
            runs[dim] = _take(runs[dim], start, length)
        else:
            taken: list[Run] = []
            for piece in range(split_factor):
                p_start, p_len = _even_split(current, split_factor, piece)
                s_start, s_len = _even_split(p_len, parts, index)
                taken += _take(runs[dim], p_start + s_start, s_len)
            runs[dim] = taken
    return [_merge(r) for r in runs]


def local_shape(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    coordinate: Sequence[int],
) -> tuple[int, ...]:
    """Shape of the local tensor of the rank at ``coordinate``."""
    runs = local_runs(global_shape, mesh_shape, placements, coordinate)
    return tuple(sum(r.length for r in dim_runs) for dim_runs in runs)


def local_pieces(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    coordinate: Sequence[int],
) -> list[LocalPiece]:
    """The contiguous boxes of a rank's local tensor, as global and local offsets.

    An empty local shard is one piece of volume 0 placed where DTensor places it (offset
    equal to the global size on each dim where the rank holds nothing), so that its
    chunk agrees with ``compute_local_shape_and_global_offset``.
    """
    runs = local_runs(global_shape, mesh_shape, placements, coordinate)
    if any(not dim_runs for dim_runs in runs):
        shape = tuple(sum(r.length for r in dim_runs) for dim_runs in runs)
        offsets = tuple(
            dim_runs[0].start if dim_runs else _empty_offset(n, d, placements)
            for d, (dim_runs, n) in enumerate(zip(runs, global_shape, strict=True))
        )
        return [LocalPiece(offsets, (0,) * len(shape), shape)]
    pieces = [LocalPiece((), (), ())]
    for dim_runs in runs:
        next_pieces = []
        for piece in pieces:
            local = 0
            for run in dim_runs:
                next_pieces.append(
                    LocalPiece(
                        piece.global_offsets + (run.start,),
                        piece.local_offsets + (local,),
                        piece.sizes + (run.length,),
                    )
                )
                local += run.length
        pieces = next_pieces
    return pieces


def _empty_offset(dim_size: int, dim: int, placements: Sequence[object]) -> int:
    """DTensor's offset on a dim where a rank holds nothing: the dim's size if sharded there."""
    for placement in placements:
        kind, shard_dim, _ = _placement_kind(placement)
        if kind != "replicate" and shard_dim == dim:
            return dim_size
    return 0


def dtensor_pieces(tensor: object) -> list[LocalPiece]:
    """The pieces of a DTensor's local shard on this rank; empty if the rank is not in its mesh."""
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return []
    return local_pieces(
        tuple(tensor.shape), tuple(mesh.shape), tuple(tensor.placements), coordinate
    )  # type: ignore[attr-defined]


def mesh_coordinates(mesh_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Every coordinate of a mesh in row-major order (rank order of a default DeviceMesh)."""
    coords: list[tuple[int, ...]] = [()]
    for n in mesh_shape:
        coords = [c + (i,) for c in coords for i in range(n)]
    return coords


def as_tuple(value: Sequence[int]) -> tuple[int, ...]:
    """``value`` as a tuple; a ``torch.Size`` (a tuple already) is returned as it is, not copied:
    it hashes and compares as the tuple of its elements."""
    return value if isinstance(value, tuple) else tuple(value)
