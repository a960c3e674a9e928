"""Per-rank state dicts of a :class:`~.cases.PlanStateCase`.

Sharded values are :class:`~ckptconf.harness.simulated.SimulatedShards` (DCP's
checkpointable protocol over pieces laid out by the reference geometry), so DCP's
default planners, the reference planners and planners built on either plan them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ckptconf.harness.simulated import (
    SimulatedShards,
    checkpointable,
    chunk_list_value,
    index_encoded,
    sharded_value,
)
from ckptconf.reference.geometry import mesh_coordinates

from ...kit.cases import placement_from_text
from .cases import PlanStateCase, SimTensor

__all__ = ["DATA_MODES", "build_states", "value_chunks", "flat_values", "UNLOADED"]

DATA_MODES = ("meta", "encoded", "sentinel")
"""``meta``: shape only; ``encoded``: each element its global row-major index; ``sentinel``: -1."""

UNLOADED = "<not loaded>"
"""The placeholder a destination state holds for each object before a load."""


def _fill(tensor: SimTensor, data: str):
    if data == "encoded":
        encode = index_encoded(tensor.shape)
        return lambda offsets, sizes: encode(offsets, sizes)
    return lambda offsets, sizes: torch.full(sizes, -1.0, dtype=torch.float64)


def _values(tensor: SimTensor, world: int, data: str) -> list[Any]:
    """What each of ``world`` ranks holds of ``tensor``."""
    dtype = getattr(torch, tensor.dtype)
    meta = data == "meta"
    fill = None if meta else _fill(tensor, data)
    layout = tensor.layout
    if layout.kind == "plain":
        if meta:
            return [torch.empty(tensor.shape, dtype=dtype, device="meta") for _ in range(world)]
        return [fill((0,) * len(tensor.shape), tensor.shape).to(dtype) for _ in range(world)]
    per_rank: dict[int, Any] = {}
    if layout.kind == "mesh":
        placements = [placement_from_text(p) for p in layout.placements]
        for index, coordinate in enumerate(mesh_coordinates(layout.mesh)):
            per_rank[layout.first_rank + index] = sharded_value(
                tensor.key,
                tensor.shape,
                layout.mesh,
                placements,
                coordinate,
                dtype=dtype,
                fill=fill,
                meta=meta,
            )
    else:
        mine: dict[int, list] = {}
        for rank, offsets, sizes in layout.chunks:
            mine.setdefault(rank, []).append((offsets, sizes))
        for rank, chunks in mine.items():
            per_rank[rank] = chunk_list_value(
                tensor.key, tensor.shape, chunks, dtype=dtype, fill=fill, meta=meta
            )
    # a rank outside a submesh or without chunks holds nothing of the tensor
    nothing = chunk_list_value(tensor.key, tensor.shape, [], dtype=dtype)
    return [checkpointable(per_rank.get(rank, nothing)) for rank in range(world)]


def _put(tree: dict, path: Sequence[str], value: Any) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def build_states(
    case: PlanStateCase, *, data: str = "meta", nested: bool = True
) -> list[dict[str, Any]]:
    """Every rank's state dict, nested by path (``nested``) or flat under dotted keys (for a
    backend taking flat state dicts only, as Megatron's planners do); objects hold their
    value (:data:`UNLOADED` for ``sentinel``)."""
    if data not in DATA_MODES:
        raise ValueError(f"data must be one of {DATA_MODES}, not {data!r}")

    def where(path: Sequence[str]) -> Sequence[str]:
        return path if nested else (".".join(path),)

    states: list[dict[str, Any]] = [{} for _ in range(case.world)]
    for tensor in case.tensors:
        for state, value in zip(states, _values(tensor, case.world, data)):
            _put(state, where(tensor.path), value)
    for state in states:
        for path, value in case.objects:
            _put(state, where(path), UNLOADED if data == "sentinel" else value)
    return states


def value_chunks(value: Any) -> list[tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]]:
    """``(offsets, sizes, view)`` of every piece a rank's tensor value holds."""
    if isinstance(value, SimulatedShards):
        return [(tuple(p.chunk.offsets), tuple(p.chunk.sizes), p.view) for p in value.pieces]
    return [((0,) * value.dim(), tuple(value.shape), value)]


def flat_values(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The state's leaves under their dotted keys."""
    out: dict[str, Any] = {}
    for name, value in state.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            out.update(flat_values(value, key + "."))
        else:
            out[key] = value
    return out
