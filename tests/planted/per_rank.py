"""Planted bugs of state that differs between ranks: keys, key types, meta destinations, groups."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from ckptconf.conformance import Backend
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.coordination import Coordination
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType

from ._common import HookedLoadPlanner, HookedSavePlanner, planted_backend

__all__ = [
    "coordinator_group_rank_as_global",
    "int_keys_stringified_on_load",
    "meta_destinations_skipped",
    "replicas_written_by_coordinator_only",
    "unexpected_keys_checked_per_rank",
]


class PerRankKeysLoadPlanner(HookedLoadPlanner):
    """Calls a checkpoint key unexpected when this rank lacks it, not when every rank does."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        unexpected = [k for k in self.metadata.state_dict_metadata if k not in self.values]
        if unexpected:
            plan.planner_data["problems"].append(
                f"{len(unexpected)} key(s) of the checkpoint are not in the destination: "
                f"{sorted(unexpected)[:5]}"
            )
        return plan


def unexpected_keys_checked_per_rank() -> Backend:
    """A checkpoint key is unexpected when this rank lacks it: pipeline stages cannot load."""
    return planted_backend(
        "unexpected_keys_checked_per_rank",
        "unexpected keys checked against this rank's keys, not all ranks': a pipeline-parallel "
        "checkpoint fails to load even in its own layout",
        load_planner=PerRankKeysLoadPlanner,
    )


class StringKeyPathsLoadPlanner(HookedLoadPlanner):
    """Records the path of each value with str(key) (as DCP's traverse does): an object under
    an int key is set back under a new str key."""

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        self.paths = {
            key: tuple(
                p if isinstance(p, int) and _in_list(state_dict, path, i) else str(p)
                for i, p in enumerate(path)
            )
            for key, path in self.paths.items()
        }


def _in_list(root: Any, path: tuple, position: int) -> bool:
    """Whether ``path[position]`` indexes a list (not a dict key)."""
    node = root
    for part in path[:position]:
        node = node[part]
    return isinstance(node, list)


def int_keys_stringified_on_load() -> Backend:
    """An object under an int dict key is loaded into a new key, the key's str."""
    return planted_backend(
        "int_keys_stringified_on_load",
        "paths of objects recorded with str(key): optimizer state's int keys gain str twins",
        load_planner=StringKeyPathsLoadPlanner,
    )


class MetaSkippingLoadPlanner(HookedLoadPlanner):
    """Plans no read for a meta-device destination: the load succeeds and loads nothing."""

    def dest_pieces(self, key, value):
        pieces = super().dest_pieces(key, value)
        return [p for p in pieces if p.view.device.type != "meta"]


def meta_destinations_skipped() -> Backend:
    """A destination tensor on the meta device is skipped: success with nothing loaded."""
    return planted_backend(
        "meta_destinations_skipped",
        "meta-device destination tensors skipped: the load reports success, nothing is loaded",
        load_planner=MetaSkippingLoadPlanner,
    )


class GroupRankAsGlobalCoordination(Coordination):
    """Takes the coordinator's rank in the group for its global rank."""

    def __init__(self, process_group=None, coordinator_rank: int = 0, no_dist=None, where=None):
        super().__init__(process_group, coordinator_rank, no_dist, where)
        self.global_coordinator = coordinator_rank


@contextlib.contextmanager
def _coordination(cls: type):
    previous = reference_driver.Coordination
    reference_driver.Coordination = cls
    try:
        yield
    finally:
        reference_driver.Coordination = previous


def _save_with(state_dict, **kwargs):
    with _coordination(GroupRankAsGlobalCoordination):
        return reference_driver.save(state_dict, **kwargs)


def _load_with(state_dict, **kwargs):
    with _coordination(GroupRankAsGlobalCoordination):
        return reference_driver.load(state_dict, **kwargs)


def coordinator_group_rank_as_global() -> Backend:
    """The coordinator's rank in a sub-group is used as its global rank."""
    return planted_backend(
        "coordinator_group_rank_as_global",
        "gather/scatter to the coordinator's group rank as if it were global: a sub-group "
        "without global rank 0 cannot save",
        save_driver=_save_with,
        load_driver=_load_with,
    )


class CoordinatorWritesReplicasSavePlanner(HookedSavePlanner):
    """Assumes every rank holds every replicated value: the coordinator writes them all, the
    other ranks write their shards only."""

    def dedup_plans(self, plans: list[SavePlan]) -> list[SavePlan]:
        others = [
            dataclasses.replace(p, items=[i for i in p.items if i.type == WriteItemType.SHARD])
            for p in plans[1:]
        ]
        return super().dedup_plans(plans[:1] + others)


def replicas_written_by_coordinator_only() -> Backend:
    """Plain tensors and objects are written by the coordinator only: a key that only other
    ranks hold (a later pipeline stage) is silently not saved."""
    return planted_backend(
        "replicas_written_by_coordinator_only",
        "plain tensors and objects written by the coordinator only, as if every rank held "
        "them: a key held by other ranks only is lost",
        save_planner=CoordinatorWritesReplicasSavePlanner,
    )
