"""Mesh change: save on one mesh or world, load on another, through every way a tensor is held.

- 1-D mesh to 2-D mesh and back, with and without a world-size change;
- a DTensor on a sub-DeviceMesh that only some ranks hold (DCP's ``SUBMESH_TENSOR_SIZE``),
  loaded into the same layout, the whole world, another submesh, a plain tensor;
- chains: save under one kind, load under another, save that, load under a third;
- a tensor subclass implementing DCP's checkpointable protocol, and ``LocalShardsWrapper``;
- the ``Checkpointer`` object's save, async_save and load;
- save on N and load on M simulated ranks (up to 256) through the backend's planners.

Every loaded element of every local piece on every rank is compared with its encoded value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Sequence

import pytest
from ckptconf.harness import WorldError, get_world
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from .. import rank_ops_mesh as ops
from ..backend import Backend, BackendRef
from ..cases import Layout, SaveLoadCase, TensorSpec
from ..rank_ops_mesh import Held, MeshCase, SimulatedCase, Step
from ..runner import _failure, _listing, check_save_then_load
from ..strategies import (
    _no_prefix_clash,
    dtype_names,
    global_shapes,
    meshes,
    object_values,
    placements,
    save_load_cases,
    tensor_keys,
)
from .roundtrip import kinds_for

__all__ = ["MeshChangeTests", "MESH_CHANGES"]

TIMEOUT = 120.0
MAX_SIDE = 8
DTYPES = ("float64", "int64", "float32")
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
"""Phases for tests whose one example costs several world calls: no shrinking."""

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
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
            _no_prefix_clash
        )
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
def _slabs(draw, world: int, rows: int, *, one_each: bool) -> ops.Slabs:
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
def _mesh_change_cases(draw, backend: Backend) -> SaveLoadCase:
    pairs = [p for p in MESH_CHANGES if _world_change_ok(backend, math.prod(p[0]), math.prod(p[1]))]
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
def _submesh_cases(draw, backend: Backend) -> MeshCase:
    """Tensor 0 on a submesh, any others on the whole world; loaded as saved, then twice
    into other layouts (whole-world mesh, another submesh, plain, ShardedTensor)."""
    world = draw(st.sampled_from([2, 3, 4]), label="world")
    specs = draw(_specs(backend, min_dims=1))
    others = kinds_for(backend)
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


def _chain_kinds(backend: Backend) -> list[str]:
    return list(kinds_for(backend)) + (["submesh"] if backend.supports("dtensor") else [])


@st.composite
def _chain_cases(draw, backend: Backend) -> MeshCase:
    """3 or 4 steps, each holding every tensor as a kind other than the step before's."""
    pool = _chain_kinds(backend)
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
def _with_kind_cases(draw, backend: Backend, kind: str) -> MeshCase:
    """Save under ``kind`` and load under ``kind`` or another, or the reverse, with resharding."""
    others = list(kinds_for(backend))
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
def _simulated_cases(draw, save_world: int, load_world: int) -> SimulatedCase:
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


# --- running cases -----------------------------------------------------------------------------


def _run(backend: Backend, world: int, what: str, text: str, repro: str, fn, *args):
    try:
        return get_world(world).run(fn, *args, timeout=TIMEOUT)
    except WorldError as exc:
        raise _failure(backend, f"{what} raised", text, str(exc), repro) from None


def _check_mesh_case(backend: Backend, case: MeshCase, ckpt_path, repro: str) -> None:
    """Run every step of the case; the first step that raises or loads a wrong value fails."""
    ref = BackendRef.of(backend)
    text = case.describe()
    paths = [ckpt_path() for _ in case.steps]
    _run(
        backend,
        case.steps[0].world,
        "step 0 (save)",
        text,
        repro,
        ops.save_step,
        ref,
        case,
        0,
        paths[0],
    )
    last = len(case.steps) - 1
    for i in range(1, len(case.steps)):
        source = paths[i - 1] if case.chain else paths[0]
        resave = paths[i] if case.chain and i < last else None
        results = _run(
            backend,
            case.steps[i].world,
            f"step {i} (load{' and save' if resave else ''})",
            text,
            repro,
            ops.load_step,
            ref,
            case,
            i,
            source,
            resave,
        )
        found = [m for r in results for m in r]
        if found:
            raise _failure(
                backend,
                f"step {i}: {len(found)} loaded value(s) differ from what was saved",
                text,
                _listing(found),
                repro,
            )


