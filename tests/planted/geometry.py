"""Planted bugs in shard geometry: where a rank's pieces lie in the global tensor, on save and on load."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from ckptconf.conformance import Backend
from ckptconf.reference.geometry import local_pieces
from ckptconf.reference.resharding import ReadPlanResult, SavedChunkIndex
from ckptconf.reference.state_values import TensorPiece, is_sharded_value, tensor_pieces
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    ReadItem,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

from . import _common
from ._common import HookedLoadPlanner, HookedSavePlanner, planted_backend

__all__ = [
    "wrong_offset_on_one_dim",
    "uneven_split_off_by_one",
    "dims_swapped_on_2d_mesh",
    "strided_shard_as_shard",
    "sharded_tensor_offsets_ignored",
    "first_overlapping_chunk_only",
    "saved_rank_mapping_on_world_change",
    "wrong_global_size_in_metadata",
    "submesh_rank_as_coordinate_zero",
    "checkpointable_subclass_ignored",
]


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def _is_strided(placement: object) -> bool:
    from torch.distributed.tensor.placement_types import _StridedShard

    return isinstance(placement, _StridedShard)


def _chunk(offsets: Sequence[int], sizes: Sequence[int]) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def dtensor_pieces_at(key: str, value: Any, coordinate: Sequence[int]) -> list[TensorPiece]:
    """A DTensor's pieces as if this rank sat at ``coordinate`` of its mesh (views of its local tensor)."""
    local = value.to_local()
    out = []
    shape, mesh = tuple(value.shape), tuple(value.device_mesh.shape)
    for piece in local_pieces(shape, mesh, tuple(value.placements), tuple(coordinate)):
        view = local
        for dim, (start, length) in enumerate(zip(piece.local_offsets, piece.sizes)):
            view = view.narrow(dim, start, length)
        chunk = piece.chunk()
        out.append(TensorPiece(MetadataIndex(key, chunk.offsets), chunk, view))
    return out


# --- wrong offset on one dim ---------------------------------------------------------------------


def global_storage_offset(item: ReadItem) -> ReadItem:
    """The mistake: the storage offset on dim 0 is the global row, not the row inside the saved chunk."""
    if not item.storage_offsets or item.storage_index.offset is None:
        return item
    offsets = list(item.storage_offsets)
    offsets[0] += item.storage_index.offset[0]
    return dataclasses.replace(item, storage_offsets=torch.Size(offsets))


class GlobalRowOffsetLoadPlanner(HookedLoadPlanner):
    """Read items whose dim-0 storage offset is not made relative to the saved chunk."""

    def read_items(self, key, index, piece, value) -> ReadPlanResult:
        result = super().read_items(key, index, piece, value)
        return ReadPlanResult([global_storage_offset(i) for i in result.items], result.uncovered)


def wrong_offset_on_one_dim() -> Backend:
    """Load planner: storage offsets on dim 0 in global coordinates instead of relative to the saved chunk."""
    return planted_backend(
        "wrong_offset_on_one_dim",
        "storage offset on dim 0 taken as the global row, not the row within the saved chunk",
        load_planner=GlobalRowOffsetLoadPlanner,
    )


# --- off-by-one on uneven splits -----------------------------------------------------------------


