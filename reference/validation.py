"""Global save plan validation: bounds, overlaps, gaps, disagreements, duplicate writes.

Every problem is reported, not the first. Overlaps and gaps of one tensor are found on
the grid that the chunk boundaries cut the tensor into: each chunk adds one to the
cells it covers (a numpy slice per chunk), then a cell counted twice is an overlap and
a cell counted zero times a gap. Layouts that DTensor and ShardedTensor produce make a
grid of at most a few cells per chunk, so this is O(n log n) in the number of chunks.
An irregular layout whose grid would be much larger (bricks: row blocks cut at other
columns each) is split into slabs along dims where chunks fall into disjoint intervals,
recursively, and only chunks no dim separates are swept pairwise; with no overlap, a
gap shows as a covered volume below the tensor's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType

from .geometry import as_tuple, chunk_in_bounds, chunk_overlap

__all__ = ["validate_global_plan", "chunk_layout_problems"]

_MAX_LISTED = 10  # overlaps or gaps named per tensor before summarising
_GRID_CELLS_PER_CHUNK = 8  # grids larger than this per chunk use the sweep instead
_GRID_MIN_CELLS = 4096


def _describe(chunk: ChunkStorageMetadata, owner: str | None = None) -> str:
    text = f"offsets {tuple(chunk.offsets)} sizes {tuple(chunk.sizes)}"
    return f"{text} ({owner})" if owner else text


def chunk_layout_problems(
    key: str,
    size: Sequence[int],
    chunks: Sequence[ChunkStorageMetadata],
    *,
    owners: Sequence[str] | None = None,
    require_cover: bool = True,
) -> list[str]:
    """Problems with how ``chunks`` lay out a tensor of ``size``: out of bounds, overlaps, gaps."""
    problems: list[str] = []
    owner = (lambda i: owners[i]) if owners is not None else (lambda i: None)
    inside: list[int] = []
    for i, chunk in enumerate(chunks):
        if chunk_in_bounds(size, chunk):
            inside.append(i)
        else:
            problems.append(
                f"key {key!r}: chunk {_describe(chunk, owner(i))} is out of bounds of size {tuple(size)}"
            )
    filled = [i for i in inside if math.prod(chunks[i].sizes) > 0]
    if len(size) == 0:
        if len(filled) > 1:
            problems.append(f"key {key!r}: scalar written by {len(filled)} chunks, expected 1")
        if require_cover and not filled:
            problems.append(f"key {key!r}: scalar has no chunk")
        return problems
    total = math.prod(size)
    if total == 0:
        return problems
    lows = np.array([tuple(chunks[i].offsets) for i in filled], dtype=np.int64).reshape(
        len(filled), len(size)
    )
    highs = lows + np.array([tuple(chunks[i].sizes) for i in filled], dtype=np.int64).reshape(
        len(filled), len(size)
    )
    bounds = [
        np.unique(np.concatenate(([0, n], lows[:, d], highs[:, d]))).tolist()
        for d, n in enumerate(size)
    ]
    cells = math.prod(len(b) - 1 for b in bounds)
    if cells <= max(_GRID_CELLS_PER_CHUNK * len(filled), _GRID_MIN_CELLS):
        grid = (lows, highs)
        problems += _grid_problems(key, size, chunks, filled, bounds, grid, owner, require_cover)
    else:
        problems += _sweep_problems(key, size, chunks, filled, owner, require_cover)
    return problems


def _grid_problems(key, size, chunks, filled, bounds, grid, owner, require_cover) -> list[str]:
    problems: list[str] = []
    counts = np.zeros([len(b) - 1 for b in bounds], dtype=np.int32)
    lows, highs = grid
    first = np.stack(
        [np.searchsorted(b, lows[:, d]) for d, b in enumerate(bounds)], axis=1
    ).reshape(len(filled), len(bounds))
    last = np.stack(
        [np.searchsorted(b, highs[:, d]) for d, b in enumerate(bounds)], axis=1
    ).reshape(len(filled), len(bounds))
    if (last - first == 1).all():  # each chunk one cell (DTensor, ShardedTensor): vectorised
        cells = tuple(first.T)
        np.add.at(counts, cells, 1)
        shared = counts[cells] > 1
        involved = [i for i, many in zip(filled, shared.tolist()) if many]
    else:
        slices = [
            tuple(slice(a, b) for a, b in zip(f, e)) for f, e in zip(first.tolist(), last.tolist())
        ]
        for sl in slices:
            counts[sl] += 1
        involved = [i for i, sl in zip(filled, slices) if (counts[sl] > 1).any()]
    if involved:
        problems += _pairwise_overlaps(key, chunks, involved, owner)
    if require_cover and (counts == 0).any():
        widths = [np.diff(np.asarray(b, dtype=np.int64)) for b in bounds]
        missing = 0
        listed = []
        gap_cells = list(zip(*np.nonzero(counts == 0)))
        for cell in gap_cells:
            volume = math.prod(int(widths[d][j]) for d, j in enumerate(cell))
            missing += volume
            if len(listed) < _MAX_LISTED:
                listed.append(
                    f"offsets {tuple(bounds[d][j] for d, j in enumerate(cell))} "
                    f"sizes {tuple(int(widths[d][j]) for d, j in enumerate(cell))}"
                )
        problems.append(
            f"key {key!r}: {missing} of {math.prod(size)} elements are not covered by any chunk "
            f"(gaps at {'; '.join(listed)}{'; ...' if len(gap_cells) > len(listed) else ''})"
        )
    return problems


def _pairwise_overlaps(key, chunks, involved, owner) -> list[str]:
    problems = []
    for a_pos, a in enumerate(involved):
        for b in involved[a_pos + 1 :]:
            both = chunk_overlap(chunks[a], chunks[b])
            if both is not None:
                if len(problems) == _MAX_LISTED:
                    problems.append(f"key {key!r}: more overlapping chunks not listed")
                    return problems
                problems.append(
                    f"key {key!r}: chunks {_describe(chunks[a], owner(a))} and "
                    f"{_describe(chunks[b], owner(b))} overlap at {_describe(both)}"
                )
    return problems


def _slabs(ids, lows, highs, dim) -> list[list[int]] | None:
    """``ids`` grouped by their interval on ``dim``, if those intervals are pairwise disjoint."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in ids:
        groups[(lows[i][dim], highs[i][dim])].append(i)
    intervals = sorted(groups)
    if any(b[0] < a[1] for a, b in zip(intervals, intervals[1:])):
        return None
    return [groups[k] for k in intervals]


