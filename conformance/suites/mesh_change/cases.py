"""Cases of the mesh_change suite and their strategies.

A :class:`MeshCase` is a save followed by loads. Step 0 saves the tensors, held as its
:class:`Held` layouts, on its world; every later step loads them into its own layouts on
its own world and compares every element of every local piece. In a chain each load
step saves what it loaded for the next step; otherwise every step loads step 0's
checkpoint. Beyond the kit's :class:`~ckptconf.conformance.kit.cases.Layout` (plain,
DTensor on every rank, ShardedTensor), a tensor may be a DTensor on a DeviceMesh of some
ranks in any order (``submesh``), a tensor subclass that is nothing but DCP's
checkpointable protocol (``checkpointable``), or a DTensor over a ``LocalShardsWrapper``
(``local_shards``). A :class:`SimulatedCase` is a save on N and a load on M simulated ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import Layout, SaveLoadCase, TensorSpec
from ...kit.strategies import (
    dtype_names,
    global_shapes,
    layout_kinds,
    mesh_changes_of,
    meshes,
    no_prefix_clash,
    object_values,
    placements,
    tensor_keys,
    world_sizes,
)

__all__ = [
    "DTYPES",
    "HELD_KINDS",
    "MAX_SIDE",
    "MESH_CHANGES",
    "Held",
    "MeshCase",
    "SimulatedCase",
    "Slabs",
    "Step",
    "chain_cases",
    "chain_kinds",
    "mesh_change_cases",
    "simulated_cases",
    "submesh_cases",
    "with_kind_cases",
]

MAX_SIDE = 8
DTYPES = ("float64", "int64", "float32")

HELD_KINDS = ("plain", "dtensor", "sharded_tensor", "submesh", "checkpointable", "local_shards")
"""How a tensor can be held in a :class:`MeshCase`."""

Slabs = tuple[tuple[tuple[int, int], ...], ...]
"""Per rank, the ``(start, length)`` row ranges (dim 0) it holds."""


@dataclass(frozen=True)
class Held:
    """How one tensor is held on a world.

    ``plain``, ``dtensor`` (a mesh of every rank, row-major) and ``sharded_tensor`` are
    :class:`~.cases.Layout` kinds. ``submesh``: a DTensor on a DeviceMesh of the world
    ranks ``ranks`` (in mesh order) shaped ``mesh``. ``checkpointable``: a
    :class:`CheckpointableShards` of which rank r holds the rows ``slabs[r]``.
    ``local_shards``: a DTensor (1-D mesh of every rank, ``Shard(0)``) over a
    ``LocalShardsWrapper`` of rank r's one row range ``slabs[r][0]``.
    """

    kind: str = "plain"
    mesh: tuple[int, ...] = ()
    placements: tuple[str, ...] = ()
    ranks: tuple[int, ...] = ()
    shard_dim: int = 0
    slabs: Slabs = ()

    def __str__(self) -> str:
        if self.kind in ("plain", "dtensor", "sharded_tensor"):
            return str(self.layout())
        if self.kind == "submesh":
            return (
                f"DTensor(mesh={self.mesh} of ranks {list(self.ranks)}, "
                f"[{', '.join(self.placements)}])"
            )
        name = "checkpointable" if self.kind == "checkpointable" else "LocalShardsWrapper DTensor"
        held = "; ".join(
            f"rank {r} rows " + (", ".join(f"{s}:{s + n}" for s, n in own) or "none")
            for r, own in enumerate(self.slabs)
        )
        return f"{name}({held})"

    def layout(self) -> Layout:
        """The :class:`~.cases.Layout` of a plain, dtensor or sharded_tensor holding."""
        return Layout(self.kind, self.mesh, self.placements, self.shard_dim)


@dataclass(frozen=True)
class Step:
    """``world`` ranks holding the case's tensors as ``held`` (one per tensor)."""

    world: int
    held: tuple[Held, ...]


