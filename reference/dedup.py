"""Deterministic, balanced deduplication of replicated write items across ranks."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence

from torch.distributed.checkpoint.planner import SavePlan, WriteItem

from .geometry import as_tuple

__all__ = ["dedup_save_plans", "write_item_key", "write_item_bytes"]


def write_item_key(item: WriteItem) -> tuple:
    """What identifies the data of a write item: key, chunk offsets and sizes, dtype, global size."""
    data = item.tensor_data
    if data is None:
        return (item.index.fqn, None)
    return (
        item.index.fqn,
        as_tuple(data.chunk.offsets),
        as_tuple(data.chunk.sizes),
        data.properties.dtype,
        as_tuple(data.size),
    )


def write_item_bytes(item: WriteItem) -> int:
    """Bytes a write item stores (objects count as 1: their size is unknown until written)."""
    data = item.tensor_data
    if data is None:
        return 1
    return math.prod(data.chunk.sizes) * data.properties.dtype.itemsize


def dedup_save_plans(plans: Sequence[SavePlan]) -> list[SavePlan]:
    """Keep one writer for each item that several ranks plan to write.

    Items held by one rank stay where they are. Each replicated item, largest first
    (ties by key), goes to the candidate rank with the fewest bytes so far (ties to the
    lowest rank). The result depends only on the plans, never on timing or hash order.
    Items that share a key but disagree (other sizes or dtype) are left for validation
    to report.
    """
    keyed = [[(write_item_key(item), item) for item in plan.items] for plan in plans]
    holders: dict[tuple, list[int]] = defaultdict(list)
    sizes: dict[tuple, int] = {}
    for rank, items in enumerate(keyed):
        for key, item in items:
            holders[key].append(rank)
            if key not in sizes:
                sizes[key] = write_item_bytes(item)
    load = [0] * len(plans)
    owner: dict[tuple, int] = {}
    replicated = []
    for key, ranks in holders.items():
        if len(ranks) == 1:
            owner[key] = ranks[0]
            load[ranks[0]] += sizes[key]
        else:
            replicated.append(key)
    replicated.sort(key=lambda k: (-sizes[k], _order(k)))
    for key in replicated:
        chosen = min(sorted(set(holders[key])), key=lambda r: (load[r], r))
        owner[key] = chosen
        load[chosen] += sizes[key]
    out = []
    for rank, (plan, items) in enumerate(zip(plans, keyed)):
        kept, seen = [], set()
        for key, item in items:
            if owner[key] == rank and key not in seen:
                kept.append(item)
                seen.add(key)
        out.append(dataclasses.replace(plan, items=kept))
    return out


def _order(key: tuple) -> str:
    """A total order of keys that does not depend on hashing: their text, sizes as tuples."""
    return repr(tuple(tuple(part) if isinstance(part, tuple) else str(part) for part in key))
