"""Read items for resharding: the overlap of every saved chunk with every destination chunk.

Saved chunks of a tensor are indexed once (sorted by start on the dim with the most
distinct starts); a destination chunk then finds its candidates by bisection instead
of scanning every saved chunk, so planning a load across all ranks is not quadratic.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

from .geometry import chunk_overlap, chunk_volume

__all__ = ["SavedChunkIndex", "ReadPlanResult", "read_items_for_chunk"]


class SavedChunkIndex:
    """The saved chunks of one tensor, indexed for overlap queries."""

    def __init__(self, chunks: Sequence[ChunkStorageMetadata]):
        self.chunks = [c for c in chunks if chunk_volume(c) > 0]
        ndim = len(self.chunks[0].offsets) if self.chunks else 0
        self.dim = (
            max(range(ndim), key=lambda d: len({c.offsets[d] for c in self.chunks})) if ndim else -1
        )
        if self.dim >= 0:
            self.chunks.sort(key=lambda c: c.offsets[self.dim])
            self.starts = [c.offsets[self.dim] for c in self.chunks]
            self.longest = max(c.sizes[self.dim] for c in self.chunks)

    def overlapping(
        self, dest: ChunkStorageMetadata
    ) -> list[tuple[ChunkStorageMetadata, ChunkStorageMetadata]]:
        """``(saved chunk, intersection)`` for every saved chunk that shares elements with ``dest``."""
        if chunk_volume(dest) == 0:
            return []
        if self.dim < 0:
            candidates = self.chunks
        else:
            lo = dest.offsets[self.dim] - self.longest + 1
            hi = dest.offsets[self.dim] + dest.sizes[self.dim]
            candidates = self.chunks[bisect_left(self.starts, lo) : bisect_left(self.starts, hi)]
        out = []
        for saved in candidates:
            both = chunk_overlap(saved, dest)
            if both is not None:
                out.append((saved, both))
        return out


@dataclass
class ReadPlanResult:
    """Read items for one destination chunk and how many of its elements no saved chunk holds."""

    items: list[ReadItem]
    uncovered: int


def read_items_for_chunk(
    fqn: str,
    index: SavedChunkIndex,
    dest: ChunkStorageMetadata,
    dest_index: MetadataIndex | None = None,
) -> ReadPlanResult:
    """Read items filling ``dest`` (global coordinates) from the saved chunks of ``fqn``.

    ``dest_offsets`` are relative to ``dest`` and ``storage_offsets`` to the saved chunk,
    as DCP's readers and planners expect. Saved chunks must not overlap (metadata
    parsing and plan validation guarantee it), so the covered volume is exact.
    """
    dest_index = dest_index or MetadataIndex(fqn, dest.offsets)
    items = []
    covered = 0
    for saved, both in index.overlapping(dest):
        covered += chunk_volume(both)
        items.append(
            ReadItem(
                type=LoadItemType.TENSOR,
                dest_index=dest_index,
                dest_offsets=torch.Size(o - d for o, d in zip(both.offsets, dest.offsets)),
                storage_index=MetadataIndex(fqn, saved.offsets),
                storage_offsets=torch.Size(o - s for o, s in zip(both.offsets, saved.offsets)),
                lengths=both.sizes,
            )
        )
    if len(dest.sizes) == 0:  # a scalar: one element, saved or not
        covered = min(covered, 1)
    return ReadPlanResult(items, math.prod(dest.sizes) - covered)
