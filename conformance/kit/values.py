"""Value encoding on the ranks: build a case's state, save it, load into blank state, compare.

Expected local values come from DTensor's own distribution of the full encoded tensor
(``distribute_tensor(..., src_data_rank=None)``: each rank slices locally; see
``reference.compat.distribute_locally`` for torch without ``src_data_rank``), not from
any geometry of ckptconf's, so the oracle is independent of the reference.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.distributed as dist
from ckptconf.conformance.backend import Backend
from ckptconf.reference.compat import distribute_locally

from .cases import (
    NOT_LOADED,
    Layout,
    SaveLoadCase,
    TensorSpec,
    blank_tensor,
    encoded_tensor,
    placement_from_text,
)
from .failures import Mismatch

__all__ = [
    "same_object",
    "blank_state",
    "call_outcome",
    "build_state",
    "compare_state",
    "device_mesh",
    "layout_mesh",
    "load_case",
    "local_pieces",
    "object_mismatch",
    "piece_mismatches",
    "save_case",
    "sharded_tensor_of",
    "submesh",
    "tensor_value",
]

_MESHES: dict[tuple[int, ...], Any] = {}


def device_mesh(shape: tuple[int, ...]):
    """This process's DeviceMesh of ``shape`` over every rank, on the rank's device type."""
    from ckptconf.harness.world import per_group, rank_device
    from torch.distributed.device_mesh import init_device_mesh

    meshes = per_group(_MESHES)
    if shape not in meshes:  # one mesh per shape per group: new_group is collective and costly
        meshes[shape] = init_device_mesh(rank_device().type, shape)
    return meshes[shape]


_SUBMESHES: dict[tuple[tuple[int, ...], tuple[int, ...]], Any] = {}


def submesh(ranks: tuple[int, ...], shape: tuple[int, ...]):
    """This process's DeviceMesh of ``shape`` over the world ranks ``ranks`` (in mesh order).

    Every rank of the world must call it, in the same order (``new_group`` is collective),
    members or not; a mesh is made once per process.
    """
    from ckptconf.harness.world import per_group, rank_device
    from torch.distributed.device_mesh import DeviceMesh

    key = (tuple(ranks), tuple(shape))
    meshes = per_group(_SUBMESHES)
    if key not in meshes:
        meshes[key] = DeviceMesh(rank_device().type, torch.tensor(ranks).reshape(shape))
    return meshes[key]


def tensor_value(spec: TensorSpec, layout: Layout, *, blank: bool):
    """This rank's value of ``spec`` held as ``layout``: encoded, or blank (to load into), on
    the rank's device."""
    from ckptconf.harness.world import rank_device

    make = blank_tensor if blank else encoded_tensor
    full = make(spec.shape, spec.dtype, spec.salt)
    full = full.to(rank_device())
    if layout.kind == "plain":
        return full
    if layout.kind == "dtensor":
        placements = [placement_from_text(p) for p in layout.placements]
        return distribute_locally(full, layout_mesh(layout), placements)
    if layout.kind == "sharded_tensor":
        return sharded_tensor_of(full, layout.shard_dim, layout.ranks or None)
    raise ValueError(f"unknown layout kind {layout.kind!r}")


def layout_mesh(layout: Layout):
    """The DeviceMesh of a ``dtensor`` layout: over every rank, or over ``layout.ranks``.

    Collective the first time (every rank of the world must call it, in the same order).
    """
    return submesh(layout.ranks, layout.mesh) if layout.ranks else device_mesh(layout.mesh)


def sharded_tensor_of(full: torch.Tensor, dim: int, ranks: tuple[int, ...] | None = None):
    """A ShardedTensor (ChunkShardingSpec on ``dim``, chunk i on ``ranks[i]``; default every
    rank in order) holding ``full``."""
    from torch.distributed._shard import sharded_tensor as st
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    device = full.device.type
    on = ranks if ranks is not None else range(dist.get_world_size())
    spec = ChunkShardingSpec(dim=dim, placements=[f"rank:{r}/{device}" for r in on])
    value = st.empty(spec, *full.shape, dtype=full.dtype)
    for shard in value.local_shards():
        box = tuple(
            slice(o, o + n)
            for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
        )
        shard.tensor.copy_(full[box])
    return value


def build_state(case: SaveLoadCase, *, for_load: bool) -> dict[str, Any]:
    """This rank's state dict for the case: value-encoded, or blank (to load into); a key whose
    layout names ``ranks`` only on those ranks."""
    layouts = case.load_layouts if for_load else case.save_layouts
    rank = _rank()
    _make_submeshes(layouts)
    tensors = {
        spec.key: tensor_value(spec, layout, blank=for_load)
        for spec, layout in zip(case.tensors, layouts)
        if layout.holds(rank)
    }
    objects = {
        key: (NOT_LOADED if for_load else value)
        for number, (key, value) in enumerate(case.objects)
        if case.holds_object(number, rank, for_load=for_load)
    }
    if case.nested:
        return {"model": tensors, "extra": objects} if objects else {"model": tensors}
    return {**tensors, **objects}


def blank_state(case: SaveLoadCase) -> dict[str, Any]:
    """The state a load fills."""
    return build_state(case, for_load=True)


def save_case(backend: Backend, case: SaveLoadCase, path: str) -> None:
    """Rank function: save the case's state with the backend."""
    backend.run_save(build_state(case, for_load=False), path)


def load_case(backend: Backend, case: SaveLoadCase, path: str) -> list[Mismatch]:
    """Rank function: load into blank state; every mismatch against the encoded values."""
    state = blank_state(case)
    backend.run_load(state, path)
    return compare_state(case, state)


