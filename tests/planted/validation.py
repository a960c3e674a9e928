"""Planted bugs in global save plan validation: a check the backend's validator lacks.

Each validator below is the reference's with one class of problem missing, which is what a
hand-written validator without that check reports.
"""

from __future__ import annotations

import dataclasses

import torch
from ckptconf.conformance import Backend
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan

from ._common import HookedSavePlanner, planted_backend

__all__ = [
    "validator_misses_gaps",
    "validator_misses_overlaps",
    "validator_misses_out_of_bounds",
    "validator_ignores_dtype_disagreement",
]


def without(problems: list[str], *phrases: str) -> list[str]:
    """``problems`` minus those a validator lacking the check would not find."""
    return [p for p in problems if not any(phrase in p for phrase in phrases)]


class NoCoverageCheckPlanner(HookedSavePlanner):
    """Checks bounds and overlaps, never coverage."""

    def plan_problems(self, plans, metadata):
        return without(super().plan_problems(plans, metadata), "not covered", "scalar has no chunk")


def validator_misses_gaps() -> Backend:
    """The global plan validator never checks that chunks cover the tensor."""
    return planted_backend(
        "validator_misses_gaps",
        "global plan validator checks bounds and overlaps but never coverage: gaps accepted",
        save_planner=NoCoverageCheckPlanner,
    )


class NoOverlapCheckPlanner(HookedSavePlanner):
    """Checks bounds and coverage, never overlaps (nor chunks written twice)."""

    def plan_problems(self, plans, metadata):
        return without(
            super().plan_problems(plans, metadata),
            "overlap",
            "scalar written by",
            " times, by ranks",
        )


def validator_misses_overlaps() -> Backend:
    """The global plan validator never checks that chunks are disjoint."""
    return planted_backend(
        "validator_misses_overlaps",
        "global plan validator checks bounds and coverage but not overlaps: overlapping chunks accepted",
        save_planner=NoOverlapCheckPlanner,
    )


def clipped(chunk: ChunkStorageMetadata, size) -> ChunkStorageMetadata:
    """``chunk`` cut to the tensor, as a numpy slice ``counts[o:o + n]`` cuts it without a word."""
    offsets = [min(o, n) for o, n in zip(chunk.offsets, size)]
    sizes = [min(o + s, n) - c for o, s, n, c in zip(chunk.offsets, chunk.sizes, size, offsets)]
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def clipped_plans(plans: list[SavePlan], metadata: Metadata) -> tuple[list[SavePlan], Metadata]:
    """The mistake: plans and metadata as a slicing-based validator sees them, every chunk clipped."""
    out = []
    for plan in plans:
        items = []
        for item in plan.items:
            data = item.tensor_data
            if data is not None and len(data.size) == len(data.chunk.offsets):
                chunk = clipped(data.chunk, data.size)
                item = dataclasses.replace(
                    item,
                    index=dataclasses.replace(item.index, offset=chunk.offsets),
                    tensor_data=dataclasses.replace(data, chunk=chunk),
                )
            items.append(item)
        out.append(dataclasses.replace(plan, items=items))
    entries = {}
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            entry = dataclasses.replace(
                entry,
                chunks=[
                    clipped(c, entry.size) if len(c.offsets) == len(entry.size) else c
                    for c in entry.chunks
                ],
            )
        entries[key] = entry
    return out, dataclasses.replace(metadata, state_dict_metadata=entries)


class NoBoundsCheckPlanner(HookedSavePlanner):
    """Counts coverage and overlaps with numpy slices, which clip chunks silently: no bounds check."""

    def plan_problems(self, plans, metadata):
        return without(super().plan_problems(*clipped_plans(plans, metadata)), "out of bounds")


def validator_misses_out_of_bounds() -> Backend:
    """The global plan validator never checks that chunks lie inside the tensor."""
    return planted_backend(
        "validator_misses_out_of_bounds",
        "global plan validator never checks chunk bounds: chunks past the tensor's end accepted",
        save_planner=NoBoundsCheckPlanner,
    )


class NoDtypeAgreementPlanner(HookedSavePlanner):
    """Takes the first rank's dtype for a key and never compares the others'."""

    def plan_problems(self, plans, metadata):
        return without(super().plan_problems(plans, metadata), "says dtype")


def validator_ignores_dtype_disagreement() -> Backend:
    """Ranks writing one key with different dtypes are not reported (the first rank's dtype wins)."""
    return planted_backend(
        "validator_ignores_dtype_disagreement",
        "global plan validator ignores ranks disagreeing on a key's dtype (first item wins)",
        save_planner=NoDtypeAgreementPlanner,
    )