@dataclass(frozen=True)
class MeshCase:
    """Save ``tensors`` as ``steps[0]`` holds them, then load them as each later step holds them."""

    tensors: tuple[TensorSpec, ...]
    steps: tuple[Step, ...]
    chain: bool = False
    objects: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """One line per step and tensor: what is saved or loaded, on how many ranks, held how."""
        lines = []
        last = len(self.steps) - 1
        for i, step in enumerate(self.steps):
            if i == 0:
                what = "save"
            else:
                source = f"step {i - 1}" if self.chain else "step 0"
                what = f"load {source}'s checkpoint" + (
                    " and save it again" if self.chain and i < last else ""
                )
            lines.append(f"step {i}: {what} on {step.world} rank(s)")
            lines += [f"  {spec}: {held}" for spec, held in zip(self.tensors, step.held)]
        if self.objects:
            lines.append(f"  objects: {dict(self.objects)!r}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SimulatedCase:
    """Save on ``save_mesh`` (simulated ranks, row-major), load on ``load_mesh``; each tensor
    is held as a DTensor with its placements would be, as :class:`CheckpointableShards`."""

    tensors: tuple[TensorSpec, ...]
    save_mesh: tuple[int, ...]
    save_placements: tuple[tuple[str, ...], ...]
    load_mesh: tuple[int, ...]
    load_placements: tuple[tuple[str, ...], ...]

    def describe(self) -> str:
        """One line per tensor: saved layout -> loaded layout."""
        lines = [
            f"save on {math.prod(self.save_mesh)} simulated rank(s), "
            f"load on {math.prod(self.load_mesh)} simulated rank(s)"
        ]
        for spec, a, b in zip(self.tensors, self.save_placements, self.load_placements):
            lines.append(
                f"  {spec}: mesh {self.save_mesh} [{', '.join(a)}] -> mesh {self.load_mesh} [{', '.join(b)}]"
            )
        return "\n".join(lines)


MESH_CHANGES = (
    ((4,), (2, 2)),
    ((2, 2), (4,)),
    ((2,), (2, 2)),
    ((2, 2), (2,)),
    ((3,), (2, 2)),
    ((2, 2), (3,)),
    ((1,), (2, 2)),
    ((2, 2), (1,)),
    ((2,), (1, 2)),
    ((2, 1), (2,)),
)
"""``(save mesh, load mesh)`` pairs: 1-D to 2-D and back, on the same or another world."""


# --- strategies, drawn in the controller -------------------------------------------------------


def _world_change_ok(backend: Backend, a: int, b: int) -> bool:
    return a == b or backend.supports("world_size_change")


@st.composite
def _specs(
    draw, backend: Backend, *, max_tensors: int = 2, min_dims: int = 0, rows: bool = False
) -> tuple[TensorSpec, ...]:
    """1 to ``max_tensors`` tensors; ``rows``: at least one row (dim 0 of size >= 1)."""
    count = draw(st.integers(1, max_tensors))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(no_prefix_clash)
    )
    low_dims = max(min_dims, 0 if backend.supports("scalar_tensors") else 1)
    specs = []
    for i, key in enumerate(keys):
        shape = draw(
            global_shapes(
                min_dims=low_dims,
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
            )
        )
        if rows and shape[0] == 0:
            shape = (draw(st.integers(1, MAX_SIDE)),) + shape[1:]
        # salt >= 1: no element encodes 0, which is what a blank destination holds
        specs.append(TensorSpec(key, shape, draw(dtype_names(names=DTYPES)), salt=1 + 1000 * i))
    return tuple(specs)