def floor_split_offsets(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    coordinate: Sequence[int],
) -> tuple[int, ...]:
    """A shard's global offset with each start computed as ``index * (length // parts)``.

    torch.chunk gives every shard but the last ``ceil(length / parts)`` elements, so the
    start must be ``index * ceil(length / parts)``: on uneven splits this is off by one or more.
    """
    from torch.distributed.tensor import Shard

    offsets = [0] * len(global_shape)
    lengths = list(global_shape)
    for mesh_dim, placement in enumerate(placements):
        if not isinstance(placement, Shard):
            continue
        d, parts, i = placement.dim, mesh_shape[mesh_dim], coordinate[mesh_dim]
        full = -(-lengths[d] // parts)
        start = min(full * i, lengths[d])
        offsets[d] += i * (lengths[d] // parts)
        lengths[d] = max(0, min(lengths[d], start + full) - start)
    return tuple(offsets)


class FloorSplitLoadPlanner(HookedLoadPlanner):
    """Places a DTensor destination shard at a floor-division offset."""

    def dest_pieces(self, key, value) -> list[TensorPiece]:
        if not isinstance(value, _dtensor_type()) or any(_is_strided(p) for p in value.placements):
            return super().dest_pieces(key, value)
        coordinate = value.device_mesh.get_coordinate()
        local = value.to_local()
        if coordinate is None or local.numel() == 0:
            return super().dest_pieces(key, value)
        offsets = floor_split_offsets(
            tuple(value.shape), tuple(value.device_mesh.shape), value.placements, coordinate
        )
        chunk = _chunk(offsets, local.shape)
        return [TensorPiece(MetadataIndex(key, chunk.offsets), chunk, local)]


def uneven_split_off_by_one() -> Backend:
    """Destination shard offsets computed as index * (length // parts): wrong on uneven splits."""
    return planted_backend(
        "uneven_split_off_by_one",
        "shard offset computed as index * (length // parts): off by one on uneven splits",
        load_planner=FloorSplitLoadPlanner,
    )


# --- dims swapped on a 2-D mesh ------------------------------------------------------------------


def column_major_coordinate(
    mesh_shape: Sequence[int], coordinate: Sequence[int]
) -> tuple[int, ...]:
    """The mistake: a rank's mesh coordinate computed column-major, ``(r % rows, r // rows)``.

    A DeviceMesh numbers ranks row-major (``r = row * cols + col``), so on a 2-D mesh with
    both sides > 1 the ranks at (0, 1) and (1, 0) trade places.
    """
    if len(mesh_shape) != 2:
        return tuple(coordinate)
    rows, cols = mesh_shape
    rank = coordinate[0] * cols + coordinate[1]
    return (rank % rows, rank // rows)


class ColumnMajorLoadPlanner(HookedLoadPlanner):
    """Fills a 2-D-mesh DTensor destination as if its mesh coordinates were column-major."""

    def dest_pieces(self, key, value) -> list[TensorPiece]:
        if not isinstance(value, _dtensor_type()) or value.device_mesh.ndim != 2:
            return super().dest_pieces(key, value)
        coordinate = value.device_mesh.get_coordinate()
        if coordinate is None:
            return []
        mesh_shape = tuple(value.device_mesh.shape)
        return dtensor_pieces_at(key, value, column_major_coordinate(mesh_shape, coordinate))


def dims_swapped_on_2d_mesh() -> Backend:
    """2-D mesh coordinates computed column-major: the ranks at (0, 1) and (1, 0) swap data."""
    return planted_backend(
        "dims_swapped_on_2d_mesh",
        "2-D mesh coordinate computed column-major (r % rows, r // rows): mesh dims swapped",
        load_planner=ColumnMajorLoadPlanner,
    )


# --- _StridedShard treated as Shard --------------------------------------------------------------


def first_offset_chunk(
    pieces: Sequence[TensorPiece], local_shape: Sequence[int]
) -> ChunkStorageMetadata:
    """The mistake: one chunk at the first piece's offsets with the whole local shape."""
    return _chunk(pieces[0].chunk.offsets, local_shape)


class StridedAsShardSavePlanner(HookedSavePlanner):
    """Plans a _StridedShard shard as one contiguous chunk, as for Shard."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        strided = {
            key
            for key, value in self.values.items()
            if isinstance(value, _dtensor_type())
            and any(_is_strided(p) for p in value.placements)
            and value.device_mesh.get_coordinate() is not None
        }
        if not strided:
            return plan
        items = [i for i in plan.items if i.index.fqn not in strided]
        for key in sorted(strided):
            value = self.values[key]
            local = value.to_local()
            old = next(i for i in plan.items if i.index.fqn == key)
            chunk = first_offset_chunk(tensor_pieces(key, value), local.shape)
            index = MetadataIndex(key, chunk.offsets)
            items.append(
                WriteItem(
                    index=index,
                    type=WriteItemType.SHARD,
                    tensor_data=dataclasses.replace(old.tensor_data, chunk=chunk),
                )
            )
            self._resolved[index] = local
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan


def strided_shard_as_shard() -> Backend:
    """_StridedShard planned as Shard: one chunk at the first offset with the local size."""
    return planted_backend(
        "strided_shard_as_shard",
        "_StridedShard saved as Shard: one chunk at its first offset with the local size",
        save_planner=StridedAsShardSavePlanner,
    )


# --- ShardedTensor shard offsets ignored ---------------------------------------------------------


class ShardOffsetsIgnoredLoadPlanner(HookedLoadPlanner):
    """Fills every local shard of a ShardedTensor destination from the origin of the tensor."""

    def dest_pieces(self, key, value) -> list[TensorPiece]:
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        if not isinstance(value, ShardedTensor):
            return super().dest_pieces(key, value)
        out = []
        for shard in value.local_shards():
            chunk = _chunk([0] * shard.tensor.dim(), shard.tensor.shape)
            out.append(TensorPiece(MetadataIndex(key, chunk.offsets), chunk, shard.tensor))
        return out


def sharded_tensor_offsets_ignored() -> Backend:
    """ShardedTensor destination shards read as if each started at offset 0."""
    return planted_backend(
        "sharded_tensor_offsets_ignored",
        "ShardedTensor local shard offsets ignored on load (each shard read from the origin)",
        load_planner=ShardOffsetsIgnoredLoadPlanner,
    )


# --- resharding reads only the first overlapping chunk -------------------------------------------


class FirstOverlapLoadPlanner(HookedLoadPlanner):
    """Stops at the first saved chunk overlapping a destination piece."""

    def read_items(self, key, index, piece, value) -> ReadPlanResult:
        result = super().read_items(key, index, piece, value)
        return ReadPlanResult(result.items[:1], 0)


def first_overlapping_chunk_only() -> Backend:
    """Resharding load reads only the first saved chunk overlapping each destination piece."""
    return planted_backend(
        "first_overlapping_chunk_only",
        "resharding reads only the first saved chunk overlapping a destination shard",
        load_planner=FirstOverlapLoadPlanner,
    )


# --- world-size change with the saved world's rank mapping ---------------------------------------


def saved_chunk_for_rank(chunks: Sequence[ChunkStorageMetadata], rank: int) -> ChunkStorageMetadata:
    """The mistake: rank r reads the r-th saved chunk (in offset order), as if it had saved it."""
    ordered = sorted(chunks, key=lambda c: tuple(c.offsets))
    return ordered[rank % len(ordered)]


class SavedRankMappingLoadPlanner(HookedLoadPlanner):
    """A sharded destination reads 'its own' saved chunk, the one the same rank number saved."""

    def read_items(self, key, index: SavedChunkIndex, piece, value) -> ReadPlanResult:
        if not is_sharded_value(value) or not index.chunks:
            return super().read_items(key, index, piece, value)
        saved = saved_chunk_for_rank(index.chunks, _common.current_rank())
        lengths = torch.Size(min(a, b) for a, b in zip(piece.chunk.sizes, saved.sizes))
        if not all(lengths):
            return ReadPlanResult([], 0)
        zeros = torch.Size([0] * len(lengths))
        item = ReadItem(
            type=LoadItemType.TENSOR,
            dest_index=piece.index,
            dest_offsets=zeros,
            storage_index=MetadataIndex(key, saved.offsets),
            storage_offsets=zeros,
            lengths=lengths,
        )
        return ReadPlanResult([item], 0)


def saved_rank_mapping_on_world_change() -> Backend:
    """Each rank loads the chunk its rank number saved: right only for an unchanged world and layout."""
    return planted_backend(
        "saved_rank_mapping_on_world_change",
        "rank r loads the chunk saved by rank r (the saved world's mapping), whatever the new layout",
        load_planner=SavedRankMappingLoadPlanner,
    )


# --- wrong global size in metadata ---------------------------------------------------------------


def local_size_as_global(item: WriteItem) -> WriteItem:
    """The mistake: a shard's write item records its local shape as the tensor's global size."""
    if item.type != WriteItemType.SHARD or item.tensor_data is None:
        return item
    data = item.tensor_data
    return dataclasses.replace(
        item, tensor_data=TensorWriteData(data.chunk, data.properties, data.chunk.sizes)
    )


class LocalSizeSavePlanner(HookedSavePlanner):
    """Records each shard's local shape as the global size."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        self.plan = dataclasses.replace(plan, items=[local_size_as_global(i) for i in plan.items])
        return self.plan


def wrong_global_size_in_metadata() -> Backend:
    """Sharded values saved with their local shape recorded as the global size."""
    return planted_backend(
        "wrong_global_size_in_metadata",
        "global size in metadata taken from the local shard (to_local().shape)",
        save_planner=LocalSizeSavePlanner,
    )


# --- submesh: a rank outside the mesh ------------------------------------------------------------


def coordinate_or_origin(coordinate: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """The mistake: a rank outside a DTensor's mesh (no coordinate) is taken to be at its origin."""
    return tuple(coordinate) if coordinate is not None else (0,) * ndim


class SubmeshOriginSavePlanner(HookedSavePlanner):
    """A rank outside a DTensor's submesh plans the pieces of the mesh's first rank."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        extra = []
        for key, value in self.values.items():
            if not isinstance(value, _dtensor_type()):
                continue
            mesh = value.device_mesh
            if mesh.get_coordinate() is not None:
                continue
            props = _properties(value)
            for piece in dtensor_pieces_at(key, value, coordinate_or_origin(None, mesh.ndim)):
                extra.append(
                    WriteItem(
                        index=piece.index,
                        type=WriteItemType.SHARD,
                        tensor_data=TensorWriteData(piece.chunk, props, value.shape),
                    )
                )
                self._resolved[piece.index] = piece.view
        if extra:
            self.plan = dataclasses.replace(plan, items=list(plan.items) + extra)
        return self.plan


def _properties(value: Any):
    from torch.distributed.checkpoint.metadata import TensorProperties

    return TensorProperties(dtype=value.dtype, requires_grad=bool(value.requires_grad))


def submesh_rank_as_coordinate_zero() -> Backend:
    """A rank outside a DTensor's submesh saves as if it were the mesh's first rank."""
    return planted_backend(
        "submesh_rank_as_coordinate_zero",
        "a rank outside a DTensor's submesh treated as mesh coordinate 0 (get_coordinate() or 0)",
        save_planner=SubmeshOriginSavePlanner,
    )


# --- checkpointable tensor subclass ignored ------------------------------------------------------


def as_plain_tensor_item(key: str, value: torch.Tensor, props) -> WriteItem:
    """The mistake: a tensor implementing the checkpointable protocol planned as a plain (replicated) tensor."""
    chunk = _chunk([0] * value.dim(), value.shape)
    return WriteItem(
        index=MetadataIndex(key, chunk.offsets),
        type=WriteItemType.TENSOR,
        tensor_data=TensorWriteData(chunk, props, value.shape),
    )


class ChunkListIgnoredSavePlanner(HookedSavePlanner):
    """Ignores ``__create_chunk_list__``: a checkpointable subclass is saved as a plain tensor."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        checkpointable = {
            key: value
            for key, value in self.values.items()
            if isinstance(value, torch.Tensor)
            and not isinstance(value, _dtensor_type())
            and hasattr(value, "__create_chunk_list__")
            and hasattr(value, "__get_tensor_shard__")
        }
        if not checkpointable:
            return plan
        items = [i for i in plan.items if i.index.fqn not in checkpointable]
        for key, value in checkpointable.items():
            pieces = tensor_pieces(key, value)
            if not pieces:
                continue
            item = as_plain_tensor_item(key, pieces[0].view, _properties(pieces[0].view))
            items.append(item)
            self._resolved[item.index] = pieces[0].view
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan


def checkpointable_subclass_ignored() -> Backend:
    """A tensor subclass implementing DCP's checkpointable protocol is saved as a plain tensor."""
    return planted_backend(
        "checkpointable_subclass_ignored",
        "checkpointable tensor subclass (__create_chunk_list__) saved as a plain tensor at offset 0",
        save_planner=ChunkListIgnoredSavePlanner,
    )