def _boxes_overlap(i, j, lows, highs) -> bool:
    return all(max(a, b) < min(c, d) for a, b, c, d in zip(lows[i], lows[j], highs[i], highs[j]))


def _swept_pairs(ids, lows, highs, limit) -> list[tuple[int, int]]:
    """Overlapping pairs by a sweep along the dim where the chunks start at the most places."""
    dim = max(range(len(lows[ids[0]])), key=lambda d: len({lows[i][d] for i in ids}))
    pairs: list[tuple[int, int]] = []
    active: list[int] = []
    for i in sorted(ids, key=lambda i: (lows[i][dim], lows[i])):
        active = [j for j in active if highs[j][dim] > lows[i][dim]]
        pairs += [(j, i) for j in active if _boxes_overlap(i, j, lows, highs)]
        if len(pairs) >= limit:
            return pairs[:limit]
        active.append(i)
    return pairs


def _overlapping_pairs(ids, lows, highs, dims, limit) -> list[tuple[int, int]]:
    """Up to ``limit`` pairs of overlapping chunks among ``ids``.

    Chunks are split into slabs along a dim where their intervals are disjoint (no chunk of
    one slab can overlap one of another), recursively over the other dims: O(n log n) for
    grid, block and brick layouts. Only chunks that no dim separates are swept pairwise.
    """
    if len(ids) < 2 or limit <= 0:
        return []
    if not dims:  # the same box on every dim
        return [(ids[0], j) for j in ids[1:]][:limit]
    for dim in dims:
        slabs = _slabs(ids, lows, highs, dim)
        if slabs is not None:
            rest = [d for d in dims if d != dim]
            pairs: list[tuple[int, int]] = []
            for slab in slabs:
                pairs += _overlapping_pairs(slab, lows, highs, rest, limit - len(pairs))
                if len(pairs) >= limit:
                    break
            return pairs
    return _swept_pairs(ids, lows, highs, limit)


