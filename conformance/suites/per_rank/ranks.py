"""What the ranks of the per_rank suite run: build this rank's keys of a case, save, load, compare."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from ckptconf.harness.world import per_group

from ...backend import Backend
from ...kit import values
from ...kit.cases import blank_tensor, encoded_tensor
from ...kit.failures import Mismatch
from ...kit.job_state import load_per_rank, save_per_rank
from ...kit.jobs import PerRankCase


def _rank() -> int:
    return dist.get_rank()


__all__ = [
    "load_divergent_object",
    "load_in_sub_groups",
    "load_into_meta",
    "load_per_rank",
    "save_divergent_object",
    "save_in_sub_groups",
    "save_per_rank",
]


def save_divergent_object(backend: Backend, key: str, path: str) -> dict[str, Any]:
    """Save ``{key: rank-specific value, "w": a tensor}``: whether this rank's save raised."""
    state = {key: ("seen_by", _rank()), "w": torch.arange(3.0)}
    return values.call_outcome(lambda: backend.run_save(state, path), limit=600)


def load_divergent_object(backend: Backend, key: str, path: str) -> Any:
    """Load ``key`` back: what this rank got."""
    state = {key: None, "w": torch.zeros(3)}
    backend.run_load(state, path)
    return state[key]


def load_into_meta(backend: Backend, path: str) -> dict[str, Any]:
    """Load ``{"w": float32[4]}`` saved as 0..3 into a meta-device tensor: whether it raised,
    and otherwise what ``state["w"]`` is afterwards (device, values)."""
    state = {"w": torch.empty(4, device="meta"), "b": torch.zeros(2)}
    outcome = values.call_outcome(lambda: backend.run_load(state, path), limit=600)
    w = state["w"]
    outcome["device"] = w.device.type if isinstance(w, torch.Tensor) else type(w).__name__
    if isinstance(w, torch.Tensor) and w.device.type != "meta":
        outcome["values"] = w.detach().cpu().tolist()
    return outcome


def _membership(groups: list[list[int]], cases: list[PerRankCase], paths: list[str]):
    """Make every sub-group (every rank: new_group is collective); this rank's ``(rank in its
    group, group, case, path)``, or ``None`` for a rank in no group."""
    made = [_group(ranks) for ranks in groups]
    rank = _rank()
    for ranks, group, case, path in zip(groups, made, cases, paths):
        if rank in ranks:
            return ranks.index(rank), group, case, path
    return None


def save_in_sub_groups(
    backend: Backend, groups: list[list[int]], cases: list[PerRankCase], paths: list[str]
) -> str | None:
    """Each member of a sub-group saves its group's case (its rank in the case being its rank
    in the group) to its group's path with ``process_group=`` that group; ranks in no group
    only take part in making the groups. The groups' saves run at the same time."""
    mine = _membership(groups, cases, paths)
    if mine is None:
        return None
    group_rank, group, case, path = mine
    backend.run_save(_group_state(case, group_rank), path, process_group=group)
    return path


def load_in_sub_groups(
    backend: Backend, groups: list[list[int]], cases: list[PerRankCase], paths: list[str]
) -> list[Mismatch]:
    """As :func:`save_in_sub_groups`, loading: each member loads its group's checkpoint."""
    mine = _membership(groups, cases, paths)
    if mine is None:
        return []
    group_rank, group, case, path = mine
    state = _group_state(case, group_rank, blank=True)
    backend.run_load(state, path, process_group=group)
    return [
        m
        for spec in case.tensors
        if spec.key in state
        for m in values.piece_mismatches(
            spec.key,
            _rank(),
            "plain tensor",
            state[spec.key],
            encoded_tensor(spec.shape, spec.dtype, spec.salt),
            (0,) * len(spec.shape),
        )
    ]


_GROUPS: dict[tuple[int, ...], Any] = {}


def _group(ranks: list[int]):
    """The gloo sub-group of ``ranks``, made once per process (every rank calls new_group)."""
    groups = per_group(_GROUPS)
    if tuple(ranks) not in groups:
        groups[tuple(ranks)] = dist.new_group(list(ranks), backend="gloo")
    return groups[tuple(ranks)]


def _group_state(case: PerRankCase, group_rank: int, *, blank: bool = False) -> dict[str, Any]:
    """A sub-group member's plain tensors of the case (by its rank in the group)."""
    make = blank_tensor if blank else encoded_tensor
    return {
        spec.key: make(spec.shape, spec.dtype, spec.salt)
        for spec, holding in zip(case.tensors, case.saved)
        if group_rank in holding.ranks
    }
