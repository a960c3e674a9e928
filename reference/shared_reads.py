"""Shared reads: a saved chunk that several ranks need parts of is read once and the parts sent.

A resharding load can make each rank read much more than it needs. The reference reader
reads, per saved chunk, one span from the first to the last byte a rank needs, in whole
checksum blocks (so that everything read is verified). When a rank needs a strided part of
a chunk (a column slab of a row-major chunk: ``Shard(0)`` saved, ``Shard(1)`` loaded), that
span is most of the chunk, and every such rank reads it: three ranks read the tensor three
times. Here the coordinator, which sees every rank's read items, picks for each such chunk one
*owner* rank that reads the span once (its own items and the others' together, verified as
always) and sends each other rank its pieces over the process group (one
``all_to_all_single`` per round); the receiving ranks read nothing of that chunk. The idea is
ByteCheckpoint's load-time deduplication of reads (Wan et al., "ByteCheckpoint: A Unified
Checkpointing System for Large Foundation Model Development", NSDI 2025, section 4.3), where
storage bandwidth, not the interconnect, bounds a load.

Only reads that would be *amplified* (a rank reading more than :data:`AMPLIFIED` times what it
needs of a chunk) are shared, and only when sharing reads fewer bytes in all; a rank that needs
a whole chunk (a replicated load) still reads it itself. What is sent is bounded per round
(:data:`ROUND_BYTES` by default, sent plus received per rank) so the staging memory stays
bounded: a load sends its pieces in as many rounds as that takes.

Call order, in the reference's ``load`` (``driver.py``): the coordinator's global-plan step calls
:func:`plan_shared_reads` on the planner's global plan; every rank then runs one step per round:
it builds a :class:`RelayPlanner` (the round's send and receive buffers) and reads (the round's
relayed items, and its own items: those of a relayed chunk in that chunk's round, the rest in
the first) through it; every rank then learns whether every rank's reads succeeded (one
all-reduce of a flag), and only if so the pieces travel (:meth:`RelayPlanner.exchange`) and
are committed (:meth:`RelayPlanner.commit_received`). Objects read are kept and given to the
planner after the last round, so a load that fails leaves them as they were on every rank.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

from .errors import IntegrityError
from .metadata_format import Region
from .storage import item_spans, row_major_strides

__all__ = [
    "AMPLIFIED",
    "ROUND_BYTES",
    "Round",
    "SharedReads",
    "RelayPlanner",
    "plan_shared_reads",
    "direct_read_bytes",
]

AMPLIFIED = 1.05
"""A rank whose direct read of a chunk exceeds this many times the bytes it needs of it gets
those bytes from an owner instead (when that reads fewer bytes in all)."""

ROUND_BYTES = 256 << 20
"""Default bound of one round's sent plus received bytes on any rank (a chunk whose pieces
alone exceed it gets a round of its own)."""

_ALIGN = 16  # each piece starts 16-byte aligned in the exchange buffers (any dtype's view)

RELAY_KEY = "\x00ckptconf relayed read"
"""The destination key of the items a rank reads for others (piece ``n`` at offsets ``(n,)``)."""


@dataclass
class Round:
    """One rank's part in one round: the items it reads for others (``relays``: the receiving
    rank and the item, as that rank planned it) and the items it gets (``receives``: the owner
    and the item). Both are in the order the bytes travel: by peer rank, then plan order."""

    relays: list[tuple[int, ReadItem]] = field(default_factory=list)
    receives: list[tuple[int, ReadItem]] = field(default_factory=list)


@dataclass
class SharedReads:
    """One rank's shared reads: its rounds (the same number on every rank; none when no read is
    shared anywhere, and then a load takes the steps it always took)."""

    rounds: list[Round] = field(default_factory=list)


def _element_span(items: list[ReadItem], shape: tuple[int, ...]) -> tuple[int, int] | None:
    """First and one-past-last row-major element of the saved chunk that ``items`` touch."""
    spans = item_spans(items, row_major_strides(shape))
    if not spans:
        return None
    return min(first for _, first, _ in spans), max(end for _, _, end in spans)


def direct_read_bytes(
    items: list[ReadItem], region: Region, shape: tuple[int, ...], itemsize: int
) -> int:
    """Bytes the reference reader reads of one saved chunk for ``items``: the span from the first
    to the last element they need, in whole checksum blocks (``ReferenceStorageReader``)."""
    span = _element_span(items, shape)
    if span is None:
        return 0
    blocks = region.blocks(span[0] * itemsize, span[1] * itemsize)
    if not blocks:
        return 0
    return min(region.length, blocks.stop * region.block_size) - blocks.start * region.block_size


def item_bytes(item: ReadItem, itemsize: int) -> int:
    """Bytes of the elements ``item`` reads."""
    return math.prod(item.lengths) * itemsize


def _slot(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def plan_shared_reads(
    plans: list[LoadPlan],
    metadata: Metadata,
    *,
    amplified: float = AMPLIFIED,
    round_bytes: int | None = None,
) -> tuple[list[LoadPlan], list[SharedReads]]:
    """Each rank's plan with the reads it no longer makes, and its shared reads.

    Args:
        plans: every rank's load plan (the planner's global plan), ``plans[r]`` for rank ``r``.
        metadata: the checkpoint's metadata, its ``storage_data`` the reference format's
            :class:`Region` per saved chunk (any other storage data: nothing is shared).
        amplified: the ratio of a rank's direct read of a chunk to what it needs of it above
            which its read is shared.
        round_bytes: the bound of one round's sent plus received bytes on a rank (default
            :data:`ROUND_BYTES`).

    Returns:
        ``(plans, shared)``: ``plans[r]`` keeps the items rank ``r`` still reads for itself, in
        order; ``shared[r]`` holds, per round, the items it reads for others and the items it
        receives. The plans are the ones given when nothing is shared.
    """
    regions = metadata.storage_data
    if not isinstance(regions, dict) or len(plans) < 2:
        return plans, [SharedReads() for _ in plans]
    # every rank's tensor items per saved chunk, in rank order, as a flat [rank, item, ...]
    # (keyed by name and offsets: hashing a MetadataIndex costs several times more)
    wanted: dict[tuple[str, Any], list] = {}
    get, tensor = wanted.get, LoadItemType.TENSOR
    for rank, plan in enumerate(plans):
        for item in plan.items:
            if item.type is tensor:
                index = item.storage_index
                key = (index.fqn, index.offset)
                entry = get(key)
                if entry is None:
                    wanted[key] = [rank, item]
                else:
                    entry += (rank, item)
    moved: set[tuple[int, int]] = set()  # (rank, id(item)) of items another rank reads
    transfers: list[tuple[int, list[tuple[int, ReadItem]], dict[int, int]]] = []
    owned = [0] * len(plans)
    sizes_of: dict[str, dict[tuple[int, ...], tuple[int, ...]]] = {}
    for (fqn, offset), entry in wanted.items():
        if entry[0] == entry[-2]:  # one rank needs this chunk: nothing to share
            continue
        by_rank: dict[int, list[ReadItem]] = {}
        for rank, item in zip(entry[::2], entry[1::2]):
            by_rank.setdefault(rank, []).append(item)
        index = entry[1].storage_index
        region = regions.get(index)
        if fqn not in sizes_of:
            saved = metadata.state_dict_metadata.get(fqn)
            sizes_of[fqn] = (
                {tuple(c.offsets): tuple(c.sizes) for c in saved.chunks}
                if isinstance(saved, TensorStorageMetadata)
                else {}
            )
        shape = sizes_of[fqn].get(tuple(offset) if offset is not None else ())
        if not isinstance(region, Region) or shape is None:
            continue
        itemsize = metadata.state_dict_metadata[fqn].properties.dtype.itemsize
        needs, direct = {}, {}
        for r, items in by_rank.items():
            if len(items) == 1 and tuple(items[0].lengths) == shape:
                needs[r] = direct[r] = region.length  # the whole chunk: read just as needed
            else:
                needs[r] = sum(item_bytes(i, itemsize) for i in items)
                direct[r] = direct_read_bytes(items, region, shape, itemsize)
        amplified_ranks = [r for r in by_rank if direct[r] > amplified * needs[r]]
        if not amplified_ranks:
            continue
        # the owner: a rank that reads its span anyway (not amplified) if any; among those,
        # the one that owns fewest bytes so far (reads spread over ranks), then the neediest
        calm = [r for r in by_rank if r not in amplified_ranks]
        owner = min(calm or by_rank, key=lambda r: (owned[r], -needs[r], r))
        receivers = [r for r in amplified_ranks if r != owner]
        if not receivers:
            continue
        together = [i for r in [owner, *receivers] for i in by_rank[r]]
        shared_read = direct_read_bytes(together, region, shape, itemsize)
        if shared_read >= direct[owner] + sum(direct[r] for r in receivers):
            continue
        pieces = [(r, i) for r in receivers for i in by_rank[r]]
        load = {owner: sum(_slot(item_bytes(i, itemsize)) for _, i in pieces)}
        for r in receivers:
            load[r] = sum(_slot(item_bytes(i, itemsize)) for i in by_rank[r])
            moved.update((r, id(i)) for i in by_rank[r])
        owned[owner] += load[owner]
        transfers.append((owner, pieces, load))
    if not transfers:
        return plans, [SharedReads() for _ in plans]
    rounds = _rounds(transfers, len(plans), ROUND_BYTES if round_bytes is None else round_bytes)
    shared = [SharedReads([Round() for _ in rounds]) for _ in plans]
    for k, members in enumerate(rounds):
        for owner, pieces, _ in members:
            for receiver, item in pieces:
                shared[owner].rounds[k].relays.append((receiver, item))
                shared[receiver].rounds[k].receives.append((owner, item))
    for part in shared:
        for one in part.rounds:
            one.relays.sort(key=lambda pair: pair[0])  # stable: plan order within a peer
            one.receives.sort(key=lambda pair: pair[0])
    out = [
        dataclasses.replace(plan, items=[i for i in plan.items if (rank, id(i)) not in moved])
        for rank, plan in enumerate(plans)
    ]
    return out, shared


def _rounds(transfers, world: int, round_bytes: int) -> list[list]:
    """Transfers grouped into rounds, in order, so that no rank's bytes in a round pass
    ``round_bytes`` (a transfer alone past it is a round of its own)."""
    rounds: list[list] = [[]]
    total = [0] * world
    for transfer in transfers:
        load = transfer[2]
        if rounds[-1] and any(total[r] + b > round_bytes for r, b in load.items()):
            rounds.append([])
            total = [0] * world
        rounds[-1].append(transfer)
        for r, b in load.items():
            total[r] += b
    return rounds


def _layout(pairs: list[tuple[int, ReadItem]], world: int, dtype_of) -> tuple[list[int], list[int]]:
    """Where each pair's piece lies in an exchange buffer (``pairs`` sorted by peer: a segment
    per peer, in order), and each peer's segment size in bytes."""
    offsets, sizes, at = [], [0] * world, 0
    for peer, item in pairs:
        size = _slot(item_bytes(item, dtype_of(item).itemsize))
        offsets.append(at)
        sizes[peer] += size
        at += size
    return offsets, sizes