def _sweep_problems(key, size, chunks, filled, owner, require_cover) -> list[str]:
    problems: list[str] = []
    lows = {i: tuple(int(o) for o in chunks[i].offsets) for i in filled}
    highs = {i: tuple(o + int(n) for o, n in zip(lows[i], chunks[i].sizes)) for i in filled}
    pairs = _overlapping_pairs(list(filled), lows, highs, list(range(len(size))), _MAX_LISTED)
    for j, i in pairs:
        problems.append(
            f"key {key!r}: chunks {_describe(chunks[j], owner(j))} and "
            f"{_describe(chunks[i], owner(i))} overlap at {_describe(chunk_overlap(chunks[i], chunks[j]))}"
        )
    covered = sum(math.prod(chunks[i].sizes) for i in filled)
    if require_cover and not pairs and covered < math.prod(size):
        problems.append(
            f"key {key!r}: {math.prod(size) - covered} of {math.prod(size)} elements are not covered by any chunk"
        )
    return problems


def _item(rank: int, fqn: str) -> str:
    return f"rank {rank}: write item {fqn!r}"


def validate_global_plan(global_plan: Sequence[SavePlan], metadata: Metadata) -> list[str]:
    """Every problem of a global save plan against its metadata; empty when valid."""
    problems: list[str] = []
    entries = metadata.state_dict_metadata
    writers: dict[tuple, list[int]] = defaultdict(list)
    written_keys: set[str] = set()
    planned_chunks: dict[str, list[tuple[ChunkStorageMetadata, str]]] = defaultdict(list)
    for rank, plan in enumerate(global_plan):
        owner = f"rank {rank}"
        for item in plan.items:
            fqn = item.index.fqn
            index_offset = item.index.offset
            offset = as_tuple(index_offset) if index_offset is not None else None
            writers[(fqn, offset)].append(rank)
            written_keys.add(fqn)
            entry = entries.get(fqn)
            if entry is None:
                problems.append(f"{_item(rank, fqn)} has no entry in the metadata")
                continue
            if item.type == WriteItemType.BYTE_IO:
                if not isinstance(entry, BytesStorageMetadata):
                    problems.append(
                        f"{_item(rank, fqn)} writes bytes but the metadata records a tensor"
                    )
                continue
            data = item.tensor_data
            if data is None or not isinstance(entry, TensorStorageMetadata):
                problems.append(
                    f"{_item(rank, fqn)} writes a tensor but carries no tensor data or the "
                    "metadata records bytes"
                )
                continue
            if as_tuple(data.size) != as_tuple(entry.size):
                problems.append(
                    f"{_item(rank, fqn)} says global size {tuple(data.size)}, metadata says "
                    f"{tuple(entry.size)}"
                )
            if data.properties.dtype != entry.properties.dtype:
                problems.append(
                    f"{_item(rank, fqn)} says dtype {data.properties.dtype}, metadata says "
                    f"{entry.properties.dtype}"
                )
            if offset is not None and offset != as_tuple(data.chunk.offsets):
                problems.append(
                    f"{_item(rank, fqn)} is indexed at offsets {tuple(offset)} but its chunk starts at "
                    f"{tuple(data.chunk.offsets)}"
                )
            planned_chunks[fqn].append((data.chunk, owner))
    for (fqn, offset), ranks in writers.items():
        if len(ranks) > 1:
            at = f" at offsets {tuple(offset)}" if offset is not None else ""
            problems.append(f"key {fqn!r}{at} is written {len(ranks)} times, by ranks {ranks}")
    for fqn, entry in entries.items():
        if fqn not in written_keys:
            problems.append(f"key {fqn!r} is in the metadata but no rank writes it")
            continue
        if not isinstance(entry, TensorStorageMetadata):
            continue
        planned = planned_chunks.get(fqn, [])
        as_key = lambda c: (tuple(c.offsets), tuple(c.sizes))  # noqa: E731
        if sorted(as_key(c) for c, _ in planned) != sorted(as_key(c) for c in entry.chunks):
            problems.append(
                f"key {fqn!r}: the metadata lists {len(entry.chunks)} chunks but the plans write "
                f"{len(planned)} that differ from them"
            )
        problems += chunk_layout_problems(
            fqn, entry.size, [c for c, _ in planned], owners=[o for _, o in planned]
        )
    return problems
