"""What a state-dict value holds on this rank: its global size, dtype and local pieces.

Plain tensors, DTensors (any Shard/_StridedShard/Replicate placement, submeshes),
ShardedTensors and tensor subclasses implementing DCP's checkpointable protocol
(``__create_chunk_list__`` and ``__get_tensor_shard__``) are tensors here; every
other value is an object stored as bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

from .geometry import dtensor_pieces

__all__ = [
    "StagedTensor",
    "TensorPiece",
    "is_tensor_value",
    "is_sharded_value",
    "global_size",
    "value_dtype",
    "tensor_pieces",
    "tensor_bytes",
]


@dataclass(frozen=True)
class TensorPiece:
    """A contiguous box of a value held on this rank: its global chunk and the local tensor view."""

    index: MetadataIndex
    chunk: ChunkStorageMetadata
    view: torch.Tensor


@dataclass(frozen=True)
class StagedTensor:
    """A copy of what this rank holds of a tensor value, taken for an async save."""

    size: torch.Size
    dtype: torch.dtype
    requires_grad: bool
    sharded: bool
    pieces: tuple[TensorPiece, ...]
    is_torch_tensor: bool = True
    """Whether the staged value was a ``torch.Tensor`` (flattening treats lists of them so)."""


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def _sharded_tensor_type():
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return ShardedTensor


def is_tensor_value(value: object) -> bool:
    """Whether ``value`` is stored as tensor chunks rather than as an object."""
    return isinstance(value, (torch.Tensor, StagedTensor, _sharded_tensor_type()))


def is_sharded_value(value: object) -> bool:
    """Whether ranks hold different parts of ``value`` (so it is never deduplicated as a replica)."""
    if isinstance(value, StagedTensor):
        return value.sharded
    return isinstance(value, (_dtensor_type(), _sharded_tensor_type())) or (
        isinstance(value, torch.Tensor) and hasattr(value, "__create_chunk_list__")
    )


def global_size(value: object) -> torch.Size:
    """The global shape of a tensor value."""
    if isinstance(value, StagedTensor):
        return value.size
    if isinstance(value, _sharded_tensor_type()):
        return torch.Size(value.metadata().size)
    return torch.Size(value.size())  # type: ignore[attr-defined]


def value_dtype(value: object) -> torch.dtype:
    """The dtype of a tensor value."""
    if isinstance(value, StagedTensor):
        return value.dtype
    if isinstance(value, _sharded_tensor_type()):
        return value.metadata().tensor_properties.dtype
    if _is_checkpointable(value) or (
        isinstance(value, _dtensor_type()) and _is_checkpointable(value._local_tensor)
    ):
        # a wrapper subclass's own dtype may be a default (LocalShardsWrapper's is float32
        # whatever its shards hold): the shards' dtype is what is saved
        chunks = value.__create_chunk_list__()  # type: ignore[attr-defined]
        if chunks:
            index = MetadataIndex("", chunks[0].offsets, 0)
            return value.__get_tensor_shard__(index).dtype  # type: ignore[attr-defined]
    return value.dtype  # type: ignore[attr-defined]


def _in_bounds_if_empty(chunk: ChunkStorageMetadata, size: torch.Size) -> ChunkStorageMetadata:
    """An empty chunk placed past the end (ChunkShardingSpec gives a size-1 dim's third rank
    offset 2) is moved inside the tensor: it holds nothing, and bounds checks stay strict."""
    if math.prod(chunk.sizes) or all(o <= n for o, n in zip(chunk.offsets, size)):
        return chunk
    return ChunkStorageMetadata(
        offsets=torch.Size(min(o, n) for o, n in zip(chunk.offsets, size)), sizes=chunk.sizes
    )


def _is_checkpointable(value: object) -> bool:
    """A tensor implementing DCP's checkpointable protocol itself (not DTensor, which delegates)."""
    return (
        isinstance(value, torch.Tensor)
        and not isinstance(value, _dtensor_type())
        and hasattr(value, "__create_chunk_list__")
        and hasattr(value, "__get_tensor_shard__")
    )


