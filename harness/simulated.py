"""Simulated worlds (tier 0): run the planners and storage of N ranks in one process.

No processes and no process group: each simulated rank has its own planner, storage
object and state dict, and the coordinator step is a function call. Sharded values
are :class:`~ckptconf.reference.state_values.StagedTensor` built from shard geometry,
so any mesh shape and placement list can be simulated at thousands of ranks.
:func:`checkpointable` wraps one as a tensor implementing DCP's checkpointable protocol,
so DCP's default planners (and any planner built on its helpers) plan it as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from ckptconf.reference.compat import (
    set_up_save_planner,
    set_up_storage_reader,
    set_up_storage_writer,
)
from ckptconf.reference.geometry import local_pieces, mesh_coordinates
from ckptconf.reference.state_values import StagedTensor, TensorPiece
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

__all__ = [
    "SimulatedSave",
    "sharded_value",
    "simulate_save_planning",
    "simulate_save",
    "simulate_load",
    "mesh_values",
    "index_encoded",
    "SimulatedShards",
    "checkpointable",
    "chunk_list_value",
]


def sharded_value(
    fqn: str,
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    coordinate: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    fill: Callable[[tuple[int, ...], tuple[int, ...]], torch.Tensor] | None = None,
    meta: bool = False,
) -> StagedTensor:
    """The value one rank holds of a tensor laid out on a mesh, as DTensor would lay it out.

    ``fill(global_offsets, sizes)`` gives each piece's contents (zeros if omitted);
    ``meta=True`` makes shape-only pieces for planning at scale.
    """
    from torch.distributed.checkpoint.metadata import MetadataIndex

    pieces = []
    for piece in local_pieces(global_shape, mesh_shape, placements, coordinate):
        if meta:
            view = torch.empty(piece.sizes, dtype=dtype, device="meta")
        elif fill is not None:
            view = fill(piece.global_offsets, piece.sizes).to(dtype)
        else:
            view = torch.zeros(piece.sizes, dtype=dtype)
        chunk = piece.chunk()
        pieces.append(TensorPiece(MetadataIndex(fqn, chunk.offsets), chunk, view))
    return StagedTensor(torch.Size(global_shape), dtype, False, True, tuple(pieces))


def mesh_values(
    fqn: str,
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    placements: Sequence[object],
    **kwargs: Any,
) -> list[StagedTensor]:
    """:func:`sharded_value` for every rank of the mesh, in rank order."""
    return [
        sharded_value(fqn, global_shape, mesh_shape, placements, c, **kwargs)
        for c in mesh_coordinates(mesh_shape)
    ]


@dataclass
class SimulatedSave:
    """Every rank's local plan, the global plan and the metadata of a simulated save."""

    local_plans: list[SavePlan]
    global_plan: list[SavePlan]
    metadata: Metadata


def simulate_save_planning(
    state_dicts: Sequence[dict[str, Any]],
    planner_factory: Callable[[], SavePlanner],
    *,
    coordinator_rank: int = 0,
) -> tuple[SimulatedSave, list[SavePlanner]]:
    """Plan a save of ``state_dicts[r]`` on each simulated rank r; no data is written."""
    planners = [planner_factory() for _ in state_dicts]
    local_plans = []
    for rank, (planner, state_dict) in enumerate(zip(planners, state_dicts)):
        set_up_save_planner(planner, state_dict, rank == coordinator_rank)
        local_plans.append(planner.create_local_plan())
    global_plan, metadata = planners[coordinator_rank].create_global_plan(local_plans)
    final = [planner.finish_plan(plan) for planner, plan in zip(planners, global_plan)]
    return SimulatedSave(local_plans, final, metadata), planners


def simulate_save(
    state_dicts: Sequence[dict[str, Any]],
    planner_factory: Callable[[], SavePlanner],
    writer_factory: Callable[[int], StorageWriter],
    *,
    coordinator_rank: int = 0,
) -> Metadata:
    """Run DCP's save protocol for every simulated rank, writing through ``writer_factory(rank)``."""
    n = len(state_dicts)
    planners = [planner_factory() for _ in range(n)]
    writers = [writer_factory(r) for r in range(n)]
    local_plans = []
    for rank in range(n):
        meta = writers[rank].storage_meta()
        set_up_save_planner(planners[rank], state_dicts[rank], rank == coordinator_rank, meta)
        set_up_storage_writer(writers[rank], rank == coordinator_rank, rank)
        local_plans.append(writers[rank].prepare_local_plan(planners[rank].create_local_plan()))
    global_plan, metadata = planners[coordinator_rank].create_global_plan(local_plans)
    global_plan = writers[coordinator_rank].prepare_global_plan(global_plan)
    results = []
    for rank in range(n):
        future = writers[rank].write_data(
            planners[rank].finish_plan(global_plan[rank]), planners[rank]
        )
        future.wait()
        results.append(future.value())
    writers[coordinator_rank].finish(metadata, results)
    return metadata


