"""Job-shaped cases: state dicts whose keys differ from rank to rank (per_rank, lifecycle).

A :class:`PerRankCase` says, for every tensor and object, which ranks of the saving and
of the loading world hold its key, and how: a tensor as a full copy on each holder
(``plain``) or as a DTensor on a DeviceMesh of some ranks (``dtensor``), where a rank of
the mesh may leave the key out of its state dict (as a sharded optimizer does for a
parameter whose local shard is empty); an object under its own key on its holders. The
families are shaped like real jobs: pipeline stages, expert parallelism, per-rank
loader state, optimizers that omit state; and keys held by some ranks, drawn freely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from ..backend import Backend
from .cases import TensorSpec
from .strategies import dtype_names, global_shapes, object_values

__all__ = [
    "Holding",
    "PerRankCase",
    "PerRankObject",
    "expert_cases",
    "omitted_state_cases",
    "pipeline_cases",
    "some_ranks_cases",
]

MAX_SIDE = 6
DTYPES = ("float32", "float64", "int64")


@dataclass(frozen=True)
class Holding:
    """Which ranks hold one tensor's key, and how.

    ``plain``: each rank of ``ranks`` a full copy. ``dtensor``: a DTensor on a 1-D
    DeviceMesh of ``mesh`` (world ranks, in mesh order) with ``placement`` (``S<d>`` or
    ``R``); only the ranks of ``ranks`` (a subset of ``mesh``) put it in their state dict.
    """

    ranks: tuple[int, ...]
    kind: str = "plain"
    mesh: tuple[int, ...] = ()
    placement: str = "R"

    def __str__(self) -> str:
        who = f"ranks {list(self.ranks)}" if self.ranks else "no rank"
        if self.kind == "plain":
            return f"plain on {who}"
        left_out = sorted(set(self.mesh) - set(self.ranks))
        omitted = f", left out by {left_out}" if left_out else ""
        return f"DTensor(mesh of ranks {list(self.mesh)}, [{self.placement}]) on {who}{omitted}"


@dataclass(frozen=True)
class PerRankObject:
    """A non-tensor value under ``key``, held by ``saved_by`` when saved, ``loaded_by`` on load."""

    key: str
    value: Any
    saved_by: tuple[int, ...]
    loaded_by: tuple[int, ...]


@dataclass(frozen=True)
class PerRankCase:
    """Save ``tensors`` held as ``saved`` on ``save_world`` ranks; load them held as ``loaded``
    on ``load_world`` ranks; ``objects`` likewise. ``family`` names the shape of job."""

    family: str
    tensors: tuple[TensorSpec, ...]
    save_world: int
    load_world: int
    saved: tuple[Holding, ...]
    loaded: tuple[Holding, ...]
    objects: tuple[PerRankObject, ...] = ()

    def describe(self) -> str:
        """One line per value: key, dtype and shape, who holds it when saved and loaded."""
        lines = [
            f"{self.family}: save on {self.save_world} rank(s), load on {self.load_world} rank(s)"
        ]
        for spec, a, b in zip(self.tensors, self.saved, self.loaded):
            lines.append(f"  {spec}: {a} -> {b}")
        for o in self.objects:
            lines.append(
                f"  {o.key!r}: object {o.value!r} on ranks {list(o.saved_by)} -> "
                f"{list(o.loaded_by)}"
            )
        return "\n".join(lines)

    def keys_held(self, rank: int, *, loading: bool) -> list[str]:
        """The keys rank ``rank`` holds when saving (or loading)."""
        holdings = self.loaded if loading else self.saved
        keys = [s.key for s, h in zip(self.tensors, holdings) if rank in h.ranks]
        keys += [o.key for o in self.objects if rank in (o.loaded_by if loading else o.saved_by)]
        return keys

    def meshes(self, *, loading: bool) -> list[tuple[int, ...]]:
        """The DeviceMeshes of the save (or the load), in a fixed order: all ranks make each."""
        out: list[tuple[int, ...]] = []
        for h in self.loaded if loading else self.saved:
            if h.kind == "dtensor" and h.mesh not in out:
                out.append(h.mesh)
        return out


def _split(items: int, parts: int, draw) -> list[list[int]]:
    """``range(items)`` in ``parts`` contiguous runs (some empty when items < parts)."""
    if items >= parts:
        cuts = (
            sorted(
                draw(
                    st.lists(
                        st.integers(1, items - 1),
                        min_size=parts - 1,
                        max_size=parts - 1,
                        unique=True,
                    )
                )
            )
            if parts > 1
            else []
        )
    else:
        cuts = sorted(draw(st.lists(st.integers(0, items), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, items]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def _specs(draw, keys: list[str], *, min_dims: int = 1) -> tuple[TensorSpec, ...]:
    out = []
    for i, key in enumerate(keys):
        shape = draw(
            global_shapes(min_dims=min_dims, max_dims=2, max_side=MAX_SIDE, allow_empty=False)
        )
        out.append(TensorSpec(key, shape, draw(dtype_names(names=DTYPES)), salt=1 + 1000 * i))
    return tuple(out)


def _load_world(draw, backend: Backend, save_world: int) -> tuple[int, str]:
    """The loading world and how it relates to the saving one: same, other, one rank."""
    choices = ["same"]
    if backend.supports("world_size_change"):
        choices += ["other", "one"]
    how = draw(st.sampled_from(choices), label="load on")
    if how == "same":
        return save_world, how
    if how == "one":
        return 1, how
    return draw(
        st.sampled_from([w for w in (1, 2, 3, 4) if w != save_world]), label="load world"
    ), how


def _loader_objects(draw, backend: Backend, save_world: int, load_world: int) -> tuple:
    """``loader.rank{r}`` of every saving rank; on load, rank r's state goes to r % load_world
    (each key held by one destination rank: nothing is dropped)."""
    if not backend.supports("objects"):
        return ()
    return tuple(
        PerRankObject(f"loader.rank{r}", draw(object_values()), (r,), (r % load_world,))
        for r in range(save_world)
    )


@st.composite
def pipeline_cases(draw, backend: Backend) -> PerRankCase:
    """Layers split into contiguous pipeline stages, one per rank; loaded under another split
    (another stage count) or all on one rank; each rank's loader state under its own key."""
    save_world = draw(st.sampled_from([2, 3, 4]), label="stages")
    layers = draw(st.integers(1, 6), label="layers")
    load_world, how = _load_world(draw, backend, save_world)
    specs = _specs(draw, [f"layers.{i}.w" for i in range(layers)])
    saved_split = _split(layers, save_world, draw)
    loaded_split = saved_split if how == "same" else _split(layers, load_world, draw)
    owner = {layer: r for r, run in enumerate(saved_split) for layer in run}
    new_owner = {layer: r for r, run in enumerate(loaded_split) for layer in run}
    return PerRankCase(
        "pipeline stages",
        specs,
        save_world,
        load_world,
        tuple(Holding((owner[i],)) for i in range(layers)),
        tuple(Holding((new_owner[i],)) for i in range(layers)),
        _loader_objects(draw, backend, save_world, load_world),
    )


