"""Rank-side steps of the mesh-change suite, and its simulated worlds.

A :class:`MeshCase` is a save followed by loads. Step 0 saves the tensors, held as its
:class:`Held` layouts, on its world; every later step loads them into its own layouts on
its own world and compares every element of every local piece. In a chain each load
step saves what it loaded for the next step; otherwise every step loads step 0's
checkpoint.

Beyond :class:`~.cases.Layout` (plain, DTensor on every rank, ShardedTensor), a tensor
may be a DTensor on a DeviceMesh of some ranks in any order (``submesh``; ranks outside
it hold an empty local tensor), a tensor subclass that is nothing but DCP's
checkpointable protocol (``checkpointable``, :class:`CheckpointableShards`), or a
DTensor over a ``LocalShardsWrapper`` (``local_shards``). Expected values are the
encoded full tensor cut by DTensor's and ShardedTensor's own layouts, or by the boxes a
case names, never by ckptconf's geometry.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

from . import rank_ops
from .backend import BackendRef
from .cases import (
    Layout,
    Mismatch,
    SaveLoadCase,
    TensorSpec,
    blank_tensor,
    encoded_tensor,
    placement_from_text,
)

__all__ = [
    "HELD_KINDS",
    "Slabs",
    "Held",
    "Step",
    "MeshCase",
    "SimulatedCase",
    "CheckpointableShards",
    "local_shards_wrapper_type",
    "save_step",
    "load_step",
    "checkpointer_round_trip",
    "dtensor_box",
    "simulate_mesh_change",
]

HELD_KINDS = ("plain", "dtensor", "sharded_tensor", "submesh", "checkpointable", "local_shards")
"""How a tensor can be held in a :class:`MeshCase`."""

Slabs = tuple[tuple[tuple[int, int], ...], ...]
"""Per rank, the ``(start, length)`` row ranges (dim 0) it holds."""


@dataclass(frozen=True)
class Held:
    """How one tensor is held on a world.

    ``plain``, ``dtensor`` (a mesh of every rank, row-major) and ``sharded_tensor`` are
    :class:`~.cases.Layout` kinds. ``submesh``: a DTensor on a DeviceMesh of the world
    ranks ``ranks`` (in mesh order) shaped ``mesh``. ``checkpointable``: a
    :class:`CheckpointableShards` of which rank r holds the rows ``slabs[r]``.
    ``local_shards``: a DTensor (1-D mesh of every rank, ``Shard(0)``) over a
    ``LocalShardsWrapper`` of rank r's one row range ``slabs[r][0]``.
    """

    kind: str = "plain"
    mesh: tuple[int, ...] = ()
    placements: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    shard_dim: int = 0
    slabs: Slabs = ()

    def __str__(self) -> str:
        if self.kind in ("plain", "dtensor", "sharded_tensor"):
            return str(self.layout())
        if self.kind == "submesh":
            return (
                f"DTensor(mesh={self.mesh} of ranks {list(self.ranks)}, "
                f"[{', '.join(self.placements)}])"
            )
        name = "checkpointable" if self.kind == "checkpointable" else "LocalShardsWrapper DTensor"
        held = "; ".join(
            f"rank {r} rows " + (", ".join(f"{s}:{s + n}" for s, n in own) or "none")
            for r, own in enumerate(self.slabs)
        )
        return f"{name}({held})"

    def layout(self) -> Layout:
        """The :class:`~.cases.Layout` of a plain, dtensor or sharded_tensor holding."""
        return Layout(self.kind, self.mesh, self.placements, self.shard_dim)


@dataclass(frozen=True)
class Step:
    """``world`` ranks holding the case's tensors as ``held`` (one per tensor)."""

    world: int
    held: tuple[Held, ...]


@dataclass(frozen=True)
class MeshCase:
    """Save ``tensors`` as ``steps[0]`` holds them, then load them as each later step holds them."""

    tensors: tuple[TensorSpec, ...]
    steps: tuple[Step, ...]
    chain: bool = False
    objects: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """One line per step and tensor: what is saved or loaded, on how many ranks, held how."""
        lines = []
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            if i == 0:
                what = "save"
            else:
                source = f"step {i - 1}" if self.chain else "step 0"
                what = f"load {source}'s checkpoint" + (
                    " and save it again" if self.chain and i < last else ""
                )
            lines.append(f"step {i}: {what} on {step.world} rank(s)")
            lines += [f"  {spec}: {held}" for spec, held in zip(self.tensors, step.held)]
        if self.objects:
            lines.append(f"  objects: {dict(self.objects)!r}")
        return "\n".join(lines)


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


def local_shards_wrapper_type() -> type | None:
    """torch's ``LocalShardsWrapper`` if this torch has it with the checkpointable protocol."""
    try:
        from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper
    except ImportError:
        return None
    needed = ("__create_chunk_list__", "__get_tensor_shard__", "__create_write_items__")
    return LocalShardsWrapper if all(hasattr(LocalShardsWrapper, n) for n in needed) else None


# --- building a step's state -------------------------------------------------------------------

