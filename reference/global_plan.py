"""The coordinator's save planning in one pass over the plans, on arrays: the common case fast.

:meth:`ReferenceSavePlanner.create_global_plan` is defined by three readable steps,
:func:`~ckptconf.reference.dedup.dedup_save_plans`,
:func:`~ckptconf.reference.plan_metadata.build_metadata` and
:func:`~ckptconf.reference.validation.validate_global_plan`, which build Python objects per
write item (keys, chunk copies, dict entries) and so cost several microseconds per item: at
10,000 ranks with 100 tensors each, seconds. :func:`fast_global_plan` gives the same result
from one pass that only groups the items by key, then does dedup, metadata and validation per
key on numpy arrays of offsets and sizes. It handles the plans that every valid save of
DTensors, ShardedTensors, plain tensors and objects produces, and gives up (returns ``None``)
on anything else: a key whose items disagree on dtype, size or kind, a chunk out of bounds,
overlapping or missing elements, an index whose offset is not its chunk's. The three steps
then run and name every problem. So the fast path never decides that a plan is broken, and a
plan it accepts is one the three steps accept with the same plans and metadata (the tests
compare both on drawn plans, broken ones included). Sizes of 2**56 elements or more go to the
readable steps, whose Python integers do not overflow.

Plan caching (ByteCheckpoint, NSDI '25; DCP's ``enable_plan_caching``) saves the coordinator's
work on a repeated save; this saves it on the first one too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType

from .compat import DCP_FORMAT_VERSION, new_metadata
from .dedup import _order

__all__ = ["KeyItems", "fast_global_plan", "plan_keys"]


_LIMIT = 2**56  # sizes (and so byte counts) from here on go to the readable steps


class _GiveUp(Exception):
    """The plans are not of the common case: the readable steps decide."""


@dataclasses.dataclass
class _Key:
    """The write items of one key across ranks, in (rank, position) order."""

    ranks: list[int] = dataclasses.field(default_factory=list)
    positions: list[int] = dataclasses.field(default_factory=list)
    items: list[Any] = dataclasses.field(default_factory=list)
    chunks: list[Any] = dataclasses.field(default_factory=list)
    sizes: list[Any] = dataclasses.field(default_factory=list)  # each item's global size
    dtypes: list[Any] = dataclasses.field(default_factory=list)
    is_object: bool = False


@dataclasses.dataclass
class KeyItems:
    """The write items of one key on every rank, in (rank, position) order, as arrays: what
    :func:`plan_keys` plans. Made from DCP ``SavePlan`` objects (:func:`fast_global_plan`) or
    from compact plans off the wire (:mod:`~ckptconf.reference.compact_plan`), so both give
    one result.

    ``ranks`` and ``positions``: ``(n,)`` int64, each item's rank and its index in that rank's
    plan. For a tensor key, ``lows`` and ``extents``: ``(n, ndim)`` int64 chunk offsets and
    sizes (elements), ``size`` the global size every item agrees on and ``dtype`` its dtype.
    ``chunks(rows)`` gives the metadata chunks of those rows, ``head(row)`` the global size
    object and ``requires_grad`` of one row (the first kept row's go into the metadata).
    """

    fqn: str
    is_object: bool
    ranks: np.ndarray
    positions: np.ndarray
    lows: np.ndarray | None = None
    extents: np.ndarray | None = None
    size: tuple[int, ...] = ()
    dtype: Any = None
    chunks: Callable[[np.ndarray], list[ChunkStorageMetadata]] | None = None
    head: Callable[[int], tuple[torch.Size, bool]] | None = None

    def item_key(self, row: int) -> tuple:
        """:func:`~ckptconf.reference.dedup.write_item_key` of one row."""
        if self.is_object:
            return (self.fqn, None)
        assert self.lows is not None and self.extents is not None
        return (
            self.fqn,
            tuple(self.lows[row].tolist()),
            tuple(self.extents[row].tolist()),
            self.dtype,
            tuple(self.size),
        )


def _group(plans: Sequence[SavePlan]) -> dict[str, _Key]:
    """Every write item under its key; gives up on items the fast path cannot take as they are."""
    keys: dict[str, _Key] = {}
    byte_io = WriteItemType.BYTE_IO
    for rank, plan in enumerate(plans):
        for position, item in enumerate(plan.items):
            index = item.index
            fqn = index.fqn
            entry = keys.get(fqn)
            if entry is None:
                entry = keys[fqn] = _Key(is_object=item.type == byte_io)
            entry.ranks.append(rank)
            entry.positions.append(position)
            entry.items.append(item)
            if entry.is_object:
                if item.type != byte_io or item.tensor_data is not None:
                    raise _GiveUp  # the readable dedup keys and sizes such an item by its data
                continue
            data = item.tensor_data
            if data is None or item.type == byte_io:
                raise _GiveUp
            chunk = data.chunk
            if index.offset is None or index.offset != chunk.offsets:
                raise _GiveUp  # (fqn, None) indices collide: the readable steps name them
            entry.chunks.append(chunk)
            entry.sizes.append(data.size)
            entry.dtypes.append(data.properties.dtype)
    return keys


def _key_items(fqn: str, entry: _Key) -> KeyItems:
    """``entry`` as arrays; gives up unless every item agrees on global size and dtype and has
    the global size's rank."""
    ranks = np.asarray(entry.ranks, dtype=np.int64)
    positions = np.asarray(entry.positions, dtype=np.int64)
    items = entry.items

    def head(row: int) -> tuple[torch.Size, bool]:
        data = items[row].tensor_data
        return data.size, data.properties.requires_grad

    if entry.is_object:
        return KeyItems(fqn, True, ranks, positions, head=head)
    size, dtype = tuple(entry.sizes[0]), entry.dtypes[0]
    n, ndim = len(entry.chunks), len(size)
    if not check_size(size):
        raise _GiveUp
    # list.count compares in C: one pass, no Python call per item
    if entry.sizes.count(size) != n or entry.dtypes.count(dtype) != n:
        raise _GiveUp
    offsets = [c.offsets for c in entry.chunks]
    extents = [c.sizes for c in entry.chunks]
    if {len(o) for o in offsets} | {len(e) for e in extents} != {ndim}:
        raise _GiveUp
    try:
        lows = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=n * ndim)
        highs = np.fromiter(chain.from_iterable(extents), dtype=np.int64, count=n * ndim)
    except OverflowError:
        raise _GiveUp from None
    chunks = entry.chunks
    return KeyItems(
        fqn,
        False,
        ranks,
        positions,
        lows.reshape(n, ndim),
        highs.reshape(n, ndim),
        size,
        dtype,
        chunks=lambda rows: [chunks[i] for i in rows.tolist()],
        head=head,
    )