@st.composite
def _slabs(draw, world: int, rows: int, *, one_each: bool) -> Slabs:
    """Row ranges per rank: ``one_each``, contiguous in rank order, some maybe empty; else a
    partition of the rows into non-empty ranges, each held by one or two ranks (or by none
    of some ranks)."""
    if one_each:
        cuts = sorted(draw(st.lists(st.integers(0, rows), min_size=world - 1, max_size=world - 1)))
        bounds = [0, *cuts, rows]
        return tuple(((bounds[r], bounds[r + 1] - bounds[r]),) for r in range(world))
    count = draw(st.integers(1, min(rows, 2 * world)))
    cuts = (
        sorted(draw(st.sets(st.integers(1, rows - 1), min_size=count - 1, max_size=count - 1)))
        if count > 1
        else []
    )
    bounds = [0, *cuts, rows]
    owned: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    for start, end in zip(bounds, bounds[1:]):
        for rank in sorted(draw(st.sets(st.integers(0, world - 1), min_size=1, max_size=2))):
            owned[rank].append((start, end - start))
    return tuple(tuple(own) for own in owned)


@st.composite
def _submesh(draw, world: int, ndim: int) -> Held:
    """A DTensor on a DeviceMesh of some ranks of the world, in any order (all of them on a
    permuted 2-D mesh, sometimes, on 4 ranks)."""
    order = draw(st.permutations(range(world)))
    if world == 4 and draw(st.booleans()):
        ranks, mesh = tuple(order), (2, 2)
    else:
        size = draw(st.integers(1, max(1, world - 1)))
        ranks, mesh = tuple(order[:size]), (size,)
    return Held("submesh", mesh, draw(placements(mesh=mesh, ndim=ndim, strided=False)), ranks=ranks)


@st.composite
def _held(draw, kind: str, world: int, shape: tuple[int, ...]) -> Held:
    """A holding of ``kind`` for a tensor of ``shape`` on ``world`` ranks."""
    if kind == "plain":
        return Held()
    if kind == "dtensor":
        mesh = draw(meshes(world_size=world))
        return Held("dtensor", mesh, draw(placements(mesh=mesh, ndim=len(shape), strided=False)))
    if kind == "sharded_tensor":
        return Held("sharded_tensor", shard_dim=draw(st.integers(0, len(shape) - 1)))
    if kind == "submesh":
        return draw(_submesh(world, len(shape)))
    if kind in ("checkpointable", "local_shards"):
        slabs = draw(_slabs(world, shape[0], one_each=kind == "local_shards"))
        return Held(kind, slabs=slabs)
    raise ValueError(f"unknown holding kind {kind!r}")


def _step(draw, kind: str, world: int, specs: Sequence[TensorSpec]) -> Step:
    return Step(world, tuple(draw(_held(kind, world, s.shape)) for s in specs))


def _objects(draw, backend: Backend) -> tuple:
    if not backend.supports("objects"):
        return ()
    names = draw(
        st.lists(st.sampled_from(["step", "config", "extra_state"]), max_size=2, unique=True)
    )
    return tuple((f"obj_{n}", draw(object_values())) for n in names)


@st.composite
def mesh_change_cases(draw, backend: Backend, largest: int | None = None) -> SaveLoadCase:
    changes = [*MESH_CHANGES, *mesh_changes_of(max(world_sizes(4, largest=largest)))]
    pairs = [
        p
        for p in dict.fromkeys(changes)
        if _world_change_ok(backend, math.prod(p[0]), math.prod(p[1]))
    ]
    save_mesh, load_mesh = draw(st.sampled_from(pairs), label="meshes")
    specs = draw(_specs(backend, max_tensors=3))
    saves, loads = [], []
    for spec in specs:
        ndim = len(spec.shape)
        saves.append(
            Layout("dtensor", save_mesh, draw(placements(mesh=save_mesh, ndim=ndim, strided=False)))
        )
        loads.append(
            Layout("dtensor", load_mesh, draw(placements(mesh=load_mesh, ndim=ndim, strided=False)))
        )
    return SaveLoadCase(
        specs, tuple(saves), tuple(loads), math.prod(save_mesh), math.prod(load_mesh)
    )