@st.composite
def expert_cases(draw, backend: Backend) -> PerRankCase:
    """Experts split round-robin over the ranks (expert parallelism), a router every rank
    holds (a replicated or sharded DTensor, or plain copies); loaded with the experts split
    over the loading world."""
    save_world = draw(st.sampled_from([2, 3, 4]), label="ranks")
    experts = draw(st.integers(1, 6), label="experts")
    load_world, _ = _load_world(draw, backend, save_world)
    specs = _specs(draw, ["router.w"] + [f"experts.{e}.w" for e in range(experts)])
    if backend.supports("dtensor"):
        placement = draw(st.sampled_from(["R", "S0"]), label="router placement")
        router_saved = Holding(
            tuple(range(save_world)), "dtensor", tuple(range(save_world)), placement
        )
        router_loaded = Holding(
            tuple(range(load_world)), "dtensor", tuple(range(load_world)), placement
        )
    else:
        router_saved, router_loaded = (
            Holding(tuple(range(save_world))),
            Holding(tuple(range(load_world))),
        )
    return PerRankCase(
        "expert parallel",
        specs,
        save_world,
        load_world,
        (router_saved,) + tuple(Holding((e % save_world,)) for e in range(experts)),
        (router_loaded,) + tuple(Holding((e % load_world,)) for e in range(experts)),
    )


