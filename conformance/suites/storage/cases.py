"""Cases of the storage suite and their strategies.

Flat, same-layout states (:func:`flat_cases`, :func:`sized_cases`: 2 elements or more, something
to corrupt), a second state for a re-save (:func:`other_cases`), and hand-made save plans
(:class:`HandCase`): the test is the planner, so what the storage must write and read back
is known exactly, independent of any planner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import SaveLoadCase, TensorSpec
from ...kit.strategies import (
    global_shapes,
    layout_kinds,
    layouts,
    no_prefix_clash,
    object_values,
    save_load_cases,
    supported_options,
    tensor_keys,
)

__all__ = [
    "MAX_SIDE",
    "HandCase",
    "HandTensor",
    "Piece",
    "flat_cases",
    "hand_cases",
    "other_cases",
    "sized_cases",
]

MAX_SIDE = 6


@dataclass(frozen=True)
class Piece:
    """A chunk of a tensor that ``rank`` writes: ``sizes`` elements from global ``offsets``."""

    rank: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class HandTensor:
    """A value-encoded tensor and the chunks the ranks write of it (together: all of it, once)."""

    spec: TensorSpec
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class HandCase:
    """Hand-made save plans: tensors in pieces, and objects ``(key, payload, writing rank)``."""

    world: int
    tensors: tuple[HandTensor, ...]
    objects: tuple[tuple[str, bytes, int], ...] = ()

    def describe(self) -> str:
        """One line per tensor with its pieces, then the objects."""
        lines = [f"hand-made plans on {self.world} rank(s)"]
        for t in self.tensors:
            pieces = ", ".join(f"rank {p.rank}: {p.offsets}+{p.sizes}" for p in t.pieces)
            lines.append(f"  {t.spec}: {pieces}")
        for key, payload, rank in self.objects:
            lines.append(f"  object {key!r}: {len(payload)} bytes written by rank {rank}")
        return "\n".join(lines)


def flat_cases(backend: Backend, *, worlds=(1, 2)) -> st.SearchStrategy[SaveLoadCase]:
    """Flat, same-layout cases of the layouts and features the backend supports."""
    options = supported_options(backend, max_tensors=2, max_side=MAX_SIDE, nested=False)
    return save_load_cases(save_worlds=worlds, same_layout=True, **options)


@st.composite
def sized_cases(draw, backend: Backend) -> SaveLoadCase:
    """Flat same-layout cases of 1 or 2 tensors of 2 elements or more (something to corrupt:
    a chunk's bytes long enough to find, a layout with numbers in it), objects included."""
    world = draw(st.sampled_from([1, 2]), label="world")
    count = draw(st.integers(1, 2))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(no_prefix_clash)
    )
    specs, lays = [], []
    for i, key in enumerate(keys):
        shape = draw(
            global_shapes(min_dims=1, max_dims=3, max_side=MAX_SIDE, allow_empty=False).filter(
                lambda s: math.prod(s) >= 2
            )
        )
        dtype = draw(st.sampled_from(["float64", "int64", "float32"]))
        specs.append(TensorSpec(key, shape, dtype, salt=i * 1000))
        lays.append(
            draw(
                layouts(
                    world_size=world,
                    shape=shape,
                    kinds=layout_kinds(backend),
                    strided=False,
                )
            )
        )
    objects = ()
    if backend.supports("objects"):
        names = draw(st.lists(st.sampled_from(["step", "tag"]), max_size=2, unique=True))
        objects = tuple((f"obj_{n}", draw(object_values())) for n in names)
    return SaveLoadCase(tuple(specs), tuple(lays), tuple(lays), world, world, objects)


@st.composite
def other_cases(draw, backend: Backend, first: SaveLoadCase) -> SaveLoadCase:
    """Another state: other keys, shapes and world, some keys taken over by new shapes."""
    second = draw(flat_cases(backend), label="second state")
    reuse = draw(
        st.integers(0, min(len(first.tensors), len(second.tensors))),
        label="keys reused",
    )
    tensors = [
        dataclasses.replace(t, key=first.tensors[i].key if i < reuse else t.key, salt=t.salt + 500)
        for i, t in enumerate(second.tensors)
    ]
    keys = [t.key for t in tensors] + [k for k, _ in second.objects]
    if len(set(keys)) != len(keys) or not no_prefix_clash(keys):
        tensors = [dataclasses.replace(t, salt=t.salt + 500) for t in second.tensors]
    return dataclasses.replace(second, tensors=tuple(tensors))


@st.composite
def hand_cases(draw, backend: Backend) -> HandCase:
    """Hand-made plans: each tensor whole on one rank, or cut along one dim into a piece per rank."""
    world = draw(st.sampled_from([1, 2]), label="world")
    count = draw(st.integers(1, 3))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(no_prefix_clash)
    )
    tensors = []
    for i, key in enumerate(keys):
        shape = draw(global_shapes(min_dims=1, max_dims=3, max_side=MAX_SIDE, allow_empty=False))
        dtype = draw(st.sampled_from(["float64", "float32", "int64"]))
        spec = TensorSpec(key, shape, dtype, salt=i * 1000)
        if world == 1 or draw(st.booleans()):
            pieces = (Piece(draw(st.integers(0, world - 1)), (0,) * len(shape), shape),)
        else:
            dim = draw(st.integers(0, len(shape) - 1))
            cuts = sorted(
                draw(
                    st.lists(
                        st.integers(0, shape[dim]),
                        min_size=world - 1,
                        max_size=world - 1,
                    )
                )
            )
            if not backend.supports("uneven_shards"):
                step = -(-shape[dim] // world)
                cuts = [min(shape[dim], step * (r + 1)) for r in range(world - 1)]
            bounds = [0, *cuts, shape[dim]]
            pieces = tuple(
                Piece(
                    r,
                    tuple(bounds[r] if d == dim else 0 for d in range(len(shape))),
                    tuple(
                        bounds[r + 1] - bounds[r] if d == dim else n for d, n in enumerate(shape)
                    ),
                )
                for r in range(world)
                if bounds[r + 1] > bounds[r]
            )
        tensors.append(HandTensor(spec, pieces))
    objects = ()
    if backend.supports("objects"):
        names = draw(st.lists(st.sampled_from(["obj_a", "obj_b"]), max_size=2, unique=True))
        objects = tuple(
            (name, f"{name}:{n}:".encode() * draw(st.integers(1, 9)), n % world)
            for n, name in enumerate(names)
        )
    return HandCase(world, tuple(tensors), objects)