def _checkpointable_pieces(fqn: str, value: torch.Tensor) -> list[TensorPiece]:
    """The value's own chunks. Empty ones are dropped unless the whole tensor is empty: they
    hold nothing, and one may sit at the offsets of another rank's non-empty chunk (a
    LocalShardsWrapper of zero rows at row 0), which would make two chunks of one index."""
    out = []
    keep_empty = math.prod(value.size()) == 0
    for i, chunk in enumerate(value.__create_chunk_list__()):  # type: ignore[attr-defined]
        if not keep_empty and math.prod(chunk.sizes) == 0:
            continue
        index = MetadataIndex(fqn, chunk.offsets, i)
        piece_index = MetadataIndex(fqn, chunk.offsets)
        view = value.__get_tensor_shard__(index)  # type: ignore[attr-defined]
        out.append(TensorPiece(piece_index, chunk, view))
    return out


def _check_local_shape(fqn: str, value: object, local: torch.Tensor, pieces: list) -> None:
    """Refuse a DTensor whose local tensor is not the shape its placements give this rank (one
    made by ``DTensor.from_local(..., shape=...)`` with other sizes than ``torch.chunk``'s): its
    pieces would be cut from the wrong elements, or elements dropped, without a word (DCP does
    that, pytorch/pytorch#144109)."""
    if not pieces:
        return
    expected = tuple(
        max(p.local_offsets[d] + p.sizes[d] for p in pieces) for d in range(local.dim())
    )
    if tuple(local.shape) == expected:
        return
    mesh = value.device_mesh  # type: ignore[attr-defined]
    raise ValueError(
        f"value of key {fqn!r}: a DTensor of global shape {tuple(value.shape)} placed "
        f"{tuple(value.placements)} on a mesh of shape {tuple(mesh.shape)}: the local tensor "
        f"at mesh coordinate {tuple(mesh.get_coordinate())} has shape {tuple(local.shape)}, "
        f"where the placements give {expected} (torch.chunk's split: the only layout a "
        "checkpoint records for a DTensor's placements)"
    )


def tensor_pieces(fqn: str, value: object) -> list[TensorPiece]:
    """The pieces of a tensor value this rank holds (none if it is outside a DTensor's mesh)."""
    if isinstance(value, StagedTensor):
        return list(value.pieces)
    if isinstance(value, _dtensor_type()) and _is_checkpointable(value._local_tensor):
        # a DTensor over a LocalShardsWrapper (or another checkpointable local tensor):
        # its pieces are whatever the local tensor says, not the mesh's even split
        return _checkpointable_pieces(fqn, value)
    if isinstance(value, _dtensor_type()):
        local = value.to_local()
        try:
            pieces = dtensor_pieces(value)
        except ValueError as exc:  # a placement DCP cannot checkpoint (Partial)
            raise ValueError(f"value of key {fqn!r}: {exc}") from None
        _check_local_shape(fqn, value, local, pieces)
        out = []
        for piece in pieces:
            view = local
            for dim, (start, length) in enumerate(zip(piece.local_offsets, piece.sizes)):
                view = view.narrow(dim, start, length)
            chunk = piece.chunk()
            out.append(TensorPiece(MetadataIndex(fqn, chunk.offsets), chunk, view))
        return out
    if isinstance(value, _sharded_tensor_type()):
        out = []
        size = global_size(value)
        for shard in value.local_shards():
            md = shard.metadata
            chunk = _in_bounds_if_empty(
                ChunkStorageMetadata(
                    offsets=torch.Size(md.shard_offsets), sizes=torch.Size(md.shard_sizes)
                ),
                size,
            )
            out.append(TensorPiece(MetadataIndex(fqn, chunk.offsets), chunk, shard.tensor))
        return out
    if _is_checkpointable(value):
        return _checkpointable_pieces(fqn, value)
    if isinstance(value, torch.Tensor):
        chunk = ChunkStorageMetadata(offsets=torch.Size([0] * value.dim()), sizes=value.size())
        return [TensorPiece(MetadataIndex(fqn, chunk.offsets), chunk, value)]
    raise TypeError(f"value of key {fqn!r} is a {type(value).__name__}, not a tensor")


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The row-major bytes of ``tensor`` (copied to CPU and made contiguous if needed)."""
    flat = tensor.detach().resolve_conj().resolve_neg()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    if flat.stride(0) != 1:  # a size-1 dim keeps any stride through .contiguous()
        flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
    return memoryview(flat.view(torch.uint8).numpy())
