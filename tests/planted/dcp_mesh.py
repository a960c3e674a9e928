"""Backends broken in ways only a mesh change shows: the mesh-change suite must report each."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
from ckptconf.conformance import Backend
from ckptconf.reference import Checkpointer, FileSystemReader, FileSystemWriter
from ckptconf.reference.geometry import local_pieces
from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.planner import LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.tensor import DTensor


class _OwnDTensorChunks(DefaultLoadPlanner):
    """Plans DTensor destinations from its own idea of the rank's mesh coordinate and layout."""

    def _layout(self, value: DTensor) -> tuple[tuple[int, ...], tuple, tuple[int, ...]]:
        raise NotImplementedError

    def create_local_plan(self) -> LoadPlan:
        plan = super().create_local_plan()
        dtensors = {k: v for k, v in self.state_dict.items() if isinstance(v, DTensor)}
        items = [i for i in plan.items if i.dest_index.fqn not in dtensors]
        for fqn, value in dtensors.items():
            mesh, placements, coordinate = self._layout(value)
            pieces = local_pieces(tuple(value.shape), mesh, placements, coordinate)
            chunks = [p.chunk() for p in pieces if math.prod(p.sizes)]
            items += create_read_items_for_chunk_list(
                fqn, self.metadata.state_dict_metadata[fqn], chunks
            )
        return dataclasses.replace(plan, items=items)


class WorldRankAsCoordinate(_OwnDTensorChunks):
    """Takes the world rank (row-major over the mesh shape) for the mesh coordinate: right
    on a mesh of every rank in order; wrong on a submesh, where ranks outside the mesh
    plan a piece they do not hold and ranks inside read another rank's piece."""

    def _layout(self, value):
        mesh = tuple(value.device_mesh.shape)
        flat = dist.get_rank() % math.prod(mesh)
        return mesh, tuple(value.placements), _unravel(flat, mesh)


class FlattenedMesh(_OwnDTensorChunks):
    """Treats a 2-D mesh as a 1-D mesh of all its ranks under the first placement only (the
    mesh size used where the first dim's size belongs): right on 1-D meshes, wrong after a
    change to a 2-D mesh."""

    def _layout(self, value):
        mesh = value.device_mesh
        coordinate = mesh.get_coordinate()
        flat = _ravel(coordinate, tuple(mesh.shape)) if coordinate is not None else 0
        return (mesh.size(),), (value.placements[0],), (flat,)


class FirstChunkOnly(DefaultSavePlanner):
    """Writes only the first chunk a checkpointable tensor subclass reports on each rank (as
    if every value, like a DTensor, had one chunk per rank)."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        seen: set[str] = set()
        items = []
        for item in plan.items:
            value = self.state_dict.get(item.index.fqn)
            is_subclass = hasattr(value, "__create_chunk_list__") and not isinstance(value, DTensor)
            if is_subclass and item.index.fqn in seen:
                continue
            seen.add(item.index.fqn)
            items.append(item)
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan


class LoadsIntoACopy(Checkpointer):
    """``load`` fills a copy of the state dict and returns it, leaving the argument as it was."""

    def load(self, state_dict):
        fresh = {
            k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in state_dict.items()
        }
        super().load(fresh)
        return fresh


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _ravel(coordinate, shape: tuple[int, ...]) -> int:
    flat = 0
    for c, size in zip(coordinate, shape):
        flat = flat * size + c
    return flat


def _copying_checkpointer(path: str) -> LoadsIntoACopy:
    return LoadsIntoACopy(FileSystemWriter(path), FileSystemReader(path))


def _with_files(name: str, **parts: Any) -> Backend:
    """A backend on the reference file storage with the given broken parts."""
    return Backend(
        name=name, storage_writer=FileSystemWriter, storage_reader=FileSystemReader, **parts
    )


def world_rank_coordinates() -> Backend:
    """DCP with a load planner that takes the world rank for the mesh coordinate."""
    return _with_files("world_rank_coordinates", load_planner=WorldRankAsCoordinate)


def flattened_mesh() -> Backend:
    """DCP with a load planner that flattens 2-D meshes."""
    return _with_files("flattened_mesh", load_planner=FlattenedMesh)


def first_chunk_only() -> Backend:
    """DCP with a save planner that keeps one chunk per rank of a checkpointable subclass."""
    return _with_files("first_chunk_only", save_planner=FirstChunkOnly)


def copying_checkpointer() -> Backend:
    """The reference, with a Checkpointer whose load does not fill the state dict it is given."""
    return _with_files(
        "copying_checkpointer",
        checkpointer=_copying_checkpointer,
        unsupported=frozenset({"sharded_tensor"}),
    )