def check_size(size: tuple[int, ...]) -> bool:
    """Whether a global size is one the array planning takes: no negative dim, fewer than
    ``2**56`` elements (in bounds of such a size, no sum or product below overflows int64)."""
    return not (
        min(size, default=0) < 0 or max(size, default=0) >= _LIMIT or math.prod(size) >= _LIMIT
    )


def _in_bounds(lows: np.ndarray, extents: np.ndarray, size: tuple[int, ...]) -> bool:
    bound = np.asarray(size, dtype=np.int64)
    if not ((lows >= 0).all() and (extents >= 0).all()):
        return False
    # each below 2**56 before the sum, so the sum cannot wrap
    return bool(
        (lows <= bound).all() and (extents <= bound).all() and (lows + extents <= bound).all()
    )


def _exact_cover(lows: np.ndarray, extents: np.ndarray, size: tuple[int, ...]) -> bool:
    """Whether the non-empty boxes cover the tensor once: no element twice, none missing.

    The boxes' boundaries cut each dim into intervals; when every box is one cell of that
    grid (every DTensor and ShardedTensor layout), the cover is exact iff no cell is hit twice
    and the boxes are as many as the cells. Other layouts are left to the readable steps.
    """
    if math.prod(size) == 0:
        return True
    if not size:
        return len(lows) == 1
    filled = extents.prod(axis=1) > 0
    lows, highs = lows[filled], lows[filled] + extents[filled]
    if len(lows) == 0:
        return False
    cells, shape = [], []
    for d in range(len(size)):
        bounds = np.unique(np.concatenate((lows[:, d], highs[:, d])))
        first, last = np.searchsorted(bounds, lows[:, d]), np.searchsorted(bounds, highs[:, d])
        if bounds[0] != 0 or bounds[-1] != size[d] or (last - first != 1).any():
            return False
        cells.append(first)
        shape.append(len(bounds) - 1)
    if len(lows) != math.prod(shape):
        return False
    return np.unique(np.ravel_multi_index(tuple(cells), shape)).size == len(lows)


