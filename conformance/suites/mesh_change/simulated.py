"""The mesh_change suite's simulated worlds: a save on N and a load on M ranks in one process,
through the backend's planners and the reference in-memory storage."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...kit.cases import encoded_tensor
from ...kit.failures import Mismatch
from ...kit.values import piece_mismatches
from .cases import SimulatedCase
from .ranks import CheckpointableShards

__all__ = ["dtensor_box", "simulate_mesh_change"]


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
                out += piece_mismatches(
                    spec.key,
                    rank,
                    f"simulated rank's shard at {tuple(offsets)}",
                    tensor,
                    full[box],
                    offsets,
                )
    return out
