"""What the ranks of the mesh_change suite run: build a step's state, save, load, compare.

Expected values are the encoded full tensor cut by DTensor's and ShardedTensor's own
layouts, or by the boxes a case names, never by ckptconf's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from ckptconf.reference.compat import (
    async_save_future,
    distribute_locally,
    local_shards_wrapper,
)
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from ...backend import Backend
from ...kit import values
from ...kit.cases import (
    NOT_LOADED,
    SaveLoadCase,
    TensorSpec,
    blank_tensor,
    encoded_tensor,
    placement_from_text,
)
from ...kit.failures import Mismatch
from .cases import HELD_KINDS, Held, MeshCase

__all__ = [
    "CheckpointableShards",
    "checkpointer_round_trip",
    "load_step",
    "save_step",
]


# --- a tensor subclass that is only DCP's checkpointable protocol ------------------------------


class CheckpointableShards(torch.Tensor):
    """A global size and the boxes ``(global offsets, local tensor)`` this rank holds.

    It implements DCP's checkpointable protocol (``__create_chunk_list__``,
    ``__get_tensor_shard__``, ``__create_write_items__``) and nothing else: every torch
    operation on it raises, so a backend can only save and load it through the protocol.
    """

    _shards: list[tuple[torch.Size, torch.Tensor]]

    @staticmethod
    def __new__(
        cls,
        size: Sequence[int],
        dtype: torch.dtype,
        shards: Sequence[tuple[Sequence[int], torch.Tensor]],
    ) -> CheckpointableShards:
        device = shards[0][1].device if shards else torch.device("cpu")
        value = torch.Tensor._make_wrapper_subclass(
            cls, torch.Size(size), dtype=dtype, device=device
        )
        value._shards = [(torch.Size(offsets), tensor) for offsets, tensor in shards]
        return value

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(
            f"{func} on a CheckpointableShards: it supports only DCP's checkpointable protocol"
        )

    def shards(self) -> list[tuple[torch.Size, torch.Tensor]]:
        """The ``(global offsets, local tensor)`` boxes this rank holds."""
        return list(self._shards)

    def __create_chunk_list__(self) -> list[ChunkStorageMetadata]:
        """The boxes this rank holds, in global coordinates."""
        return [ChunkStorageMetadata(offsets=o, sizes=t.size()) for o, t in self._shards]

    def __create_write_items__(self, fqn: str, object: Any) -> list[WriteItem]:
        """One shard write item per box."""
        return [
            WriteItem(
                index=MetadataIndex(fqn, chunk.offsets),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=chunk,
                    properties=TensorProperties.create_from_tensor(tensor),
                    size=self.size(),
                ),
            )
            for chunk, (_, tensor) in zip(self.__create_chunk_list__(), self._shards)
        ]

    def __get_tensor_shard__(self, index: MetadataIndex) -> torch.Tensor:
        """The local tensor of the box at ``index.offset``."""
        for offsets, tensor in self._shards:
            if offsets == index.offset:
                return tensor
        raise ValueError(
            f"{index.fqn!r}: this rank holds no shard at offsets {index.offset}; "
            f"it holds {[tuple(o) for o, _ in self._shards]}"
        )

    def __repr__(self) -> str:  # type: ignore[override]
        boxes = [(tuple(o), tuple(t.shape)) for o, t in self._shards]
        return f"CheckpointableShards(size={tuple(self.size())}, boxes={boxes})"


# --- building a step's state -------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _full(spec: TensorSpec, *, blank: bool) -> torch.Tensor:
    from ckptconf.harness.world import rank_device

    make = blank_tensor if blank else encoded_tensor
    full = make(spec.shape, spec.dtype, spec.salt)
    return full.to(rank_device())


def _row_box(spec: TensorSpec, start: int) -> tuple[int, ...]:
    return (start,) + (0,) * (len(spec.shape) - 1)


def _own_slabs(held: Held) -> tuple[tuple[int, int], ...]:
    rank = _rank()
    return held.slabs[rank] if rank < len(held.slabs) else ()


def _value(spec: TensorSpec, held: Held, world: int, *, blank: bool) -> Any:
    if held.kind in ("plain", "dtensor", "sharded_tensor"):
        return values.tensor_value(spec, held.layout(), blank=blank)
    full = _full(spec, blank=blank)
    if held.kind == "submesh":
        placements = [placement_from_text(p) for p in held.placements]
        mesh = values.submesh(held.ranks, held.mesh)
        return distribute_locally(full, mesh, placements)
    slabs = [(_row_box(spec, s), full[s : s + n].clone()) for s, n in _own_slabs(held)]
    if held.kind == "checkpointable":
        return CheckpointableShards(full.shape, full.dtype, slabs)
    if held.kind == "local_shards":
        from torch.distributed.tensor import DTensor, Shard

        wrapper_type = local_shards_wrapper()
        if wrapper_type is None:
            raise RuntimeError(
                "this torch has no LocalShardsWrapper with the checkpointable protocol"
            )
        ((offsets, tensor),) = slabs
        return DTensor.from_local(
            wrapper_type([tensor], [offsets]),
            values.device_mesh((world,)),
            [Shard(0)],
            run_check=False,
            shape=full.shape,
            stride=full.stride(),
        )
    raise ValueError(f"unknown holding kind {held.kind!r}; expected one of {HELD_KINDS}")


def _state(case: MeshCase, step: int, *, blank: bool) -> dict[str, Any]:
    at = case.steps[step]
    state = {
        spec.key: _value(spec, held, at.world, blank=blank)
        for spec, held in zip(case.tensors, at.held)
    }
    state.update((key, NOT_LOADED if blank else value) for key, value in case.objects)
    return state


# --- comparing a step's state with the encoded values ------------------------------------------


def _pieces(spec: TensorSpec, held: Held, value: Any) -> list[tuple[str, Any, Any, Any]]:
    """``(what, actual local tensor, expected local tensor, global offsets or None)`` per piece."""
    full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
    if held.kind == "plain":
        return [("tensor", value, full, (0,) * full.dim())]
    if held.kind in ("dtensor", "submesh"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        placements = [placement_from_text(p) for p in held.placements]
        mesh = (
            values.device_mesh(held.mesh)
            if held.kind == "dtensor"
            else values.submesh(held.ranks, held.mesh)
        )
        want = distribute_locally(full.to(value.device), mesh, placements)
        if mesh.get_coordinate() is None:
            return [
                ("local tensor (rank outside the mesh)", value.to_local(), want.to_local(), None)
            ]
        offsets = compute_local_shape_and_global_offset(want.shape, mesh, want.placements)[1]
        return [("local shard", value.to_local(), want.to_local(), tuple(offsets))]
    if held.kind == "sharded_tensor":
        want = values.sharded_tensor_of(full.to(value.device), held.shard_dim)
        got = value.local_shards()
        if len(got) != len(want.local_shards()):
            return [("local shards", len(got), len(want.local_shards()), None)]
        return [
            (
                f"local shard at {tuple(w.metadata.shard_offsets)}",
                g.tensor,
                w.tensor,
                tuple(w.metadata.shard_offsets),
            )
            for g, w in zip(got, want.local_shards())
        ]
    if held.kind == "checkpointable":
        boxes = [(tuple(o), t) for o, t in value.shards()]
    else:  # local_shards
        wrapper = value._local_tensor
        boxes = [(tuple(o), t) for o, t in zip(wrapper.local_offsets(), wrapper.local_shards())]
    wanted = [_row_box(spec, s) for s, _ in _own_slabs(held)]
    if [o for o, _ in boxes] != wanted:
        return [("shard offsets", [o for o, _ in boxes], wanted, None)]
    return [
        (f"shard at {offsets}", tensor, full[s : s + n], offsets)
        for (offsets, tensor), (s, n) in zip(boxes, _own_slabs(held))
    ]


def _compare(case: MeshCase, step: int, state: dict[str, Any]) -> list[Mismatch]:
    rank = _rank()
    out: list[Mismatch] = []
    for spec, held in zip(case.tensors, case.steps[step].held):
        for what, got, want, offsets in _pieces(spec, held, state[spec.key]):
            if isinstance(want, torch.Tensor):
                out += values.piece_mismatches(spec.key, rank, f"{held} {what}", got, want, offsets)
            elif got != want:
                out.append(Mismatch(spec.key, rank, f"{held} {what}: {got!r}, expected {want!r}"))
    for key, value in case.objects:
        out += values.object_mismatch(key, rank, state.get(key), value)
    return out


# --- rank functions ----------------------------------------------------------------------------


def save_step(backend: Backend, case: MeshCase, step: int, path: str) -> None:
    """Save the case's state as ``case.steps[step]`` holds it, with the backend."""
    backend.run_save(_state(case, step, blank=False), path)