def _checkpointable_protocol() -> bool:
    return importlib.util.find_spec("torch.distributed._checkpointable") is not None


def _simulated_planners(backend: Backend):
    """The backend's planner factories (DCP's defaults where it uses DCP's driver)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, DefaultSavePlanner

    save = backend.save_planner or (DefaultSavePlanner if backend.save is None else None)
    load = backend.load_planner or (DefaultLoadPlanner if backend.load is None else None)
    if save is None or load is None:
        pytest.skip(
            "unsupported by backend: its own save/load has no planners to run in a simulated world"
        )
    return save, load


# --- the suite ---------------------------------------------------------------------------------


@pytest.mark.ckpt_suite("mesh_change")
@pytest.mark.ckpt_level("core")
class MeshChangeTests:
    """Loads after a change of mesh, world, submesh or tensor kind give the saved values."""

    @pytest.mark.ckpt_requires("dtensor", "resharding")
    @settings(max_examples=10)
    @given(data=st.data())
    def test_1d_mesh_to_2d_mesh_and_back(self, backend, ckpt_path, ckpt_repro, data):
        """DTensors saved on a 1-D mesh load on a 2-D mesh and the reverse ((4,) <-> (2, 2),
        (2,) -> (2, 2), ...), placements drawn on both sides."""
        case = data.draw(_mesh_change_cases(backend), label="case")
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("dtensor", "resharding")
    @settings(max_examples=6, phases=NO_SHRINK)
    @given(data=st.data())
    def test_submesh_tensor(self, backend, ckpt_path, ckpt_repro, data):
        """A DTensor on a DeviceMesh of some ranks (ranks outside hold an empty local tensor)
        loads back as saved, into the whole world, another submesh, or a plain tensor."""
        case = data.draw(_submesh_cases(backend), label="case")
        _check_mesh_case(backend, case, ckpt_path, ckpt_repro)

    @pytest.mark.ckpt_requires("resharding")
    @settings(max_examples=5, phases=NO_SHRINK)
    @given(data=st.data())
    def test_kind_chain(self, backend, ckpt_path, ckpt_repro, data):
        """Save under one kind (DTensor, submesh, plain, ShardedTensor), load under another,
        save what was loaded, load under a third (and a fourth), on 2 to 4 ranks."""
        if len(_chain_kinds(backend)) < 2:
            pytest.skip("unsupported by backend: a chain needs DTensor or ShardedTensor values")
        case = data.draw(_chain_cases(backend), label="case")
        _check_mesh_case(backend, case, ckpt_path, ckpt_repro)

    @pytest.mark.ckpt_requires("checkpointable", "uneven_shards", "resharding")
    @settings(max_examples=8)
    @given(data=st.data())
    def test_checkpointable_subclass(self, backend, ckpt_path, ckpt_repro, data):
        """A tensor subclass that only implements DCP's checkpointable protocol (uneven row
        ranges, several or none per rank, some held twice) saves and loads with resharding."""
        if not _checkpointable_protocol():
            pytest.skip("this torch defines no checkpointable protocol")
        case = data.draw(_with_kind_cases(backend, "checkpointable"), label="case")
        _check_mesh_case(backend, case, ckpt_path, ckpt_repro)

    @pytest.mark.ckpt_requires("checkpointable", "dtensor", "uneven_shards", "resharding")
    @settings(max_examples=6)
    @given(data=st.data())
    def test_local_shards_wrapper(self, backend, ckpt_path, ckpt_repro, data):
        """A DTensor over torch's LocalShardsWrapper (one uneven row range per rank, as
        TestCheckpointableReshard) saves and loads with resharding."""
        if ops.local_shards_wrapper_type() is None:
            pytest.skip("this torch has no LocalShardsWrapper with the checkpointable protocol")
        case = data.draw(_with_kind_cases(backend, "local_shards"), label="case")
        _check_mesh_case(backend, case, ckpt_path, ckpt_repro)

    def _checkpointer_case(self, backend, data) -> SaveLoadCase:
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds_for(backend),
                dtypes=DTYPES,
                strided=False,
                objects=backend.supports("objects"),
                max_side=6,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        # salt >= 1: a load that fills nothing leaves zeros, which salt 0 encodes at index 0
        tensors = tuple(dataclasses.replace(t, salt=t.salt + 1) for t in case.tensors)
        return dataclasses.replace(case, tensors=tensors)

    def _check_checkpointer(self, backend, ckpt_path, ckpt_repro, data, use_async: bool) -> None:
        """Round-trip a case through one Checkpointer object; fail on any differing value."""
        case = self._checkpointer_case(backend, data)
        text = case.describe()
        how = "async_save" if use_async else "save"
        results = _run(
            backend,
            case.save_world,
            f"Checkpointer {how} or load",
            text,
            ckpt_repro,
            ops.checkpointer_round_trip,
            BackendRef.of(backend),
            case,
            ckpt_path(),
            use_async,
        )
        if any(r is None for r in results):
            pytest.skip("unsupported by backend: its checkpointer has no async_save")
        found = [m for r in results for m in r]
        if found:
            raise _failure(
                backend,
                f"{len(found)} value(s) loaded after Checkpointer.{how} differ from what was saved",
                text,
                _listing(found),
                ckpt_repro,
            )

    @pytest.mark.ckpt_requires("checkpointer")
    @settings(max_examples=5)
    @given(data=st.data())
    def test_checkpointer_save_and_load(self, backend, ckpt_path, ckpt_repro, data):
        """``checkpointer(path).save(state)`` then ``.load(blank)`` on the same object."""
        self._check_checkpointer(backend, ckpt_path, ckpt_repro, data, use_async=False)

    @pytest.mark.ckpt_requires("checkpointer", "async_save")
    @settings(max_examples=5)
    @given(data=st.data())
    def test_checkpointer_async_save_and_load(self, backend, ckpt_path, ckpt_repro, data):
        """``checkpointer(path).async_save(state)``, wait, then ``.load(blank)``."""
        self._check_checkpointer(backend, ckpt_path, ckpt_repro, data, use_async=True)

    @pytest.mark.ckpt_requires("checkpointable", "resharding", "world_size_change")
    @pytest.mark.parametrize(
        "worlds", [(256, 16), (6, 256), (64, 96), (1, 128)], ids=lambda w: f"{w[0]}to{w[1]}"
    )
    @settings(max_examples=4)
    @given(data=st.data())
    def test_simulated_world_change(self, backend, ckpt_repro, worlds, data):
        """Save on N and load on M simulated ranks (1-D and 2-D meshes, up to 256 ranks)
        through the backend's planners and in-memory storage; each rank's value is a
        checkpointable subclass holding what a DTensor would."""
        if not _checkpointable_protocol():
            pytest.skip("this torch defines no checkpointable protocol")
        save_planner, load_planner = _simulated_planners(backend)
        case = data.draw(_simulated_cases(*worlds), label="case")
        try:
            found = ops.simulate_mesh_change(case, save_planner, load_planner)
        except Exception as exc:  # noqa: BLE001 - any error of the backend's planners fails the test
            raise _failure(
                backend,
                "simulated save or load raised",
                case.describe(),
                f"{type(exc).__name__}: {exc}",
                ckpt_repro,
            ) from exc
        if found:
            raise _failure(
                backend,
                f"{len(found)} value(s) loaded on simulated ranks differ from what was saved",
                case.describe(),
                _listing(found),
                ckpt_repro,
            )