_SUBMESHES: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}


def _submesh(ranks: tuple[int, ...], shape: tuple[int, ...]):
    from ckptconf.harness.world import rank_device
    from torch.distributed.device_mesh import DeviceMesh

    key = (ranks, shape)
    if key not in _SUBMESHES:  # every rank builds it (new_group is collective), once per process
        _SUBMESHES[key] = DeviceMesh(rank_device().type, torch.tensor(ranks).reshape(shape))
    return _SUBMESHES[key]


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
        return rank_ops._value(spec, held.layout(), blank=blank)
    full = _full(spec, blank=blank)
    if held.kind == "submesh":
        from torch.distributed.tensor import distribute_tensor

        placements = [placement_from_text(p) for p in held.placements]
        mesh = _submesh(held.ranks, held.mesh)
        return distribute_tensor(full, mesh, placements, src_data_rank=None)
    slabs = [(_row_box(spec, s), full[s : s + n].clone()) for s, n in _own_slabs(held)]
    if held.kind == "checkpointable":
        return CheckpointableShards(full.shape, full.dtype, slabs)
    if held.kind == "local_shards":
        from torch.distributed.tensor import DTensor, Shard

        wrapper_type = local_shards_wrapper_type()
        if wrapper_type is None:
            raise RuntimeError(
                "this torch has no LocalShardsWrapper with the checkpointable protocol"
            )
        ((offsets, tensor),) = slabs
        return DTensor.from_local(
            wrapper_type([tensor], [offsets]),
            rank_ops._mesh((world,)),
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
    state.update((key, None if blank else value) for key, value in case.objects)
    return state


# --- comparing a step's state with the encoded values ------------------------------------------


def _pieces(spec: TensorSpec, held: Held, value: Any) -> list[tuple[str, Any, Any, Any]]:
    """``(what, actual local tensor, expected local tensor, global offsets or None)`` per piece."""
    full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
    if held.kind == "plain":
        return [("tensor", value, full, (0,) * full.dim())]
    if held.kind in ("dtensor", "submesh"):
        from torch.distributed.tensor import distribute_tensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        placements = [placement_from_text(p) for p in held.placements]
        mesh = (
            rank_ops._mesh(held.mesh) if held.kind == "dtensor" else _submesh(held.ranks, held.mesh)
        )
        want = distribute_tensor(full.to(value.device), mesh, placements, src_data_rank=None)
        if mesh.get_coordinate() is None:
            return [
                ("local tensor (rank outside the mesh)", value.to_local(), want.to_local(), None)
            ]
        offsets = compute_local_shape_and_global_offset(want.shape, mesh, want.placements)[1]
        return [("local shard", value.to_local(), want.to_local(), tuple(offsets))]
    if held.kind == "sharded_tensor":
        want = rank_ops._sharded_tensor(full.to(value.device), held.shard_dim)
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


def _differences(key: str, rank: int, what: str, got: Any, want: Any, offsets) -> list[Mismatch]:
    if not isinstance(want, torch.Tensor):
        return [] if got == want else [Mismatch(key, rank, f"{what}: {got!r}, expected {want!r}")]
    got = got.cpu()
    want = want.cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        detail = f"{what} is {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}"
        return [Mismatch(key, rank, detail)]
    differ = got != want
    if want.dtype.is_floating_point or want.dtype.is_complex:
        differ &= ~(torch.isnan(got) & torch.isnan(want))
    if not differ.any():
        return []
    first = tuple(int(i) for i in differ.nonzero()[0])
    where = tuple(f + o for f, o in zip(first, offsets)) if offsets is not None else None
    return [
        Mismatch(
            key,
            rank,
            f"local index {first} of the {what}",
            where,
            want[first].item(),
            got[first].item(),
            int(differ.sum()),
        )
    ]


def _compare(case: MeshCase, step: int, state: dict[str, Any]) -> list[Mismatch]:
    rank = _rank()
    out: list[Mismatch] = []
    for spec, held in zip(case.tensors, case.steps[step].held):
        for what, got, want, offsets in _pieces(spec, held, state[spec.key]):
            out += _differences(spec.key, rank, f"{held} {what}", got, want, offsets)
    for key, value in case.objects:
        got = state.get(key)
        if got != value or type(got) is not type(value):
            out.append(Mismatch(key, rank, "object differs", expected=value, actual=got))
    return out


# --- rank functions ----------------------------------------------------------------------------


def save_step(backend_ref: BackendRef, case: MeshCase, step: int, path: str) -> None:
    """Save the case's state as ``case.steps[step]`` holds it, with the backend."""
    backend_ref.resolve().run_save(_state(case, step, blank=False), path)


def load_step(
    backend_ref: BackendRef, case: MeshCase, step: int, path: str, resave_path: str | None = None
) -> list[Mismatch]:
    """Load into blank values held as ``case.steps[step]`` holds them; every mismatch.

    With ``resave_path``, then save what was loaded there (every rank, whatever it found:
    a rank skipping the collective save would hang the others).
    """
    backend = backend_ref.resolve()
    state = _state(case, step, blank=True)
    backend.run_load(state, path)
    found = _compare(case, step, state)
    if resave_path is not None:
        backend.run_save(state, resave_path)
    return found


def checkpointer_round_trip(
    backend_ref: BackendRef, case: SaveLoadCase, path: str, use_async: bool
) -> list[Mismatch] | None:
    """Save (or ``async_save`` and wait) then load through one checkpointer object; every
    mismatch, or ``None`` if ``use_async`` and the object has no ``async_save``."""
    checkpointer = backend_ref.resolve().checkpointer(path)  # type: ignore[misc]
    state = rank_ops.build_state(case, for_load=False)
    if use_async:
        start = getattr(checkpointer, "async_save", None)
        if start is None:
            return None
        response = start(state)
        getattr(response, "upload_completion", response).result()
        if dist.is_initialized():
            dist.barrier()
    else:
        checkpointer.save(state)
    loaded = rank_ops.blank_state(case)
    checkpointer.load(loaded)
    return rank_ops.compare_state(case, loaded)


# --- simulated worlds: planners of many ranks in one process ----------------------------------


@dataclass(frozen=True)
class SimulatedCase:
    """Save on ``save_mesh`` (simulated ranks, row-major), load on ``load_mesh``; each tensor
    is held as a DTensor with its placements would be, as :class:`CheckpointableShards`."""

    tensors: tuple[TensorSpec, ...]
    save_mesh: tuple[int, ...]
    save_placements: tuple[tuple[str, ...], ...]
    load_mesh: tuple[int, ...]
    load_placements: tuple[tuple[str, ...], ...]

    def describe(self) -> str:
        """One line per tensor: saved layout -> loaded layout."""
        lines = [
            f"save on {math.prod(self.save_mesh)} simulated rank(s), "
            f"load on {math.prod(self.load_mesh)} simulated rank(s)"
        ]
        for spec, a, b in zip(self.tensors, self.save_placements, self.load_placements):
            lines.append(
                f"  {spec}: mesh {self.save_mesh} [{', '.join(a)}] -> mesh {self.load_mesh} [{', '.join(b)}]"
            )
        return "\n".join(lines)


def dtensor_box(
    shape: Sequence[int],
    mesh: Sequence[int],
    placements: Sequence[str],
    coordinate: Sequence[int],
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(offsets, sizes)`` DTensor gives a mesh coordinate under ``S<d>``/``R`` placements:
    mesh dims in order, each splitting what is left of its tensor dim as ``torch.chunk``."""
    offsets, sizes = [0] * len(shape), list(shape)
    for mesh_dim, text in enumerate(placements):
        if text == "R":
            continue
        dim = int(text[1:])
        step = -(-sizes[dim] // mesh[mesh_dim])
        start = min(step * coordinate[mesh_dim], sizes[dim])
        offsets[dim] += start
        sizes[dim] = min(step, sizes[dim] - start)
    return tuple(offsets), tuple(sizes)


def _mesh_states(
    case: SimulatedCase, mesh: tuple[int, ...], placements, *, blank: bool
) -> list[dict[str, Any]]:
    fulls = [encoded_tensor(s.shape, s.dtype, s.salt) for s in case.tensors]
    if blank:
        fulls = [torch.zeros_like(f) for f in fulls]
    states = []
    for coordinate in itertools.product(*(range(n) for n in mesh)):
        state = {}
        for spec, full, places in zip(case.tensors, fulls, placements):
            offsets, sizes = dtensor_box(spec.shape, mesh, places, coordinate)
            box = tuple(slice(o, o + n) for o, n in zip(offsets, sizes))
            shards = [(offsets, full[box].clone())] if math.prod(sizes) else []
            state[spec.key] = CheckpointableShards(full.shape, full.dtype, shards)
        states.append(state)
    return states


def simulate_mesh_change(
    case: SimulatedCase,
    save_planner: Callable[[], Any],
    load_planner: Callable[[], Any],
) -> list[Mismatch]:
    """Save and load the case through the planners on simulated ranks and the reference
    in-memory storage; every mismatch (``rank`` is the simulated rank)."""
    from ckptconf.harness.simulated import simulate_load, simulate_save
    from ckptconf.reference import InMemoryReader, InMemoryWriter, MemoryStore

    store = MemoryStore("mesh-change")
    saved = _mesh_states(case, case.save_mesh, case.save_placements, blank=False)
    simulate_save(saved, save_planner, lambda rank: InMemoryWriter(store))
    loaded = _mesh_states(case, case.load_mesh, case.load_placements, blank=True)
    simulate_load(loaded, load_planner, lambda rank: InMemoryReader(store))
    out: list[Mismatch] = []
    for rank, state in enumerate(loaded):
        for spec in case.tensors:
            full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
            for offsets, tensor in state[spec.key].shards():
                box = tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape))
                out += _differences(
                    spec.key,
                    rank,
                    f"simulated rank's shard at {tuple(offsets)}",
                    tensor,
                    full[box],
                    offsets,
                )
    return out
