"""Planted bugs in deduplication of replicated write items and in plan determinism."""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Sequence

from ckptconf.conformance import Backend
from ckptconf.reference.dedup import write_item_bytes, write_item_key
from torch.distributed.checkpoint.planner import SavePlan

from ._common import HookedSavePlanner, planted_backend

__all__ = [
    "dedup_key_without_offsets",
    "dedup_owner_not_a_holder",
    "dedup_keeps_stale_replica",
    "no_dedup_duplicate_chunks",
    "nondeterministic_plan_order",
]


def _keep_owned(plans: Sequence[SavePlan], owner: dict, key_of) -> list[SavePlan]:
    out = []
    for rank, plan in enumerate(plans):
        kept, seen = [], set()
        for item in plan.items:
            key = key_of(item)
            if owner.get(key) == rank and key not in seen:
                kept.append(item)
                seen.add(key)
        out.append(dataclasses.replace(plan, items=kept))
    return out


def _holders(plans: Sequence[SavePlan], key_of) -> dict:
    holders: dict = defaultdict(list)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            if rank not in holders[key_of(item)]:
                holders[key_of(item)].append(rank)
    return holders


def _assign_single_holders(plans: Sequence[SavePlan], holders: dict):
    """Owners of the items one rank holds, the bytes each rank then writes, every item's size,
    and the replicated keys still to assign (in first-seen order)."""
    load = [0] * len(plans)
    owner, sizes = {}, {}
    for plan in plans:
        for item in plan.items:
            sizes.setdefault(write_item_key(item), write_item_bytes(item))
    replicated = []
    for key, ranks in holders.items():
        if len(ranks) == 1:
            owner[key] = ranks[0]
            load[ranks[0]] += sizes[key]
        else:
            replicated.append(key)
    return owner, load, sizes, replicated


# --- a chunk lost: dedup keyed on the name alone -------------------------------------------------


def fqn_only_dedup(plans: Sequence[SavePlan]) -> list[SavePlan]:
    """The mistake: items are deduplicated by key name only, so chunks of one tensor at
    different offsets count as replicas and all but the lowest rank's are dropped."""
    holders = _holders(plans, lambda item: item.index.fqn)
    owner = {key: ranks[0] for key, ranks in holders.items()}
    return _keep_owned(plans, owner, lambda item: item.index.fqn)


class FqnDedupSavePlanner(HookedSavePlanner):
    """Dedups write items by fqn alone."""

    def dedup_plans(self, plans):
        return fqn_only_dedup(plans)


def dedup_key_without_offsets() -> Backend:
    """Dedup keyed on the fqn without chunk offsets: other ranks' chunks of a tensor are dropped."""
    return planted_backend(
        "dedup_key_without_offsets",
        "dedup keyed on the fqn alone: chunks at other offsets taken for replicas and dropped",
        save_planner=FqnDedupSavePlanner,
    )


# --- a replicated chunk lost: owner chosen among all ranks ---------------------------------------


def balanced_dedup_any_rank(plans: Sequence[SavePlan]) -> list[SavePlan]:
    """The mistake: each replicated item goes to the least-loaded rank of the whole world,
    not the least-loaded rank holding it; if that rank does not hold it, no rank writes it."""
    holders = _holders(plans, write_item_key)
    owner, load, sizes, replicated = _assign_single_holders(plans, holders)
    for key in sorted(replicated, key=lambda k: (-sizes[k], repr(k))):
        chosen = min(range(len(plans)), key=lambda r: (load[r], r))
        owner[key] = chosen
        load[chosen] += sizes[key]
    return _keep_owned(plans, owner, write_item_key)


class AnyRankDedupSavePlanner(HookedSavePlanner):
    """Balances replicas over every rank, holder or not."""

    def dedup_plans(self, plans):
        return balanced_dedup_any_rank(plans)


def dedup_owner_not_a_holder() -> Backend:
    """A replicated chunk assigned to the least-loaded rank of the world, which may not hold it."""
    return planted_backend(
        "dedup_owner_not_a_holder",
        "dedup gives a replicated chunk to the least-loaded rank of the world, not of its holders: chunk lost",
        save_planner=AnyRankDedupSavePlanner,
    )


