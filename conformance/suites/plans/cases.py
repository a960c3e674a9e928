"""Plain cases for the plan-validation suite: simulated states, and hand-built save plans.

A :class:`PlanStateCase` is a state dict of a simulated world: each tensor has a layout
(a full copy on every rank, a DeviceMesh with placements, or explicit chunk lists as a
ShardedTensor has them), plus objects. A :class:`PlanCase` is a global save plan written
out item by item, valid or with one named defect, and builds the DCP ``SavePlan`` list
and ``Metadata`` for it. Both are frozen, picklable and print as a person reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata
    from torch.distributed.checkpoint.planner import SavePlan

__all__ = [
    "SimLayout",
    "SimTensor",
    "PlanStateCase",
    "PlannedWrite",
    "PlanCase",
    "DEFECTS",
    "Defect",
]


@dataclass(frozen=True)
class Defect:
    """A defect :func:`~.strategies.broken_save_plans` injects into a valid global save plan.

    ``title`` names it in a failure; ``oracle_word`` is a word of the reference
    ``validate_global_plan``'s message for it; ``level`` is ``core`` or ``strict`` and
    ``why`` says which; ``min_ranks`` is the fewest ranks a plan with it has in the
    rejection test (a gap or a disagreement needs two ranks for DCP's checks to apply).
    """

    name: str
    title: str
    oracle_word: str
    level: str
    min_ranks: int
    why: str


# overlapping, out-of-bounds and duplicated writes make a load read one element from two places
# or from outside the tensor, and a gap across ranks leaves elements unloaded: DCP's own
# validation checks these, so any planner must. Ranks disagreeing on a key's size or dtype only
# arise from ranks holding different tensors under one key; DCP does not check it: hardening.
_CHECKED_BY_DCP = "DCP's own validation checks it, so any planner must"
DEFECTS: dict[str, Defect] = {
    d.name: d
    for d in (
        Defect("overlap", "overlapping chunks", "overlap", "core", 1, _CHECKED_BY_DCP),
        Defect("gap", "a gap", "not covered", "core", 2, _CHECKED_BY_DCP),
        Defect(
            "out_of_bounds", "an out-of-bounds chunk", "out of bounds", "core", 1, _CHECKED_BY_DCP
        ),
        Defect(
            "size_mismatch",
            "ranks disagreeing on a global size",
            "global size",
            "strict",
            2,
            "only ranks holding different tensors under one key make it; DCP does not check it",
        ),
        Defect(
            "dtype_mismatch",
            "ranks disagreeing on a dtype",
            "dtype",
            "strict",
            2,
            "only ranks holding different tensors under one key make it; DCP does not check it",
        ),
        Defect(
            "duplicate_write", "a duplicated write", "written 2 times", "core", 1, _CHECKED_BY_DCP
        ),
    )
}
"""The defects by name, in the order the suite tries them."""


def _box(offsets: Sequence[int], sizes: Sequence[int]) -> str:
    if not offsets:
        return "[scalar]"
    return "[" + ", ".join(f"{o}:{o + s}" for o, s in zip(offsets, sizes)) + "]"


@dataclass(frozen=True)
class SimLayout:
    """How ranks hold a tensor: ``plain``, ``mesh`` or ``chunks``.

    ``plain``: every rank a full copy. ``mesh``: a DeviceMesh of shape ``mesh`` over ranks
    ``first_rank`` onwards with placement names (``S<d>``, ``R``); other ranks hold nothing.
    ``chunks``: ``(rank, offsets, sizes)`` boxes, as ShardedTensor local shards.
    """

    kind: str = "plain"
    mesh: tuple[int, ...] = ()
    placements: tuple[str, ...] = ()
    first_rank: int = 0
    chunks: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...] = ()

    def __str__(self) -> str:
        if self.kind == "plain":
            return "plain (every rank)"
        if self.kind == "mesh":
            ranks = math.prod(self.mesh)
            where = (
                f" on ranks {self.first_rank}..{self.first_rank + ranks - 1}"
                if self.first_rank
                else ""
            )
            return f"DTensor(mesh={self.mesh}, [{', '.join(self.placements)}]){where}"
        shown = ", ".join(f"r{r}{_box(o, s)}" for r, o, s in self.chunks[:12])
        more = f", ... {len(self.chunks) - 12} more" if len(self.chunks) > 12 else ""
        return f"chunks({shown}{more})"

    def ranks(self, world: int) -> list[int]:
        """The ranks that hold any part of the tensor."""
        if self.kind == "plain":
            return list(range(world))
        if self.kind == "mesh":
            return list(range(self.first_rank, self.first_rank + math.prod(self.mesh)))
        return sorted({r for r, _, _ in self.chunks})


@dataclass(frozen=True)
class SimTensor:
    """A tensor of a simulated state: nested dict path, global shape, dtype name, layout."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    layout: SimLayout

    @property
    def key(self) -> str:
        """The flattened key planners use (DCP's: the path joined with dots)."""
        return ".".join(self.path)

    def __str__(self) -> str:
        return f"{self.key!r}: {self.dtype}{list(self.shape)} {self.layout}"


@dataclass(frozen=True)
class PlanStateCase:
    """The state of a simulated world of ``world`` ranks: tensors and objects (nested by path)."""

    world: int
    tensors: tuple[SimTensor, ...]
    objects: tuple[tuple[tuple[str, ...], Any], ...] = ()

    def keys(self) -> set[str]:
        """Every flattened key of the state."""
        return {t.key for t in self.tensors} | {".".join(p) for p, _ in self.objects}

    def describe(self) -> str:
        """One line per value."""
        lines = [f"{self.world} simulated rank(s)"]
        lines += [f"  {t}" for t in self.tensors]
        lines += [f"  {'.'.join(p)!r}: object {v!r}" for p, v in self.objects]
        return "\n".join(lines)


@dataclass(frozen=True)
class PlannedWrite:
    """One write item of a hand-built plan: rank, key, chunk, and the global size and dtype it claims.

    ``offsets``/``sizes``/``size``/``dtype`` are ``None`` for an object (bytes) item.
    """

    rank: int
    key: str
    offsets: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None
    size: tuple[int, ...] | None = None
    dtype: str | None = None

    @property
    def is_bytes(self) -> bool:
        """Whether this writes an object."""
        return self.offsets is None

    def __str__(self) -> str:
        if self.is_bytes:
            return f"{self.key!r} bytes"
        assert self.sizes is not None
        return (
            f"{self.key!r} {_box(self.offsets, self.sizes)} of {self.dtype}{list(self.size or ())}"
        )


@dataclass(frozen=True)
class PlanCase:
    """A global save plan item by item, on ``world`` ranks, with the defect injected (or None)."""

    world: int
    writes: tuple[PlannedWrite, ...]
    defect: str | None = None
    key: str | None = None
    detail: str = ""
    valid_writes: tuple[PlannedWrite, ...] = ()
    """For a broken plan: the valid plan the defect was injected into."""

    def valid(self) -> PlanCase:
        """The valid counterpart of a broken plan: the same plan without its defect."""
        if self.defect is None:
            return self
        return PlanCase(self.world, self.valid_writes)

    def save_plans(self, planner_data: Any = None) -> list[SavePlan]:
        """One DCP ``SavePlan`` per rank, items in the order of ``writes``."""
        import copy

        from torch.distributed.checkpoint.planner import SavePlan

        items: list[list] = [[] for _ in range(self.world)]
        for write in self.writes:
            items[write.rank].append(_write_item(write, self._whole(write)))
        return [SavePlan(i, planner_data=copy.deepcopy(planner_data)) for i in items]

    def _whole(self, write: PlannedWrite) -> bool:
        """A tensor written as one whole chunk by one item is a TENSOR item, else SHARD."""
        same = [w for w in self.writes if w.key == write.key]
        return (
            len(same) == 1
            and write.offsets == (0,) * len(write.offsets or ())
            and (write.sizes == write.size)
        )

    def metadata(self) -> Metadata:
        """The metadata a planner builds from these plans: the first item of a key fixes its
        global size and dtype, every item adds its chunk, objects are bytes."""
        import torch
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            ChunkStorageMetadata,
            Metadata,
            TensorProperties,
            TensorStorageMetadata,
        )

        entries: dict[str, Any] = {}
        for write in sorted(self.writes, key=lambda w: w.rank):
            if write.is_bytes:
                entries.setdefault(write.key, BytesStorageMetadata())
                continue
            assert write.dtype is not None and write.size is not None
            entry = entries.setdefault(
                write.key,
                TensorStorageMetadata(
                    properties=TensorProperties(dtype=getattr(torch, write.dtype)),
                    size=torch.Size(write.size),
                    chunks=[],
                ),
            )
            if isinstance(entry, TensorStorageMetadata):
                entry.chunks.append(
                    ChunkStorageMetadata(
                        offsets=torch.Size(write.offsets), sizes=torch.Size(write.sizes)
                    )
                )
        return Metadata(state_dict_metadata=entries)

    def describe(self) -> str:
        """The defect, then every rank's items."""
        head = (
            f"defect: {self.defect} on key {self.key!r}: {self.detail}"
            if self.defect
            else "valid plan"
        )
        lines = [head, f"{self.world} rank(s):"]
        for rank in range(self.world):
            mine = [str(w) for w in self.writes if w.rank == rank]
            lines.append(f"  rank {rank}: {'; '.join(mine) if mine else '(nothing)'}")
        return "\n".join(lines)


def _write_item(write: PlannedWrite, whole: bool):
    import torch
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    if write.is_bytes:
        return WriteItem(index=MetadataIndex(write.key), type=WriteItemType.BYTE_IO)
    assert write.dtype is not None and write.size is not None and write.sizes is not None
    offsets = torch.Size(write.offsets)
    return WriteItem(
        index=MetadataIndex(write.key, offsets),
        type=WriteItemType.TENSOR if whole else WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=offsets, sizes=torch.Size(write.sizes)),
            properties=TensorProperties(dtype=getattr(torch, write.dtype)),
            size=torch.Size(write.size),
        ),
    )