def simulate_load(
    state_dicts: Sequence[dict[str, Any]],
    planner_factory: Callable[[], LoadPlanner],
    reader_factory: Callable[[int], StorageReader],
    *,
    coordinator_rank: int = 0,
) -> list[LoadPlan]:
    """Run DCP's load protocol for every simulated rank into ``state_dicts`` in place."""
    n = len(state_dicts)
    planners = [planner_factory() for _ in range(n)]
    readers = [reader_factory(r) for r in range(n)]
    local_plans = []
    for rank in range(n):
        metadata = readers[rank].read_metadata()
        planners[rank].set_up_planner(state_dicts[rank], metadata, rank == coordinator_rank)
        set_up_storage_reader(readers[rank], metadata, rank == coordinator_rank, rank)
        local_plans.append(readers[rank].prepare_local_plan(planners[rank].create_local_plan()))
    global_plan = readers[coordinator_rank].prepare_global_plan(
        planners[coordinator_rank].create_global_plan(local_plans)
    )
    for rank in range(n):
        final = planners[rank].finish_plan(global_plan[rank])
        readers[rank].read_data(final, planners[rank]).wait()
    return global_plan


def index_encoded(
    global_shape: Sequence[int],
) -> Callable[[tuple[int, ...], tuple[int, ...]], torch.Tensor]:
    """A ``fill`` whose every element is its global row-major index (a wrong offset shows)."""
    strides = [math.prod(global_shape[d + 1 :]) for d in range(len(global_shape))]

    def fill(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        value = torch.zeros(sizes, dtype=torch.float64)
        for d, (o, n, s) in enumerate(zip(offsets, sizes, strides)):
            shape = [1] * len(sizes)
            shape[d] = n
            value = value + (torch.arange(o, o + n, dtype=torch.float64) * s).reshape(shape)
        return value

    return fill


class SimulatedShards(torch.Tensor):
    """A simulated rank's value of a sharded tensor, as a tensor DCP's planners can plan.

    It has the global shape and dtype but no data of its own: DCP's checkpointable
    protocol (``__create_write_items__``, ``__create_chunk_list__``,
    ``__get_tensor_shard__``) exposes the pieces, whose views hold the data (or are
    meta tensors for planning only). Torch operations on it raise.
    """

    _staged: StagedTensor

    @staticmethod
    def __new__(cls, staged: StagedTensor) -> SimulatedShards:
        value = torch.Tensor._make_wrapper_subclass(
            cls, staged.size, dtype=staged.dtype, device="cpu", requires_grad=False
        )
        value._staged = staged
        return value

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise TypeError(
            f"{func} on a SimulatedShards value: it holds no data of its own, use its pieces"
        )

    def __repr__(self) -> str:  # the default would run torch operations
        return f"SimulatedShards({tuple(self.shape)}, {self.dtype}, {len(self._staged.pieces)} piece(s))"

    @property
    def pieces(self) -> tuple[TensorPiece, ...]:
        """The pieces this rank holds, with their global chunks and views."""
        return self._staged.pieces

    @property
    def staged(self) -> StagedTensor:
        """The value as the reference's :class:`StagedTensor`."""
        return self._staged

    def __create_write_items__(self, fqn: str, obj: object) -> list:
        """One SHARD write item per piece, as DTensor gives for its local shard."""
        from torch.distributed.checkpoint.metadata import MetadataIndex, TensorProperties
        from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

        properties = TensorProperties(dtype=self.dtype)
        return [
            WriteItem(
                index=MetadataIndex(fqn, piece.chunk.offsets),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=piece.chunk, properties=properties, size=self.shape
                ),
            )
            for piece in self._staged.pieces
        ]

    def __create_chunk_list__(self) -> list:
        """The global chunk of every piece."""
        return [piece.chunk for piece in self._staged.pieces]

    def __get_tensor_shard__(self, index) -> torch.Tensor:
        """The view of the piece whose chunk starts at ``index.offset``."""
        for piece in self._staged.pieces:
            if tuple(piece.chunk.offsets) == tuple(index.offset):
                return piece.view
        raise ValueError(
            f"no piece of this simulated value starts at {tuple(index.offset)}; pieces start at "
            f"{[tuple(p.chunk.offsets) for p in self._staged.pieces]}"
        )


def checkpointable(value: StagedTensor) -> SimulatedShards:
    """``value`` as a tensor implementing DCP's checkpointable protocol."""
    return SimulatedShards(value)


def chunk_list_value(
    fqn: str,
    global_shape: Sequence[int],
    chunks: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    dtype: torch.dtype = torch.float32,
    fill: Callable[[tuple[int, ...], tuple[int, ...]], torch.Tensor] | None = None,
    meta: bool = False,
) -> StagedTensor:
    """A rank's value holding the given ``(offsets, sizes)`` chunks, as ShardedTensor local shards."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    pieces = []
    for offsets, sizes in chunks:
        offsets, sizes = tuple(offsets), tuple(sizes)
        if meta:
            view = torch.empty(sizes, dtype=dtype, device="meta")
        elif fill is not None:
            view = fill(offsets, sizes).to(dtype)
        else:
            view = torch.zeros(sizes, dtype=dtype)
        chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
        pieces.append(TensorPiece(MetadataIndex(fqn, chunk.offsets), chunk, view))
    return StagedTensor(torch.Size(global_shape), dtype, False, True, tuple(pieces))