@st.composite
def submesh_cases(draw, backend: Backend) -> MeshCase:
    """Tensor 0 on a submesh, any others on the whole world; loaded as saved, then twice
    into other layouts (whole-world mesh, another submesh, plain, ShardedTensor)."""
    world = draw(st.sampled_from([2, 3, 4]), label="world")
    specs = draw(_specs(backend, min_dims=1))
    others = layout_kinds(backend)
    first = Step(
        world,
        (draw(_submesh(world, len(specs[0].shape))),)
        + tuple(draw(_held(draw(st.sampled_from(others)), world, s.shape)) for s in specs[1:]),
    )
    steps = [first, first]
    targets = ["dtensor", "submesh", "plain"] + (
        ["sharded_tensor"] if backend.supports("sharded_tensor") else []
    )
    for _ in range(2):
        load_world = draw(
            st.sampled_from([w for w in (1, 2, 3, 4) if _world_change_ok(backend, world, w)])
        )
        kind = draw(st.sampled_from(targets if load_world > 1 else ["dtensor", "plain"]))
        held = [draw(_held(kind, load_world, specs[0].shape))]
        held += [draw(_held(draw(st.sampled_from(others)), load_world, s.shape)) for s in specs[1:]]
        steps.append(Step(load_world, tuple(held)))
    return MeshCase(specs, tuple(steps), objects=_objects(draw, backend))


def chain_kinds(backend: Backend) -> list[str]:
    return list(layout_kinds(backend)) + (["submesh"] if backend.supports("dtensor") else [])


@st.composite
def chain_cases(draw, backend: Backend) -> MeshCase:
    """3 or 4 steps, each holding every tensor as a kind other than the step before's."""
    pool = chain_kinds(backend)
    kinds = [draw(st.sampled_from(pool), label="kind 0")]
    for i in range(1, draw(st.integers(3, 4), label="steps")):
        kinds.append(draw(st.sampled_from([k for k in pool if k != kinds[-1]]), label=f"kind {i}"))
    first_world = draw(st.sampled_from([2, 3, 4]))
    specs = draw(_specs(backend, min_dims=1))
    steps = []
    for kind in kinds:
        world = (
            draw(st.sampled_from([2, 3, 4]))
            if backend.supports("world_size_change")
            else first_world
        )
        steps.append(_step(draw, kind, world, specs))
    return MeshCase(specs, tuple(steps), chain=True, objects=_objects(draw, backend))


@st.composite
def with_kind_cases(draw, backend: Backend, kind: str) -> MeshCase:
    """Save under ``kind`` and load under ``kind`` or another, or the reverse, with resharding."""
    others = list(layout_kinds(backend))
    if kind == "local_shards" and backend.supports("checkpointable"):
        others.append("checkpointable")
    pair = draw(
        st.sampled_from(
            [(kind, kind), (kind, kind)] + [(kind, k) for k in others] + [(k, kind) for k in others]
        ),
        label="kinds",
    )
    save_world = draw(st.sampled_from([1, 2, 3, 4]), label="save world")
    load_world = draw(
        st.sampled_from([w for w in (1, 2, 3, 4) if _world_change_ok(backend, save_world, w)]),
        label="load world",
    )
    specs = draw(_specs(backend, min_dims=1, rows=True))
    steps = (_step(draw, pair[0], save_world, specs), _step(draw, pair[1], load_world, specs))
    return MeshCase(specs, steps)