def _has_rows(rows: int, world: int, rank: int) -> bool:
    """Whether ``rank`` holds rows of a dim of ``rows`` split like torch.chunk over ``world``."""
    step = math.ceil(rows / world) if rows else 0
    return step * rank < rows


@st.composite
def omitted_state_cases(draw, backend: Backend) -> PerRankCase:
    """Parameters sharded on dim 0 over every rank (a DTensor ``S0``), and their optimizer
    state, which a rank whose local shard is empty leaves out (as sharded optimizers do):
    the checkpoint must have it, and the same layout must load it back."""
    world = draw(st.sampled_from([2, 3, 4]), label="world")
    count = draw(st.integers(1, 3), label="parameters")
    names = [f"p{i}" for i in range(count)]
    specs, saved = [], []
    for i, name in enumerate(names):
        rows = draw(st.integers(1, world + 2), label=f"rows of {name}")
        rest = draw(global_shapes(min_dims=0, max_dims=1, max_side=MAX_SIDE, allow_empty=False))
        dtype = draw(dtype_names(names=("float32", "float64")))
        mesh = tuple(range(world))
        holders = tuple(r for r in mesh if _has_rows(rows, world, r))
        param = TensorSpec(f"model.{name}", (rows, *rest), dtype, salt=1 + 2000 * i)
        state = replace(param, key=f"optim.state.{name}.exp_avg", salt=param.salt + 1000)
        specs += [param, state]
        saved += [Holding(mesh, "dtensor", mesh, "S0"), Holding(holders, "dtensor", mesh, "S0")]
    return PerRankCase(
        "optimizer omitting empty shards", tuple(specs), world, world, tuple(saved), tuple(saved)
    )


@st.composite
def some_ranks_cases(draw, backend: Backend) -> PerRankCase:
    """Keys held by all ranks, by some, or by one, drawn freely: plain copies on the holders, or
    DTensors on a DeviceMesh of the holders; loaded on the same or another world, each key by
    a drawn set of the loading ranks (at least one)."""
    save_world = draw(st.sampled_from([2, 3, 4]), label="save world")
    load_world, _ = _load_world(draw, backend, save_world)
    count = draw(st.integers(1, 4), label="tensors")
    specs = _specs(draw, [f"t{i}" for i in range(count)])
    kinds = ["plain"] + (["dtensor"] if backend.supports("dtensor") else [])

    def holding(world: int, spec: TensorSpec) -> Holding:
        ranks = tuple(sorted(draw(st.sets(st.integers(0, world - 1), min_size=1))))
        kind = draw(st.sampled_from(kinds))
        if kind == "plain":
            return Holding(ranks)
        placement = draw(st.sampled_from(["R", "S0"]))
        return Holding(ranks, "dtensor", ranks, placement)

    saved = tuple(holding(save_world, s) for s in specs)
    loaded = tuple(holding(load_world, s) for s in specs)
    objects = ()
    if backend.supports("objects"):
        objects = tuple(
            PerRankObject(
                f"extra.o{i}",
                draw(object_values()),
                tuple(sorted(draw(st.sets(st.integers(0, save_world - 1), min_size=1)))),
                tuple(sorted(draw(st.sets(st.integers(0, load_world - 1), min_size=1)))),
            )
            for i in range(draw(st.integers(0, 2)))
        )
    return PerRankCase(
        "keys held by some ranks", specs, save_world, load_world, saved, loaded, objects
    )