def load_step(
    backend: Backend, case: MeshCase, step: int, path: str, resave_path: str | None = None
) -> list[Mismatch]:
    """Load into blank values held as ``case.steps[step]`` holds them; every mismatch.

    With ``resave_path``, then save what was loaded there (every rank, whatever it found:
    a rank skipping the collective save would hang the others).
    """
    state = _state(case, step, blank=True)
    backend.run_load(state, path)
    found = _compare(case, step, state)
    if resave_path is not None:
        backend.run_save(state, resave_path)
    return found


def checkpointer_round_trip(
    backend: Backend, case: SaveLoadCase, path: str, use_async: bool
) -> list[Mismatch] | None:
    """Save (or ``async_save`` and wait) then load through one checkpointer object; every
    mismatch, or ``None`` if ``use_async`` and the object has no ``async_save``."""
    checkpointer = backend.checkpointer(path)  # type: ignore[misc]
    state = values.build_state(case, for_load=False)
    if use_async:
        start = getattr(checkpointer, "async_save", None)
        if start is None:
            return None
        async_save_future(start(state)).result()
        if dist.is_initialized():
            dist.barrier()
    else:
        checkpointer.save(state)
    loaded = values.blank_state(case)
    checkpointer.load(loaded)
    return values.compare_state(case, loaded)