@st.composite
def simulated_cases(draw, save_world: int, load_world: int) -> SimulatedCase:
    save_mesh = draw(meshes(world_size=save_world), label="save mesh")
    load_mesh = draw(meshes(world_size=load_world), label="load mesh")
    count = draw(st.integers(1, 2))
    specs, saves, loads = [], [], []
    for i in range(count):
        shape = draw(
            st.one_of(
                st.tuples(st.integers(1, 600)),
                st.tuples(st.integers(1, 40), st.integers(1, 40)),
            )
        )
        specs.append(TensorSpec(f"t{i}", shape, "float64", salt=1 + 1000 * i))
        saves.append(draw(placements(mesh=save_mesh, ndim=len(shape), strided=False)))
        loads.append(draw(placements(mesh=load_mesh, ndim=len(shape), strided=False)))
    return SimulatedCase(tuple(specs), save_mesh, tuple(saves), load_mesh, tuple(loads))


# --- pinned examples: every layout class each test draws, every run ------------------------------


def _spec(i: int, shape: tuple[int, ...], dtype: str = "float64") -> TensorSpec:
    return TensorSpec(f"pinned.w{i}", shape, dtype, salt=1 + 1000 * i)


def _dt(mesh: tuple[int, ...], *placements: str) -> Layout:
    return Layout("dtensor", mesh, placements)


def _pins(label: str, *examples: tuple[str, Any, tuple[str, ...]], **also: Any) -> list:
    from ...kit.profiles import Pinned

    return [Pinned(name, requires=needs, **{label: case}, **also) for name, case, needs in examples]


_DT = ("dtensor",)

PINNED_MESH_CHANGES = _pins(
    "case",
    (
        "(4,) Shard(0) -> (2, 2) Shard(0), Shard(1), uneven",
        SaveLoadCase((_spec(0, (4, 5)),), (_dt((4,), "S0"),), (_dt((2, 2), "S0", "S1"),), 4, 4),
        _DT,
    ),
    (
        "(2, 2) Replicate, Shard(0) -> (4,) Shard(0), an empty shard",
        SaveLoadCase((_spec(0, (3, 2)),), (_dt((2, 2), "R", "S0"),), (_dt((4,), "S0"),), 4, 4),
        _DT,
    ),
    (
        "(3,) Shard(0), empty shards -> (2, 2) Shard(0), Replicate",
        SaveLoadCase((_spec(0, (1, 3)),), (_dt((3,), "S0"),), (_dt((2, 2), "S0", "R"),), 3, 4),
        (*_DT, "world_size_change"),
    ),
    (
        "0-dim, (4,) Replicate -> (2, 2) Replicate",
        SaveLoadCase((_spec(0, ()),), (_dt((4,), "R"),), (_dt((2, 2), "R", "R"),), 4, 4),
        (*_DT, "scalar_tensors"),
    ),
    (
        "size-0, (2,) Shard(0) -> (2, 2) Shard(0), Shard(0)",
        SaveLoadCase((_spec(0, (0, 3)),), (_dt((2,), "S0"),), (_dt((2, 2), "S0", "S0"),), 2, 4),
        (*_DT, "empty_tensors", "world_size_change"),
    ),
)
"""Pinned examples of :func:`mesh_change_cases`."""


def _at(world: int, *held: Held) -> Step:
    return Step(world, held)


def _sub(ranks: tuple[int, ...], mesh: tuple[int, ...], *placements: str) -> Held:
    return Held("submesh", mesh, placements, ranks=ranks)


def _hold(kind: str, mesh: tuple[int, ...] = (), *placements: str, dim: int = 0) -> Held:
    return Held(kind, mesh, placements, shard_dim=dim)