def _piece(buffer: torch.Tensor, at: int, item: ReadItem, dtype: torch.dtype) -> torch.Tensor:
    size = item_bytes(item, dtype.itemsize)
    return buffer[at : at + size].view(dtype).view(tuple(item.lengths))


def _dtype_in(metadata: Metadata):
    def dtype(item: ReadItem) -> torch.dtype:
        return metadata.state_dict_metadata[item.storage_index.fqn].properties.dtype

    return dtype


class RelayPlanner:
    """The load planner a rank's reader is given in a round: the items it reads for others go
    to pieces of its send buffer, objects are kept for :meth:`load_objects`, and every other
    call goes to the rank's own planner. It also holds the round's receive buffer, so that
    everything a round allocates is allocated before any rank exchanges.

    Args:
        planner: the rank's load planner.
        metadata: the checkpoint's metadata (the saved dtype of each key).
        relays: this round's ``(receiving rank, item)`` pairs, sorted by receiving rank.
        receives: this round's ``(sending rank, item)`` pairs, sorted by sending rank.
        world: the number of ranks.
        objects: where objects read are kept (``(item, bytes)``) until every rank's reads of
            every round succeeded.
    """

    def __init__(
        self,
        planner: Any,
        metadata: Metadata,
        relays: list[tuple[int, ReadItem]],
        receives: list[tuple[int, ReadItem]],
        world: int,
        objects: list[tuple[ReadItem, bytes]],
    ):
        self.planner = planner
        self.objects = objects
        self.receives = receives
        self._dtype = _dtype_in(metadata)
        offsets, self.send_sizes = _layout(relays, world, self._dtype)
        self.receive_offsets, self.receive_sizes = _layout(receives, world, self._dtype)
        self.send = torch.empty(sum(self.send_sizes), dtype=torch.uint8)
        self.received = torch.empty(sum(self.receive_sizes), dtype=torch.uint8)
        self._pieces = [
            _piece(self.send, at, item, self._dtype(item)) for (_, item), at in zip(relays, offsets)
        ]
        # the items to read for others, told apart by their destination (a reader may hand the
        # planner copies of the items it was given, so identity cannot tell them)
        self.items = [
            dataclasses.replace(item, dest_index=MetadataIndex(RELAY_KEY, torch.Size([n])))
            for n, (_, item) in enumerate(relays)
        ]

    def _relayed(self, read_item: ReadItem) -> torch.Tensor | None:
        index = read_item.dest_index
        if index.fqn != RELAY_KEY:
            return None
        return self._pieces[index.offset[0]]

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        piece = self._relayed(read_item)
        return piece if piece is not None else self.planner.resolve_tensor(read_item)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        if self._relayed(read_item) is None:
            self.planner.commit_tensor(read_item, tensor)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        self.objects.append((read_item, value.getvalue()))

    def __getattr__(self, name: str) -> Any:  # check_bytes, ...
        return getattr(self.planner, name)

    def exchange(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        """Send every rank its pieces read here and get this rank's: one
        ``all_to_all_single`` of bytes on ``device`` (the group's collective device). Every
        rank of ``group`` calls it for the same round, once every rank's reads succeeded."""
        out = self.received if device.type == "cpu" else self.received.to(device)
        dist.all_to_all_single(
            out, self.send.to(device), self.receive_sizes, self.send_sizes, group=group
        )
        if out is not self.received:
            self.received.copy_(out)

    def commit_received(self) -> None:
        """Give each received piece to the rank's planner as a read of its item
        (``resolve_tensor``, a copy, ``commit_tensor``), in order."""
        for (sender, item), at in zip(self.receives, self.receive_offsets):
            source = _piece(self.received, at, item, self._dtype(item))
            target = self.planner.resolve_tensor(item).detach()
            if tuple(target.shape) != tuple(item.lengths):
                raise IntegrityError(
                    f"key {item.dest_index.fqn!r}: planner gave a destination of shape "
                    f"{tuple(target.shape)} for a read of {tuple(item.lengths)} (read by rank "
                    f"{sender})"
                )
            target.copy_(source)
            self.planner.commit_tensor(item, target)

    def load_objects(self) -> None:
        """Give the rank's planner the objects kept, in the order read."""
        for item, data in self.objects:
            self.planner.load_bytes(item, io.BytesIO(data))