# --- a stale replica kept ------------------------------------------------------------------------


def last_holder_dedup(plans: Sequence[SavePlan]) -> list[SavePlan]:
    """Each replicated item is written by its highest-numbered holder."""
    holders = _holders(plans, write_item_key)
    owner = {key: ranks[-1] for key, ranks in holders.items()}
    return _keep_owned(plans, owner, write_item_key)


def _kept_checksums(plan: SavePlan) -> SavePlan:
    """The plan with the checksums of the items it still writes."""
    data = dict(plan.planner_data or {})
    kept = {write_item_key(item) for item in plan.items}
    data["checksums"] = {k: v for k, v in (data.get("checksums") or {}).items() if k in kept}
    return dataclasses.replace(plan, planner_data=data)


class StaleReplicaSavePlanner(HookedSavePlanner):
    """Claims to verify replicas, but compares them after dedup, when one copy of each is left."""

    def __init__(self):
        super().__init__(verify_replicas=True)

    def _payload(self, item):
        value = self._resolved[item.index]
        if getattr(value, "is_meta", False):  # shape-only planning: no data to checksum
            return b""
        return super()._payload(item)

    def replica_problems(self, plans):
        return []

    def dedup_plans(self, plans):
        kept = last_holder_dedup(plans)
        # the mistake: the check runs on the deduplicated plans, so it never sees two copies
        self._late_problems = super().replica_problems([_kept_checksums(p) for p in kept])
        return kept

    def plan_problems(self, plans, metadata):
        return self._late_problems + super().plan_problems(plans, metadata)


def dedup_keeps_stale_replica() -> Backend:
    """Replicas verified only after dedup (never two to compare): a differing replica is saved silently."""
    return planted_backend(
        "dedup_keeps_stale_replica",
        "replica checksums compared after dedup, so a stale replica (the last holder's) is kept silently",
        save_planner=StaleReplicaSavePlanner,
    )


# --- no dedup at all -----------------------------------------------------------------------------


class NoDedupSavePlanner(HookedSavePlanner):
    """Every rank writes its replica, and the global plan is not validated."""

    def dedup_plans(self, plans):
        return list(plans)

    def plan_problems(self, plans, metadata):
        return []


def no_dedup_duplicate_chunks() -> Backend:
    """No dedup: every holder writes a replicated chunk and the metadata lists it once per rank."""
    return planted_backend(
        "no_dedup_duplicate_chunks",
        "dedup skipped: every rank writes its replica, metadata lists the chunk once per rank",
        save_planner=NoDedupSavePlanner,
    )


# --- non-deterministic plans ---------------------------------------------------------------------


def shuffled_dedup(plans: Sequence[SavePlan], rng: random.Random) -> list[SavePlan]:
    """The mistake: replicated items are balanced in a random order ("shuffle to spread large
    items") instead of a fixed one, so which rank writes what changes from one save to the next."""
    holders = _holders(plans, write_item_key)
    owner, load, sizes, replicated = _assign_single_holders(plans, holders)
    rng.shuffle(replicated)
    for key in replicated:
        ranks = list(holders[key])
        rng.shuffle(ranks)
        chosen = min(ranks, key=lambda r: load[r])
        owner[key] = chosen
        load[chosen] += sizes[key]
    return _keep_owned(plans, owner, write_item_key)


class ShuffledDedupSavePlanner(HookedSavePlanner):
    """Balances replicas in a random order with random tie-breaks."""

    def dedup_plans(self, plans):
        return shuffled_dedup(plans, random.Random())


def nondeterministic_plan_order() -> Backend:
    """Replicated items assigned in random order: the same state gives different plans each time."""
    return planted_backend(
        "nondeterministic_plan_order",
        "replicas balanced in random order with random tie-breaks: plans differ between runs",
        save_planner=ShuffledDedupSavePlanner,
    )
