"""Deterministic, balanced deduplication of replicated write items across ranks."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

from torch.distributed.checkpoint.planner import SavePlan, WriteItem

__all__ = ["dedup_save_plans", "write_item_key", "write_item_bytes"]


def write_item_key(item: WriteItem) -> tuple:
    """What identifies the data of a write item: key, chunk offsets and sizes, dtype, global size."""
    data = item.tensor_data
    if data is None:
        return (item.index.fqn, None)
    return (
        item.index.fqn,
        tuple(data.chunk.offsets),
        tuple(data.chunk.sizes),
        str(data.properties.dtype),
        tuple(data.size),
    )


def write_item_bytes(item: WriteItem) -> int:
    """Bytes a write item stores (objects count as 1: their size is unknown until written)."""
    size = item.tensor_storage_size()
    if size is None:
        return 1
    data = item.tensor_data
    assert data is not None
    from .geometry import chunk_volume

    return chunk_volume(data.chunk) * data.properties.dtype.itemsize


def dedup_save_plans(plans: Sequence[SavePlan]) -> list[SavePlan]:
    """Keep one writer for each item that several ranks plan to write.

    Items held by one rank stay where they are. Each replicated item, largest first
    (ties by key), goes to the candidate rank with the fewest bytes so far (ties to the
    lowest rank). The result depends only on the plans, never on timing or hash order.
    Items that share a key but disagree (other sizes or dtype) are left for validation
    to report.
    """
    holders: dict[tuple, list[int]] = defaultdict(list)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            holders[write_item_key(item)].append(rank)
    load = [0] * len(plans)
    owner: dict[tuple, int] = {}
    replicated = []
    for key, ranks in holders.items():
        if len(ranks) == 1:
            owner[key] = ranks[0]
        else:
            replicated.append(key)
    for rank, plan in enumerate(plans):
        for item in plan.items:
            if owner.get(write_item_key(item)) == rank:
                load[rank] += write_item_bytes(item)
    sizes = {}
    for plan in plans:
        for item in plan.items:
            sizes.setdefault(write_item_key(item), write_item_bytes(item))
    replicated.sort(key=lambda k: (-sizes[k], repr(k)))
    for key in replicated:
        chosen = min(sorted(set(holders[key])), key=lambda r: (load[r], r))
        owner[key] = chosen
        load[chosen] += sizes[key]
    out = []
    for rank, plan in enumerate(plans):
        kept, seen = [], set()
        for item in plan.items:
            key = write_item_key(item)
            if owner[key] == rank and key not in seen:
                kept.append(item)
                seen.add(key)
        out.append(dataclasses.replace(plan, items=kept))
    return out
