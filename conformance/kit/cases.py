"""Cases and value encoding: plain, picklable data drawn in the controller and shipped to ranks.

Ranks build their state from a case deterministically, so every rank of a world and
every re-run of a shrinking hypothesis example sees the same tensors. Tensors are
value-encoded: each element holds a function of its global index (the index itself
wherever the dtype represents it exactly), so a wrong offset shows as a wrong value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Layout",
    "TensorSpec",
    "SaveLoadCase",
    "placement_from_text",
    "encoded_tensor",
    "blank_tensor",
    "NOT_LOADED",
    "exact_range",
    "resalted",
]


@dataclass(frozen=True)
class Layout:
    """How a tensor is held: ``plain`` (a full copy on each holding rank), ``dtensor`` or
    ``sharded_tensor``.

    ``placements`` use short names: ``S0`` is ``Shard(0)``, ``R`` is ``Replicate()``,
    ``SS0x2`` is ``_StridedShard(0, split_factor=2)``. ``mesh`` is the DeviceMesh shape;
    a ``sharded_tensor`` is chunked on dim ``shard_dim`` over the holding ranks.

    ``ranks``, when given, are the only ranks whose state holds the key (a pipeline stage's
    layers, an expert): a plain tensor is a full copy on each of them, a DTensor's mesh is
    those ranks in that order (a submesh), a ShardedTensor's chunks are placed on them in
    that order. The other ranks' state dicts do not have the key at all.
    """

    kind: str = "plain"
    mesh: tuple[int, ...] = ()
    placements: tuple[str, ...] = ()
    shard_dim: int = 0
    ranks: tuple[int, ...] = ()

    def __str__(self) -> str:
        if not self.ranks:
            if self.kind == "plain":
                return "plain"
            if self.kind == "sharded_tensor":
                return f"ShardedTensor(dim={self.shard_dim})"
            return f"DTensor(mesh={self.mesh}, [{', '.join(self.placements)}])"
        ranks, absent = list(self.ranks), "; no other rank has the key"
        if self.kind == "plain":
            return f"plain on ranks {sorted(ranks)}{absent}"
        if self.kind == "sharded_tensor":
            return f"ShardedTensor(dim={self.shard_dim}, chunks on ranks {ranks}){absent}"
        return f"DTensor(mesh={self.mesh} of ranks {ranks}, [{', '.join(self.placements)}]){absent}"

    @property
    def world_size(self) -> int | None:
        """Ranks the layout needs at least (None: any)."""
        if self.ranks:
            return max(self.ranks) + 1
        return math.prod(self.mesh) if self.kind == "dtensor" else None

    def holds(self, rank: int) -> bool:
        """Whether rank ``rank``'s state has the key."""
        return not self.ranks or rank in self.ranks


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of the state: key, global shape, dtype name, and a salt for its values."""

    key: str
    shape: tuple[int, ...]
    dtype: str = "float64"
    salt: int = 0

    def __str__(self) -> str:
        return f"{self.key!r}: {self.dtype}{list(self.shape)}"


@dataclass(frozen=True)
class SaveLoadCase:
    """Save ``tensors`` under ``save_layouts`` on ``save_world`` ranks, load under ``load_layouts``.

    Every key is held by at least one rank on each side (see :attr:`Layout.ranks`).
    """

    tensors: tuple[TensorSpec, ...]
    save_layouts: tuple[Layout, ...]
    load_layouts: tuple[Layout, ...]
    save_world: int = 1
    load_world: int = 1
    objects: tuple[tuple[str, Any], ...] = ()
    nested: bool = False
    object_ranks: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    """Per object of ``objects`` (all of them, or none): the ranks whose state holds it on save
    and on load; ``()`` on a side is every rank. The other ranks' state dicts lack the key."""

    def holds_object(self, number: int, rank: int, *, for_load: bool) -> bool:
        """Whether ``rank``'s state holds object ``number`` on the save or load side."""
        if not self.object_ranks:
            return True
        holders = self.object_ranks[number][1 if for_load else 0]
        return not holders or rank in holders

    def describe(self) -> str:
        """One line per tensor: key, dtype and shape, saved layout -> loaded layout."""
        lines = [f"save on {self.save_world} rank(s), load on {self.load_world} rank(s)"]
        for spec, a, b in zip(self.tensors, self.save_layouts, self.load_layouts):
            lines.append(f"  {spec}: {a} -> {b}")
        for number, (key, value) in enumerate(self.objects):
            where = ""
            if self.object_ranks and any(self.object_ranks[number]):
                saved, loaded = (sorted(r) or "all" for r in self.object_ranks[number])
                where = f" on ranks {saved} -> {loaded}; no other rank has the key"
            lines.append(f"  object {key!r}: {value!r}{where}")
        return "\n".join(lines)


def placement_from_text(text: str):
    """``S0`` -> Shard(0), ``R`` -> Replicate(), ``SS0x2`` -> _StridedShard(0, split_factor=2)."""
    from torch.distributed.tensor import Replicate, Shard

    if text == "R":
        return Replicate()
    if text.startswith("SS"):
        from torch.distributed.tensor.placement_types import _StridedShard

        dim, _, factor = text[2:].partition("x")
        return _StridedShard(int(dim), split_factor=int(factor))
    if text.startswith("S"):
        return Shard(int(text[1:]))
    raise ValueError(f"unknown placement name {text!r}: expected R, S<dim> or SS<dim>x<factor>")


def exact_range(dtype) -> int:
    """How many consecutive integers from 0 the dtype holds exactly (its encoding modulus)."""
    import torch

    if dtype == torch.bool:
        return 2
    if dtype.is_floating_point:
        mantissa = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}.get(
            dtype, 3
        )
        return 2**mantissa
    if dtype.is_complex:
        return 2**24 if dtype == torch.complex64 else 2**53
    info = torch.iinfo(dtype)
    return min(info.max + 1, 2**62)


def encoded_tensor(shape: tuple[int, ...], dtype_name: str, salt: int = 0):
    """The full global tensor of a spec: element i is ``(i * 7 + salt) mod exact_range`` in its dtype."""
    import torch

    dtype = getattr(torch, dtype_name)
    modulus = exact_range(dtype)
    index = torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)
    values = (index * 7 + salt) % modulus if modulus < 2**62 else index * 7 + salt
    if dtype.is_complex:
        return torch.complex(values.double(), -values.double()).to(dtype)
    if dtype.is_floating_point:
        return values.to(torch.float64).to(dtype)
    return values.to(dtype)


NOT_LOADED = "<not loaded>"
"""The value of each object of a state a load goes into: no saved object equals it (a load that
leaves an object as it was shows, even where the saved object is ``None``)."""


def blank_tensor(shape: tuple[int, ...], dtype_name: str, salt: int = 0):
    """What a load fills: differs from ``encoded_tensor(shape, dtype_name, salt)`` at every element.

    Not zeros: an element the load never writes would pass wherever the encoding is 0.
    """
    return encoded_tensor(shape, dtype_name, salt + 1)


def resalted(case: SaveLoadCase, salt: int = 777) -> SaveLoadCase:
    """The same keys, shapes and layouts with other values: every tensor's salt moved by
    ``salt``, every object wrapped as ``("v2", value)`` (a newer version of the state)."""
    from dataclasses import replace

    tensors = tuple(replace(t, salt=t.salt + salt) for t in case.tensors)
    objects = tuple((key, ("v2", value)) for key, value in case.objects)
    return replace(case, tensors=tensors, objects=objects)
