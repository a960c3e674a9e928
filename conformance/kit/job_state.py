"""On the ranks: a job-shaped case's state (:mod:`.jobs`) built, saved, loaded and compared."""

from __future__ import annotations

import copy
from typing import Any

import torch.distributed as dist
from ckptconf.reference.compat import distribute_locally

from ..backend import Backend
from . import values
from .cases import TensorSpec, blank_tensor, encoded_tensor, placement_from_text
from .failures import Mismatch
from .jobs import Holding, PerRankCase

__all__ = ["job_mismatches", "job_state", "load_per_rank", "save_per_rank"]


def _rank() -> int:
    return dist.get_rank()


def _meshes(case: PerRankCase, *, loading: bool) -> dict[tuple[int, ...], Any]:
    """The meshes of the save or load, made on every rank in the same order (new_group is
    collective)."""
    return {ranks: values.submesh(ranks, (len(ranks),)) for ranks in case.meshes(loading=loading)}


def _value(spec: TensorSpec, holding: Holding, meshes: dict, *, blank: bool) -> Any:
    from ckptconf.harness.world import rank_device

    full = (blank_tensor if blank else encoded_tensor)(spec.shape, spec.dtype, spec.salt)
    full = full.to(rank_device())
    if holding.kind == "plain":
        return full

    placement = placement_from_text(holding.placement)
    return distribute_locally(full, meshes[holding.mesh], [placement])


def job_state(case: PerRankCase, *, loading: bool) -> dict[str, Any]:
    """This rank's state dict of ``case``: its keys when saving (value-encoded) or loading (blank)."""
    rank = _rank()
    meshes = _meshes(case, loading=loading)
    holdings = case.loaded if loading else case.saved
    state: dict[str, Any] = {}
    for spec, holding in zip(case.tensors, holdings):
        if holding.kind == "dtensor" and rank in holding.mesh:
            value = _value(spec, holding, meshes, blank=loading)  # every mesh rank makes it
            if rank in holding.ranks:
                state[spec.key] = value
        elif rank in holding.ranks:
            state[spec.key] = _value(spec, holding, meshes, blank=loading)
    for o in case.objects:
        if rank in (o.loaded_by if loading else o.saved_by):
            state[o.key] = None if loading else copy.deepcopy(o.value)
    return state


def save_per_rank(backend: Backend, case: PerRankCase, path: str) -> None:
    """Rank function: save this rank's keys of the case."""
    backend.run_save(job_state(case, loading=False), path)


def job_mismatches(case: PerRankCase, state: dict[str, Any]) -> list[Mismatch]:
    """How this rank's loaded ``state`` differs from ``case``'s load side (keys and values)."""
    rank = _rank()
    out: list[Mismatch] = []
    expected_keys = set(case.keys_held(rank, loading=True))
    extra = sorted(set(state) - expected_keys)
    if extra:
        out.append(Mismatch(", ".join(extra), rank, "keys appeared that the state did not have"))
    for spec, holding in zip(case.tensors, case.loaded):
        if rank not in holding.ranks:
            continue
        got = state.get(spec.key)
        if got is None:
            out.append(Mismatch(spec.key, rank, "key disappeared from the state"))
            continue
        full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
        if holding.kind == "plain":
            out += values.piece_mismatches(
                spec.key, rank, "plain tensor", got, full, (0,) * full.dim()
            )
            continue
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        mesh = got.device_mesh
        want = distribute_locally(full.to(got.device), mesh, got.placements)
        offsets = compute_local_shape_and_global_offset(want.shape, mesh, want.placements)[1]
        out += values.piece_mismatches(
            spec.key,
            rank,
            f"{holding} local shard",
            got.to_local(),
            want.to_local(),
            tuple(offsets),
        )
    for o in case.objects:
        if rank in o.loaded_by:
            out += values.object_mismatch(o.key, rank, state.get(o.key), o.value)
    return out


def load_per_rank(backend: Backend, case: PerRankCase, path: str) -> list[Mismatch]:
    """Rank function: load this rank's keys of the case into blank values; every mismatch."""
    state = job_state(case, loading=True)
    backend.run_load(state, path)
    return job_mismatches(case, state)
