"""Deliberately broken planners: the plan-validation suite must report each backend as failing
(and a whole-system backend with no planners as unsupported)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict

from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._dedup_save_plans import dedup_save_plans
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    DefaultSavePlanner,
    create_default_global_save_plan,
)
from torch.distributed.checkpoint.metadata import TensorStorageMetadata


def _holders(plans) -> dict:
    holders = defaultdict(list)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            holders[item.index].append(rank)
    return holders


class DroppingDedupPlanner(DefaultSavePlanner):
    """Dedup keeps no copy of an item that more than one rank holds (a 'replica lost' bug)."""

    def create_global_plan(self, all_plans):
        holders = _holders(all_plans)
        plans = [
            dataclasses.replace(p, items=[i for i in p.items if len(holders[i.index]) == 1])
            for p in all_plans
        ]
        plans, metadata = create_default_global_save_plan(plans)
        self.global_plan, self.metadata = plans, metadata
        return plans, metadata


_plans_made = itertools.count()


class RandomDedupPlanner(DefaultSavePlanner):
    """Dedup gives each replicated item to a holder that depends on hidden global state (how
    many plans this process made before), as a random or hash-ordered choice would: the same
    state planned twice gives different plans."""

    def create_global_plan(self, all_plans):
        holders = _holders(all_plans)
        pick = min if next(_plans_made) % 2 else max
        chosen = {index: pick(ranks) for index, ranks in holders.items()}
        plans = [
            dataclasses.replace(p, items=[i for i in p.items if chosen[i.index] == rank])
            for rank, p in enumerate(all_plans)
        ]
        plans, metadata = create_default_global_save_plan(plans)
        self.global_plan, self.metadata = plans, metadata
        return plans, metadata


class UnvalidatedPlanner(DefaultSavePlanner):
    """DCP's dedup and metadata, without any validation of the global plan."""

    def create_global_plan(self, all_plans):
        plans, metadata = create_default_global_save_plan(dedup_save_plans(all_plans))
        self.check(metadata)
        self.global_plan, self.metadata = plans, metadata
        return plans, metadata

    def check(self, metadata) -> None:
        pass


class VolumeOnlyPlanner(UnvalidatedPlanner):
    """Validates only that each tensor's chunk volumes add up to its size: misses an overlap
    that a gap of the same size compensates."""

    def check(self, metadata) -> None:
        for key, entry in metadata.state_dict_metadata.items():
            if isinstance(entry, TensorStorageMetadata):
                volume = sum(math.prod(c.sizes) for c in entry.chunks)
                if volume != math.prod(entry.size):
                    raise ValueError(
                        f"key {key!r}: chunks hold {volume} elements, not {math.prod(entry.size)}"
                    )


class DoubleReadLoadPlanner(DefaultLoadPlanner):
    """Reads the first tensor region of every rank twice (right values, wasted and racy reads)."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        tensors = [
            i
            for i in plan.items
            if i.dest_offsets is not None and len(i.lengths) and math.prod(i.lengths)
        ]
        if tensors:
            plan = dataclasses.replace(plan, items=[*plan.items, tensors[0]])
        return plan


class FirstPieceLoadPlanner(DefaultLoadPlanner):
    """Fills only the first local piece of each destination value (a loop that assumes one
    piece per rank, as ``Shard`` gives and ``_StridedShard`` does not)."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        first: dict[str, tuple] = {}
        for item in plan.items:
            offset = tuple(item.dest_index.offset or ())
            first[item.dest_index.fqn] = min(first.get(item.dest_index.fqn, offset), offset)
        kept = [
            i for i in plan.items if tuple(i.dest_index.offset or ()) == first[i.dest_index.fqn]
        ]
        return dataclasses.replace(plan, items=kept)


def _backend(name: str, **planners) -> Backend:
    return Backend(
        name=name, storage_writer=FileSystemWriter, storage_reader=FileSystemReader, **planners
    )


def dropping_dedup() -> Backend:
    """A save planner whose dedup loses every replicated item."""
    return _backend("dropping_dedup", save_planner=DroppingDedupPlanner)


def random_dedup() -> Backend:
    """A save planner whose dedup choice of holder changes from one plan to the next."""
    return _backend("random_dedup", save_planner=RandomDedupPlanner)


def unvalidated() -> Backend:
    """A save planner that validates nothing."""
    return _backend("unvalidated", save_planner=UnvalidatedPlanner)


def volume_only() -> Backend:
    """A save planner that only compares chunk volumes with tensor volumes."""
    return _backend("volume_only", save_planner=VolumeOnlyPlanner)


def double_read() -> Backend:
    """A load planner that reads one region twice."""
    return _backend("double_read", load_planner=DoubleReadLoadPlanner)


def _whole_save(state_dict, path, *, process_group=None):
    from ckptconf.reference import save

    return save(state_dict, path, process_group=process_group)


def _whole_load(state_dict, path, *, process_group=None):
    from ckptconf.reference import load

    load(state_dict, path, process_group=process_group)


def whole_system() -> Backend:
    """Not broken: its own save and load, and no planners for the plan suite to run."""
    return _backend("whole_system", save=_whole_save, load=_whole_load)


def first_piece() -> Backend:
    """A load planner that fills only the first piece of each destination value."""
    return _backend("first_piece", load_planner=FirstPieceLoadPlanner)