PINNED_SUBMESHES = _pins(
    "case",
    (
        "a permuted 2-D submesh of 4 ranks; loaded into a whole-world mesh, a ShardedTensor",
        MeshCase(
            (_spec(0, (3, 5)), _spec(1, (3, 2))),
            (
                _at(4, _sub((3, 1, 0, 2), (2, 2), "S0", "S1"), _hold("dtensor", (4,), "S0")),
                _at(4, _sub((3, 1, 0, 2), (2, 2), "S0", "S1"), _hold("dtensor", (4,), "S0")),
                _at(2, _hold("dtensor", (2,), "S1"), _hold("sharded_tensor")),
                _at(1, _hold("plain"), _hold("plain")),
            ),
        ),
        (*_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "a submesh of 2 of 3 ranks, size-0 and Replicate; loaded into another submesh, a 2-D mesh",
        MeshCase(
            (_spec(0, (5, 2)), _spec(1, (0, 2))),
            (
                _at(3, _sub((2, 0), (2,), "S0"), _hold("dtensor", (3,), "R")),
                _at(3, _sub((2, 0), (2,), "S0"), _hold("dtensor", (3,), "R")),
                _at(3, _sub((1,), (1,), "R"), _hold("sharded_tensor")),
                _at(4, _hold("dtensor", (2, 2), "R", "S0"), _hold("plain")),
            ),
        ),
        (*_DT, "sharded_tensor", "empty_tensors", "world_size_change"),
    ),
    (
        "a submesh next to a plain tensor and next to a ShardedTensor",
        MeshCase(
            (_spec(0, (4, 2)), _spec(1, (3, 2))),
            (
                _at(2, _sub((1,), (1,), "S0"), _hold("plain")),
                _at(2, _sub((1,), (1,), "S0"), _hold("plain")),
                _at(2, _hold("plain"), _hold("dtensor", (2,), "S0")),
                _at(3, _sub((2, 1), (2,), "S1"), _hold("sharded_tensor")),
            ),
        ),
        (*_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "a submesh, loaded beside a ShardedTensor whose shards lie past the end",
        MeshCase(
            (_spec(0, (4, 2)), _spec(1, (1, 3))),
            (
                _at(3, _sub((1, 2), (2,), "S0"), _hold("dtensor", (3,), "R")),
                _at(3, _sub((1, 2), (2,), "S0"), _hold("dtensor", (3,), "R")),
                _at(3, _hold("plain"), _hold("sharded_tensor")),
                _at(2, _hold("dtensor", (2,), "S1"), _hold("plain")),
            ),
        ),
        (*_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "a submesh, saved beside a ShardedTensor whose shards lie past the end",
        MeshCase(
            (_spec(0, (4, 2)), _spec(1, (1, 2))),
            (
                _at(4, _sub((3, 1), (2,), "S0"), _hold("sharded_tensor", dim=1)),
                _at(4, _sub((3, 1), (2,), "S0"), _hold("sharded_tensor", dim=1)),
                _at(1, _hold("plain"), _hold("plain")),
                _at(2, _hold("dtensor", (2,), "S1"), _hold("dtensor", (2,), "S1")),
            ),
        ),
        (*_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "a submesh next to a ShardedTensor, loaded as saved",
        MeshCase(
            (_spec(0, (4, 2)), _spec(1, (3, 2))),
            (
                _at(3, _sub((0, 2), (2,), "S0"), _hold("sharded_tensor")),
                _at(3, _sub((0, 2), (2,), "S0"), _hold("sharded_tensor")),
                _at(3, _hold("dtensor", (3,), "S0"), _hold("plain")),
                _at(3, _hold("plain"), _hold("dtensor", (3,), "S1")),
            ),
        ),
        (*_DT, "sharded_tensor"),
    ),
)
"""Pinned examples of :func:`submesh_cases`."""

PINNED_CHAINS = _pins(
    "case",
    (
        "ShardedTensor past the end -> 2-D DTensor -> submesh -> plain",
        MeshCase(
            (_spec(0, (1, 3)), _spec(1, (5, 2))),
            (
                _at(3, _hold("sharded_tensor"), _hold("sharded_tensor", dim=1)),
                _at(4, _hold("dtensor", (2, 2), "S0", "R"), _hold("dtensor", (2, 2), "S1", "S0")),
                _at(2, _sub((1,), (1,), "S0"), _sub((1, 0), (2,), "R")),
                _at(3, _hold("plain"), _hold("plain")),
            ),
            chain=True,
        ),
        (*_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "plain -> DTensor, empty shards -> ShardedTensor past the end, saved again -> plain",
        MeshCase(
            (_spec(0, (2, 3)), _spec(1, (0, 2))),
            (
                _at(2, _hold("plain"), _hold("plain")),
                _at(3, _hold("dtensor", (3,), "S0"), _hold("dtensor", (3,), "S0")),
                _at(4, _hold("sharded_tensor"), _hold("sharded_tensor")),
                _at(3, _hold("plain"), _hold("plain")),
            ),
            chain=True,
        ),
        (*_DT, "sharded_tensor", "empty_tensors", "world_size_change"),
    ),
)
"""Pinned examples of :func:`chain_cases`."""


def _rows(*ranks: tuple[tuple[int, int], ...]) -> Held:
    return Held("checkpointable", slabs=tuple(ranks))


def _wrapper(*ranks: tuple[int, int]) -> Held:
    return Held("local_shards", slabs=tuple((r,) for r in ranks))


_CK = ("checkpointable",)

PINNED_CHECKPOINTABLES = _pins(
    "case",
    (
        "two row ranges per rank -> plain on 1 rank",
        MeshCase(
            (_spec(0, (8, 2)),),
            (_at(2, _rows(((0, 2), (4, 2)), ((2, 2), (6, 2)))), _at(1, _hold("plain"))),
        ),
        (*_CK, "world_size_change"),
    ),
    (
        "plain on 1 rank -> several pieces of one saved chunk on one rank, uneven",
        MeshCase(
            (_spec(0, (5, 2)),),
            (_at(1, _hold("plain")), _at(2, _rows(((0, 1), (3, 2)), ((1, 2),)))),
        ),
        (*_CK, "world_size_change"),
    ),
    (
        "rows held twice, a rank with none -> DTensor Shard(0), empty shards",
        MeshCase(
            (_spec(0, (3, 2)),),
            (_at(3, _rows(((0, 2), (2, 1)), (), ((2, 1),))), _at(4, _hold("dtensor", (4,), "S0"))),
        ),
        (*_CK, *_DT, "world_size_change"),
    ),
    (
        "row ranges -> ShardedTensor shards past the end",
        MeshCase(
            (_spec(0, (5, 2)),),
            (_at(2, _rows(((0, 3),), ((3, 2),))), _at(4, _hold("sharded_tensor"))),
        ),
        (*_CK, "sharded_tensor", "world_size_change"),
    ),
    (
        "ShardedTensor on 4 ranks -> row ranges",
        MeshCase(
            (_spec(0, (5, 3)), _spec(1, (4, 2))),
            (
                _at(4, _hold("sharded_tensor"), _hold("sharded_tensor")),
                _at(2, _rows(((0, 3),), ((3, 2),)), _rows(((0, 1), (2, 2)), ((1, 1),))),
            ),
        ),
        (*_CK, "sharded_tensor", "world_size_change"),
    ),
    (
        "a 2-D mesh, Replicate, size-0 -> row ranges -> a 2-D mesh",
        MeshCase(
            (_spec(0, (4, 0)), _spec(1, (3, 2))),
            (
                _at(4, _hold("dtensor", (2, 2), "S0", "R"), _hold("dtensor", (2, 2), "R", "S0")),
                _at(2, _rows(((0, 2),), ((2, 2),)), _rows(((0, 1), (2, 1)), ((1, 1),))),
            ),
        ),
        (*_CK, *_DT, "empty_tensors", "world_size_change"),
    ),
    (
        "row ranges, size-0 -> a 2-D mesh, Replicate",
        MeshCase(
            (_spec(0, (4, 0)), _spec(1, (3, 2))),
            (
                _at(2, _rows(((0, 2),), ((2, 2),)), _rows(((0, 1), (2, 1)), ((1, 1),))),
                _at(4, _hold("dtensor", (2, 2), "R", "S0"), _hold("dtensor", (2, 2), "S0", "R")),
            ),
        ),
        (*_CK, *_DT, "empty_tensors", "world_size_change"),
    ),
    (
        "row ranges -> ShardedTensor on 4 ranks",
        MeshCase(
            (_spec(0, (3, 2)),),
            (_at(2, _rows(((0, 1), (2, 1)), ((1, 1),))), _at(4, _hold("sharded_tensor"))),
        ),
        (*_CK, "sharded_tensor", "world_size_change"),
    ),
)
"""Pinned examples of :func:`with_kind_cases` for ``checkpointable`` (one kind per step, as
the strategy draws)."""

PINNED_LOCAL_SHARDS = _pins(
    "case",
    (
        "LocalShardsWrapper, uneven, an empty rank -> plain on 1 rank",
        MeshCase(
            (_spec(0, (4, 3)),),
            (_at(3, _wrapper((0, 0), (0, 3), (3, 1))), _at(1, _hold("plain"))),
        ),
        (*_CK, *_DT, "world_size_change"),
    ),
    (
        "plain on 2 ranks -> LocalShardsWrapper",
        MeshCase((_spec(0, (5, 2)),), (_at(2, _hold("plain")), _at(2, _wrapper((0, 2), (2, 3))))),
        (*_CK, *_DT),
    ),
    (
        "a 2-D mesh, Replicate -> LocalShardsWrapper",
        MeshCase(
            (_spec(0, (4, 2)),),
            (_at(4, _hold("dtensor", (2, 2), "R", "S0")), _at(2, _wrapper((0, 1), (1, 3)))),
        ),
        (*_CK, *_DT, "world_size_change"),
    ),
    (
        "ShardedTensor -> LocalShardsWrapper",
        MeshCase(
            (_spec(0, (3, 2)),), (_at(2, _hold("sharded_tensor")), _at(2, _wrapper((0, 3), (3, 0))))
        ),
        (*_CK, *_DT, "sharded_tensor"),
    ),
    (
        "LocalShardsWrapper -> two pieces of one saved chunk on one rank, rows held twice",
        MeshCase(
            (_spec(0, (4, 2)),),
            (_at(2, _wrapper((0, 3), (3, 1))), _at(2, _rows(((0, 1), (2, 1)), ((1, 3),)))),
        ),
        (*_CK, *_DT),
    ),
    (
        "row ranges, two on a rank -> LocalShardsWrapper",
        MeshCase(
            (_spec(0, (6, 2)),),
            (_at(2, _rows(((0, 2), (4, 2)), ((2, 2),))), _at(2, _wrapper((0, 2), (2, 4)))),
        ),
        (*_CK, *_DT),
    ),
    (
        "LocalShardsWrapper, size-0 -> a 2-D mesh, Replicate",
        MeshCase(
            (_spec(0, (6, 0)),),
            (
                _at(4, _wrapper((0, 1), (1, 2), (3, 3), (6, 0))),
                _at(4, _hold("dtensor", (2, 2), "R", "S0")),
            ),
        ),
        (*_CK, *_DT, "empty_tensors"),
    ),
    (
        "ShardedTensor shards past the end -> LocalShardsWrapper",
        MeshCase(
            (_spec(0, (1, 3)),), (_at(3, _hold("sharded_tensor")), _at(2, _wrapper((0, 1), (1, 0))))
        ),
        (*_CK, *_DT, "sharded_tensor", "world_size_change"),
    ),
    (
        "LocalShardsWrapper -> ShardedTensor",
        MeshCase(
            (_spec(0, (5, 2)),), (_at(2, _wrapper((0, 4), (4, 1))), _at(2, _hold("sharded_tensor")))
        ),
        (*_CK, *_DT, "sharded_tensor"),
    ),
)
"""Pinned examples of :func:`with_kind_cases` for ``local_shards`` (one kind per step)."""