def _replicas(lows: np.ndarray, extents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items sorted by box (offsets, then sizes; stable), each item's chunk id (items with equal
    boxes share one, ids in sorted order) and each id's count."""
    n = len(lows)
    if lows.shape[1] == 0:
        return np.arange(n), np.zeros(n, dtype=np.int64), np.array([n], dtype=np.int64)
    order = np.lexsort(tuple(extents.T[::-1]) + tuple(lows.T[::-1]))
    boxes = np.concatenate((lows, extents), axis=1)[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (boxes[1:] != boxes[:-1]).any(axis=1)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return order, ids, np.diff(np.flatnonzero(np.append(new, True)))


def fast_global_plan(
    plans: Sequence[SavePlan], *, dedup: bool, planner_data: object = None
) -> tuple[list[SavePlan], Metadata] | None:
    """What dedup, :func:`build_metadata` and validation give for ``plans``, or ``None``.

    Returns the deduplicated plans (``planner_data`` dropped, as the planner does) and the
    metadata, identical to the readable steps' result, when the plans are of the common case
    and valid; ``None`` otherwise, and then the readable steps must run. Cost: one Python pass
    over the items, then numpy work per key (:func:`plan_keys`).
    """
    try:
        keys = [_key_items(fqn, entry) for fqn, entry in _group(plans).items()]
    except _GiveUp:
        return None
    planned = plan_keys(keys, len(plans), dedup=dedup, planner_data=planner_data)
    if planned is None:
        return None
    dropped, metadata = planned
    out = []
    for rank, plan in enumerate(plans):
        gone = dropped.get(rank)
        items = plan.items if not gone else [i for p, i in enumerate(plan.items) if p not in gone]
        out.append(dataclasses.replace(plan, items=list(items), planner_data=None))
    return out, metadata


def plan_keys(
    keys: Sequence[KeyItems],
    world: int,
    *,
    dedup: bool,
    planner_data: object = None,
    replica_chunks: list[tuple[KeyItems, np.ndarray, np.ndarray]] | None = None,
) -> tuple[dict[int, set[int]], Metadata] | None:
    """Dedup, metadata and validation of the items of ``world`` ranks given key by key (keys
    in order of their first item in (rank, position) order), or ``None`` where the readable
    steps must decide (anything not of the common case, or not valid).

    Returns the positions each rank drops (replicas another rank writes) and the metadata.
    ``replica_chunks``, if given, receives ``(entry, ids, counts)`` for each key some chunk of
    which several items hold: each row's chunk id and each chunk's count of items.
    """
    tensors: dict[str, tuple] = {}
    # each item's chunk id within its key; each chunk's owner, and the bytes each rank writes
    load = np.zeros(world, dtype=np.int64)
    replicated: list[tuple[int, str, int, KeyItems, np.ndarray]] = []  # bytes, key, chunk, rows
    owner: dict[str, np.ndarray] = {}
    chunk_ids: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # ids, counts, ranks
    for entry in keys:
        fqn, ranks = entry.fqn, entry.ranks
        if entry.is_object:
            order = np.arange(len(ranks))
            ids, counts = np.zeros(len(ranks), dtype=np.int64), np.array([len(ranks)])
            per_chunk = np.ones(1, dtype=np.int64)
        else:
            lows, extents, size, dtype = entry.lows, entry.extents, entry.size, entry.dtype
            assert lows is not None and extents is not None
            if not _in_bounds(lows, extents, size):
                return None
            order, ids, counts = _replicas(lows, extents)
            tensors[fqn] = (lows, extents, size, dtype, order)
            per_chunk = np.zeros(len(counts), dtype=np.int64)
            per_chunk[ids] = extents.prod(axis=1) * dtype.itemsize
        if (counts > 1).any():
            if not dedup:
                return None
            if replica_chunks is not None:
                replica_chunks.append((entry, ids, counts))
        chunk_ids[fqn] = (ids, counts, ranks)
        chosen = np.full(len(counts), -1, dtype=np.int64)
        single = counts == 1
        if single.any():
            rows = np.flatnonzero(single[ids])
            chosen[ids[rows]] = ranks[rows]
            np.add.at(load, ranks[rows], per_chunk[ids[rows]])
        # ``order`` lists the rows chunk by chunk (ids ascending), each chunk's in plan order
        starts = np.concatenate(([0], np.cumsum(counts)))
        for chunk in np.flatnonzero(~single).tolist():
            rows = order[starts[chunk] : starts[chunk + 1]]
            replicated.append((int(per_chunk[chunk]), fqn, chunk, entry, rows))
        owner[fqn] = chosen
    # replicated chunks, largest first (ties by the readable dedup's key order), to the
    # holder with the fewest bytes so far (ties to the lowest rank): dedup_save_plans' rule
    replicated.sort(key=lambda r: (-r[0], _order(r[3].item_key(int(r[4][0])))))
    for nbytes, fqn, chunk, _, rows in replicated:
        holders = np.unique(chunk_ids[fqn][2][rows])
        chosen = int(holders[np.argmin(load[holders])])
        owner[fqn][chunk] = chosen
        load[chosen] += nbytes
    return _assemble(keys, tensors, owner, chunk_ids, planner_data)


def _assemble(keys, tensors, owner, chunk_ids, planner_data):
    """The positions each rank drops and the metadata, once every chunk has its owner."""
    dropped: dict[int, set[int]] = {}
    entries: dict[str, Any] = {}
    first_kept: list[tuple[int, int, str]] = []
    for entry in keys:
        fqn = entry.fqn
        ids, counts, ranks = chunk_ids[fqn]
        if len(counts) == len(ids):  # no replicas: every item stays
            kept = np.ones(len(ids), dtype=bool)
        else:  # the first of the owner's copies stays (a rank may hold one chunk twice)
            rows = np.flatnonzero(ranks == owner[fqn][ids])
            _, first = np.unique(ids[rows], return_index=True)
            kept = np.zeros(len(ids), dtype=bool)
            kept[rows[first]] = True
            gone = np.flatnonzero(~kept)
            for rank, position in zip(ranks[gone].tolist(), entry.positions[gone].tolist()):
                dropped.setdefault(rank, set()).add(position)
        head = int(np.flatnonzero(kept)[0])
        first_kept.append((int(ranks[head]), int(entry.positions[head]), fqn))
        if entry.is_object:
            entries[fqn] = BytesStorageMetadata()
            continue
        lows, extents, size, dtype, order = tensors[fqn]
        order = order[kept[order]]  # the kept rows by offsets, then sizes: build_metadata's order
        if not _exact_cover(lows[order], extents[order], size) or _duplicate_offsets(lows[order]):
            return None
        global_size, requires_grad = entry.head(head)
        entries[fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype, requires_grad=requires_grad),
            size=global_size,
            chunks=entry.chunks(order),
        )
    first_kept.sort()
    metadata = new_metadata(
        state_dict_metadata={fqn: entries[fqn] for _, _, fqn in first_kept},
        planner_data=planner_data,
        version=DCP_FORMAT_VERSION,
    )
    return dropped, metadata


def _duplicate_offsets(lows: np.ndarray) -> bool:
    """Whether two chunks, sorted by offsets, start at the same offsets (empty chunks escape the
    cover check; the readable steps name such a key as written twice)."""
    if len(lows) < 2 or lows.shape[1] == 0:
        return len(lows) > 1
    return bool((lows[1:] == lows[:-1]).all(axis=1).any())