def _expected_local(
    spec: TensorSpec, layout: Layout
) -> list[tuple[torch.Tensor, tuple[int, ...] | None]]:
    """``(expected local tensor, global offsets or None where not one box)`` pieces of this rank."""
    full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
    if layout.kind == "plain":
        return [(full, (0,) * full.dim())]
    if layout.kind == "dtensor":
        placements = [placement_from_text(p) for p in layout.placements]
        dt = distribute_locally(full, layout_mesh(layout), placements)
        offsets = None  # a _StridedShard piece is not one box: no single offset
        if not any(p.startswith("SS") for p in layout.placements):
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            offsets = tuple(
                compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)[1]
            )
        return [(dt.to_local().cpu(), offsets)]
    value = sharded_tensor_of(full, layout.shard_dim, layout.ranks or None)
    return [(s.tensor.cpu(), tuple(s.metadata.shard_offsets)) for s in value.local_shards()]


def local_pieces(value: Any, layout: Layout) -> list[torch.Tensor]:
    """The local tensors this rank holds of ``value`` (copied to the CPU), in a fixed order."""
    if layout.kind == "dtensor":
        return [value.to_local().cpu()]
    if layout.kind == "sharded_tensor":
        return [s.tensor.cpu() for s in value.local_shards()]
    return [value.cpu()]


def piece_mismatches(
    key: str,
    rank: int,
    what: str,
    got: torch.Tensor,
    want: torch.Tensor,
    offsets: tuple[int, ...] | None,
) -> list[Mismatch]:
    """How local piece ``got`` differs from ``want`` (NaN equals NaN): its dtype or shape, or
    the first differing element, by global index when the piece's ``offsets`` are known."""
    got, want = got.cpu(), want.cpu()
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


def same_object(got: Any, want: Any) -> bool:
    """Whether a loaded object is the saved one: the same type and value, through containers;
    numpy arrays by dtype, shape and elements, ``io.BytesIO`` by its bytes, NaN equal to NaN,
    namespaces by their attributes."""
    if type(got) is not type(want):
        return False
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(map(same_object, got, want))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same_object(got[k], want[k]) for k in want)
    if isinstance(want, float) and want != want:
        return got != got
    if isinstance(want, torch.Tensor):
        return got.dtype == want.dtype and torch.equal(got, want)
    if isinstance(want, io.BytesIO):
        return got.getvalue() == want.getvalue()
    if type(want).__module__ == "numpy" and hasattr(want, "dtype"):  # arrays and scalars
        import numpy

        return got.dtype == want.dtype and numpy.array_equal(got, want, equal_nan=True)
    if hasattr(want, "__dict__") and type(want).__name__ in ("Namespace", "SimpleNamespace"):
        return same_object(vars(got), vars(want))
    return bool(got == want)


def object_mismatch(key: str, rank: int, got: Any, want: Any) -> list[Mismatch]:
    """A mismatch if a loaded object differs from the saved one in value or type."""
    if not same_object(got, want):
        return [Mismatch(key, rank, "object differs", expected=want, actual=got)]
    return []


def _make_submeshes(layouts) -> None:
    """Every rank makes every submesh of ``layouts``, in one order: ``new_group`` is collective
    (and cached, so later calls on some ranks only do not communicate)."""
    for layout in layouts:
        if layout.kind == "dtensor" and layout.ranks:
            layout_mesh(layout)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def compare_state(case: SaveLoadCase, state: dict[str, Any]) -> list[Mismatch]:
    """Every difference between ``state`` (after a load) and the case's encoded values."""
    rank = _rank()
    _make_submeshes(case.load_layouts)
    tensors = state["model"] if case.nested else state
    objects = state.get("extra", {}) if case.nested else state
    out: list[Mismatch] = []
    for spec, layout in zip(case.tensors, case.load_layouts):
        value = tensors.get(spec.key)
        if not layout.holds(rank):
            if spec.key in tensors:
                out.append(
                    Mismatch(spec.key, rank, "the load added this key to a rank not holding it")
                )
            continue
        expected = _expected_local(spec, layout)
        actual = local_pieces(value, layout) if value is not None else []
        if len(actual) != len(expected):
            out.append(
                Mismatch(spec.key, rank, f"{len(actual)} local pieces, expected {len(expected)}")
            )
            continue
        for (want, offsets), got in zip(expected, actual):
            out += piece_mismatches(spec.key, rank, f"{layout} piece", got, want, offsets)
    for number, (key, value) in enumerate(case.objects):
        if case.holds_object(number, rank, for_load=True):
            out += object_mismatch(key, rank, objects.get(key), value)
        elif key in objects:
            out.append(Mismatch(key, rank, "the load added this key to a rank not holding it"))
    return out


def call_outcome(fn, *, limit: int = 6000) -> dict[str, Any]:
    """``{"raised": False}``, or ``{"raised": True, "type": ..., "text": ...}`` for what calling
    ``fn`` raised (the last ``limit`` characters): a step whose error is data, not a failure.

    A backend that cannot take a wrapped storage is not such an outcome: that error, like
    interrupts, propagates.
    """
    from ckptconf.conformance.backend import StorageInjectionUnsupported

    try:
        fn()
    except (KeyboardInterrupt, SystemExit, StorageInjectionUnsupported):
        raise
    except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        from ckptconf.harness.errors import causes_of

        return {
            "raised": True,
            "type": type(exc).__name__,
            "text": str(exc)[-limit:],
            "causes": [cause[:limit] for cause in causes_of(exc)],
        }
    return {"raised": False}
