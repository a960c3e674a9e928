"""What ranks do in the conformance tests: build value-encoded state from a case, save, load, compare.

Expected local values come from DTensor's own distribution of the full encoded tensor
(``distribute_tensor(..., src_data_rank=None)``: each rank slices locally), not from
any geometry of ckptconf's, so the oracle is independent of the reference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

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

__all__ = ["build_state", "save_case", "load_case", "compare_state", "blank_state"]

_MESHES: dict[tuple[int, ...], Any] = {}


def _mesh(shape: tuple[int, ...]):
    from ckptconf.harness.world import rank_device
    from torch.distributed.device_mesh import init_device_mesh

    if shape not in _MESHES:  # one mesh per shape per process: new_group is collective and costly
        _MESHES[shape] = init_device_mesh(rank_device().type, shape)
    return _MESHES[shape]


def _value(spec: TensorSpec, layout: Layout, *, blank: bool):
    from ckptconf.harness.world import rank_device

    make = blank_tensor if blank else encoded_tensor
    full = make(spec.shape, spec.dtype, spec.salt)
    full = full.to(rank_device())
    if layout.kind == "plain":
        return full
    if layout.kind == "dtensor":
        from torch.distributed.tensor import distribute_tensor

        placements = [placement_from_text(p) for p in layout.placements]
        return distribute_tensor(full, _mesh(layout.mesh), placements, src_data_rank=None)
    if layout.kind == "sharded_tensor":
        return _sharded_tensor(full, layout.shard_dim)
    raise ValueError(f"unknown layout kind {layout.kind!r}")


def _sharded_tensor(full: torch.Tensor, dim: int):
    from torch.distributed._shard import sharded_tensor as st
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    device = full.device.type
    spec = ChunkShardingSpec(
        dim=dim, placements=[f"rank:{r}/{device}" for r in range(dist.get_world_size())]
    )
    value = st.empty(spec, *full.shape, dtype=full.dtype)
    for shard in value.local_shards():
        box = tuple(
            slice(o, o + n)
            for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
        )
        shard.tensor.copy_(full[box])
    return value


def build_state(case: SaveLoadCase, *, for_load: bool) -> dict[str, Any]:
    """This rank's state dict for the case: value-encoded, or blank (to load into)."""
    layouts = case.load_layouts if for_load else case.save_layouts
    tensors = {
        spec.key: _value(spec, layout, blank=for_load)
        for spec, layout in zip(case.tensors, layouts)
    }
    objects = {key: (None if for_load else value) for key, value in case.objects}
    if case.nested:
        return {"model": tensors, "extra": objects} if objects else {"model": tensors}
    return {**tensors, **objects}


def blank_state(case: SaveLoadCase) -> dict[str, Any]:
    """The state a load fills."""
    return build_state(case, for_load=True)


def save_case(backend_ref: BackendRef, case: SaveLoadCase, path: str) -> None:
    """Save the case's state with the backend on this rank."""
    backend_ref.resolve().run_save(build_state(case, for_load=False), path)


def load_case(backend_ref: BackendRef, case: SaveLoadCase, path: str) -> list[Mismatch]:
    """Load with the backend on this rank and return every mismatch against the encoded values."""
    state = blank_state(case)
    backend_ref.resolve().run_load(state, path)
    return compare_state(case, state)


def _expected_local(spec: TensorSpec, layout: Layout) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """``(expected local tensor, global offsets)`` pieces this rank should hold."""
    full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
    if layout.kind == "plain":
        return [(full, (0,) * full.dim())]
    if layout.kind == "dtensor":
        from torch.distributed.tensor import distribute_tensor

        placements = [placement_from_text(p) for p in layout.placements]
        dt = distribute_tensor(full, _mesh(layout.mesh), placements, src_data_rank=None)
        offsets: tuple[int, ...] = ()
        if not any(
            p.startswith("SS") for p in layout.placements
        ):  # contiguous: DTensor knows the offset
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            offsets = tuple(
                compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)[1]
            )
        return [(dt.to_local().cpu(), offsets)]
    value = _sharded_tensor(full, layout.shard_dim)
    return [(s.tensor.cpu(), tuple(s.metadata.shard_offsets)) for s in value.local_shards()]


def _actual_local(value: Any, layout: Layout) -> list[torch.Tensor]:
    if layout.kind == "dtensor":
        return [value.to_local().cpu()]
    if layout.kind == "sharded_tensor":
        return [s.tensor.cpu() for s in value.local_shards()]
    return [value.cpu()]


def compare_state(case: SaveLoadCase, state: dict[str, Any]) -> list[Mismatch]:
    """Every difference between ``state`` (after a load) and the case's encoded values."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tensors = state["model"] if case.nested else state
    objects = state.get("extra", {}) if case.nested else state
    out: list[Mismatch] = []
    for spec, layout in zip(case.tensors, case.load_layouts):
        value = tensors.get(spec.key)
        expected = _expected_local(spec, layout)
        actual = _actual_local(value, layout) if value is not None else []
        if len(actual) != len(expected):
            out.append(
                Mismatch(spec.key, rank, f"{len(actual)} local pieces, expected {len(expected)}")
            )
            continue
        for (want, offsets), got in zip(expected, actual):
            if got.shape != want.shape or got.dtype != want.dtype:
                out.append(
                    Mismatch(
                        spec.key,
                        rank,
                        f"local {got.dtype}{list(got.shape)}, expected {want.dtype}{list(want.shape)}",
                    )
                )
                continue
            differ = got != want
            if want.dtype.is_floating_point or want.dtype.is_complex:
                differ &= ~(torch.isnan(got) & torch.isnan(want))
            if differ.any():
                first = tuple(int(i) for i in differ.nonzero()[0])
                where = tuple(f + o for f, o in zip(first, offsets)) if offsets else None
                detail = f"local index {first} of the {layout} piece" + (
                    "" if where else " (DTensor local shard)"
                )
                out.append(
                    Mismatch(
                        spec.key,
                        rank,
                        detail,
                        where,
                        want[first].item(),
                        got[first].item(),
                        int(differ.sum()),
                    )
                )
    for key, value in case.objects:
        got = objects.get(key)
        if got != value or type(got) is not type(value):
            out.append(Mismatch(key, rank, "object differs", expected=value, actual=got))
    return out
