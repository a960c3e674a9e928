"""Strategies of the plan-validation suite: simulated states and hand-built global save plans.

Public through :mod:`ckptconf.conformance.strategies`, for anyone fuzzing planners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hypothesis import strategies as st

from ...kit.strategies import (
    ALL_DTYPES,
    dtype_names,
    global_shapes,
    meshes,
    object_values,
    placements,
)
from .cases import DEFECTS, PlanCase, PlannedWrite, PlanStateCase, SimLayout, SimTensor

__all__ = [
    "sim_layouts",
    "plan_state_cases",
    "plan_reshard_cases",
    "valid_save_plans",
    "broken_save_plans",
]


def _even_chunks(length: int, parts: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each part when ``torch.chunk`` splits ``length`` into ``parts``;
    empty parts start at ``length``."""
    full = -(-length // parts) if parts else 0
    out = []
    for i in range(parts):
        start = min(full * i, length)
        out.append((start, max(0, min(length, start + full) - start)))
    return out


@st.composite
def _grid(
    draw, *, shape: tuple[int, ...], max_cuts: int = 2, split_dim: int | None = None
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes tiling ``shape``: each dim cut at up to ``max_cuts`` points (at least one on ``split_dim``)."""
    bounds = []
    for d, n in enumerate(shape):
        low = 1 if d == split_dim and n >= 2 else 0
        cuts = draw(
            st.lists(st.integers(1, n - 1), min_size=low, max_size=max_cuts, unique=True)
            if n >= 2
            else st.just([])
        )
        bounds.append([0, *sorted(cuts), n])
    boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())]
    for b in bounds:
        boxes = [
            (o + (lo,), s + (hi - lo,)) for o, s in boxes for lo, hi in zip(b, b[1:]) if hi > lo
        ] or [(o + (b[0],), s + (0,)) for o, s in boxes]
    return boxes


@st.composite
def sim_layouts(
    draw,
    *,
    world: int,
    shape: tuple[int, ...],
    kinds: Sequence[str] = ("plain", "mesh", "chunks"),
    submesh: bool = True,
    strided: bool = False,
) -> SimLayout:
    """How ``world`` simulated ranks hold a tensor of ``shape``: plain copies, a DeviceMesh on all
    ranks or (``submesh``) on a run of them, or ShardedTensor-like chunk lists. ``strided``: mesh
    placements may be ``_StridedShard`` (several pieces per rank)."""
    allowed = [k for k in kinds if not (k == "chunks" and len(shape) == 0)]
    kind = draw(st.sampled_from(allowed), label="layout kind")
    if kind == "plain":
        return SimLayout()
    if kind == "mesh":
        whole = not submesh or world == 1 or draw(st.booleans(), label="mesh on every rank")
        size = world if whole else draw(st.integers(1, world), label="submesh size")
        mesh = draw(meshes(world_size=size))
        first = draw(st.integers(0, world - size))
        return SimLayout(
            "mesh", mesh, draw(placements(mesh=mesh, ndim=len(shape), strided=strided)), first
        )
    if draw(st.booleans(), label="chunk spec"):
        # ChunkShardingSpec: dim split over every rank like torch.chunk, placements rotated
        dim = draw(st.integers(0, len(shape) - 1))
        shift = draw(st.integers(0, world - 1))
        chunks = []
        for i, (start, length) in enumerate(_even_chunks(shape[dim], world)):
            offsets = tuple(start if d == dim else 0 for d in range(len(shape)))
            sizes = tuple(length if d == dim else n for d, n in enumerate(shape))
            chunks.append(((i + shift) % world, offsets, sizes))
        return SimLayout("chunks", chunks=tuple(sorted(chunks)))
    boxes = draw(_grid(shape=shape))
    ranks = draw(st.lists(st.integers(0, world - 1), min_size=len(boxes), max_size=len(boxes)))
    return SimLayout("chunks", chunks=tuple(sorted((r, o, s) for r, (o, s) in zip(ranks, boxes))))


_CONTAINERS = ("model", "layers", "0", "1", "attn", "opt", "state")
_LEAVES = (
    "weight",
    "bias",
    "w",
    "exp_avg",
    "exp_avg_sq",
    "step",
    "scale",
    "ema",
    "norm",
    "emb",
    "lr",
    "tag",
)


@st.composite
def _paths(draw, *, count: int) -> list[tuple[str, ...]]:
    """``count`` nested-dict paths, none a prefix of another (each flattens to its own key):
    unique leaf names that are never container names."""
    leaves = (
        draw(st.lists(st.sampled_from(_LEAVES), min_size=count, max_size=count, unique=True))
        if count <= len(_LEAVES)
        else [f"v{i}" for i in range(count)]
    )
    return [
        tuple(draw(st.lists(st.sampled_from(_CONTAINERS), max_size=2))) + (leaf,) for leaf in leaves
    ]


@st.composite
def plan_state_cases(
    draw,
    *,
    worlds: Sequence[int] = (1, 2, 3, 4),
    kinds: Sequence[str] = ("plain", "mesh", "chunks"),
    dtypes: Sequence[str] = ALL_DTYPES,
    objects: bool = True,
    max_tensors: int = 3,
    max_side: int = 9,
    allow_empty: bool = True,
    min_dims: int = 0,
    max_dims: int = 3,
    submesh: bool = True,
    strided: bool = False,
) -> PlanStateCase:
    """A simulated world's state: tensors under nested paths with layouts, and objects."""
    world = draw(st.sampled_from(list(worlds)), label="world")
    count = draw(st.integers(1, max_tensors))
    extra = draw(st.integers(0, 2)) if objects else 0
    paths = draw(_paths(count=count + extra))
    tensors = []
    for path in paths[:count]:
        shape = draw(
            global_shapes(
                min_dims=min_dims, max_dims=max_dims, max_side=max_side, allow_empty=allow_empty
            )
        )
        tensors.append(
            SimTensor(
                path,
                shape,
                draw(dtype_names(names=dtypes)),
                draw(
                    sim_layouts(
                        world=world, shape=shape, kinds=kinds, submesh=submesh, strided=strided
                    )
                ),
            )
        )
    items = tuple((path, draw(object_values())) for path in paths[count:])
    return PlanStateCase(world, tuple(tensors), items)


@st.composite
def plan_reshard_cases(
    draw,
    *,
    save_worlds: Sequence[int] = (1, 2, 3, 4),
    load_worlds: Sequence[int] = (1, 2, 3, 4),
    kinds: Sequence[str] = ("plain", "mesh", "chunks"),
    dtypes: Sequence[str] = ("float64", "float32", "int64"),
    objects: bool = True,
    max_tensors: int = 2,
    max_side: int = 9,
    allow_empty: bool = True,
    min_dims: int = 0,
    strided: bool = False,
) -> tuple[PlanStateCase, PlanStateCase]:
    """``(saved, destination)``: the same tensors and objects, each tensor under an independent
    layout on ``load_worlds`` ranks in the destination (``strided``: on either side, mesh
    placements may be ``_StridedShard``)."""
    saved = draw(
        plan_state_cases(
            worlds=save_worlds,
            kinds=kinds,
            dtypes=dtypes,
            objects=objects,
            max_tensors=max_tensors,
            max_side=max_side,
            allow_empty=allow_empty,
            min_dims=min_dims,
            strided=strided,
        ),
        label="saved",
    )
    world = draw(st.sampled_from(list(load_worlds)), label="load world")
    tensors = tuple(
        SimTensor(
            t.path,
            t.shape,
            t.dtype,
            draw(
                sim_layouts(world=world, shape=t.shape, kinds=kinds, strided=strided),
                label=f"{t.key} loaded as",
            ),
        )
        for t in saved.tensors
    )
    return saved, PlanStateCase(world, tensors, saved.objects)


_PLAN_DTYPES = ("float32", "float64", "int64", "bfloat16")
_PLAN_KEYS = ("a", "b", "w", "bias", "emb.weight", "layers.0.w", "opt.step", "c_1", "k-2", "z")


@st.composite
def _plan_base(
    draw,
    *,
    min_ranks: int,
    max_ranks: int,
    max_tensors: int,
    max_side: int,
    objects: bool,
    dtypes: Sequence[str],
    target: bool,
) -> PlanCase:
    """A valid plan; with ``target`` its first tensor has >= 2 chunks on dim 0, spread over
    two ranks when there are two, so any defect can be injected there."""
    world = draw(st.integers(min_ranks, max_ranks), label="ranks")
    count = draw(st.integers(1, max_tensors))
    pool = _PLAN_KEYS + tuple(f"t{i}" for i in range(max(0, count + 2 - len(_PLAN_KEYS))))
    names = draw(st.permutations(pool))[: count + 2]
    writes: list[PlannedWrite] = []
    for i, key in enumerate(names[:count]):
        if target and i == 0:
            rest = draw(global_shapes(min_dims=0, max_dims=2, max_side=max_side, allow_empty=False))
            shape = (draw(st.integers(2, max_side)),) + rest
        else:
            shape = draw(global_shapes(max_dims=3, max_side=max_side))
        dtype = draw(dtype_names(names=dtypes))
        boxes = draw(_grid(shape=shape, split_dim=0 if target and i == 0 else None))
        ranks = draw(st.lists(st.integers(0, world - 1), min_size=len(boxes), max_size=len(boxes)))
        if target and i == 0 and world > 1 and len(set(ranks)) == 1:
            ranks[-1] = (ranks[-1] + 1) % world
        writes += [PlannedWrite(r, key, o, s, shape, dtype) for r, (o, s) in zip(ranks, boxes)]
    if objects:
        for key in names[count : count + draw(st.integers(0, 2))]:
            writes.append(PlannedWrite(draw(st.integers(0, world - 1)), key))
    return PlanCase(world, tuple(sorted(writes, key=lambda w: w.rank)), key=names[0])


@st.composite
def valid_save_plans(
    draw,
    *,
    min_ranks: int = 1,
    max_ranks: int = 4,
    max_tensors: int = 3,
    max_side: int = 6,
    objects: bool = True,
    dtypes: Sequence[str] = _PLAN_DTYPES,
) -> PlanCase:
    """A global save plan and its metadata with every tensor tiled exactly once and every
    item written by one rank (``PlanCase.save_plans()``, ``PlanCase.metadata()``)."""
    base = draw(
        _plan_base(
            min_ranks=min_ranks,
            max_ranks=max_ranks,
            max_tensors=max_tensors,
            max_side=max_side,
            objects=objects,
            dtypes=dtypes,
            target=False,
        )
    )
    return PlanCase(base.world, base.writes)


def _replace_write(writes: list[PlannedWrite], old: PlannedWrite, new: PlannedWrite) -> None:
    writes[writes.index(old)] = new


def _with(box: tuple[int, ...], dim: int, value: int) -> tuple[int, ...]:
    return box[:dim] + (value,) + box[dim + 1 :]


@st.composite
def broken_save_plans(
    draw,
    *,
    kind: str,
    min_ranks: int = 1,
    max_ranks: int = 4,
    max_tensors: int = 2,
    max_side: int = 6,
    objects: bool = True,
    dtypes: Sequence[str] = _PLAN_DTYPES,
) -> PlanCase:
    """A global save plan with one defect of ``kind`` (one of ``plan_cases.DEFECTS``) injected
    into its first tensor (or, for ``duplicate_write``, any item); ``key`` and ``detail`` say where."""
    if kind not in DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; known: {list(DEFECTS)}")
    base = draw(
        _plan_base(
            min_ranks=min_ranks,
            max_ranks=max_ranks,
            max_tensors=max_tensors,
            max_side=max_side,
            objects=objects,
            dtypes=dtypes,
            target=True,
        )
    )
    key = base.key
    writes = list(base.writes)
    mine = [w for w in writes if w.key == key]
    shape = mine[0].size
    assert shape is not None
    cells = [(w, d) for w in mine for d in range(len(shape))]
    if kind == "overlap":
        inner = [(w, d) for w, d in cells if w.sizes[d] >= 2]
        before_end = [(w, d) for w, d in cells if w.offsets[d] + w.sizes[d] < shape[d]]
        variant = draw(st.sampled_from((["inner"] if inner else []) + ["grow", "shift"]))
        w, d = draw(st.sampled_from(inner if variant == "inner" else before_end))
        if variant == "inner":
            rank = draw(st.integers(0, base.world - 1))
            new = PlannedWrite(
                rank,
                key,
                _with(w.offsets, d, w.offsets[d] + 1),
                _with(w.sizes, d, w.sizes[d] - 1),
                w.size,
                w.dtype,
            )
            writes.append(new)
            detail = f"rank {rank} also writes {new}, inside rank {w.rank}'s chunk"
        elif variant == "grow":
            new = PlannedWrite(
                w.rank, key, w.offsets, _with(w.sizes, d, w.sizes[d] + 1), w.size, w.dtype
            )
            _replace_write(writes, w, new)
            detail = f"rank {w.rank}'s chunk grown into its neighbour on dim {d}: {new}"
        else:
            new = PlannedWrite(
                w.rank, key, _with(w.offsets, d, w.offsets[d] + 1), w.sizes, w.size, w.dtype
            )
            _replace_write(writes, w, new)
            detail = (
                f"rank {w.rank}'s chunk shifted by one on dim {d}: {new} (overlap and gap, "
                "same total volume)"
            )
    elif kind == "gap":
        shrinkable = [(w, d) for w, d in cells if w.sizes[d] >= 2]
        variant = draw(st.sampled_from(["drop"] + (["shrink"] if shrinkable else [])))
        if variant == "drop":
            w = draw(st.sampled_from(mine))
            writes.remove(w)
            detail = f"rank {w.rank}'s chunk {w} dropped"
        else:
            w, d = draw(st.sampled_from(shrinkable))
            new = PlannedWrite(
                w.rank, key, w.offsets, _with(w.sizes, d, w.sizes[d] - 1), w.size, w.dtype
            )
            _replace_write(writes, w, new)
            detail = f"rank {w.rank}'s chunk shrunk on dim {d}: {new}"
    elif kind == "out_of_bounds":
        at_end = [(w, d) for w, d in cells if w.offsets[d] + w.sizes[d] == shape[d]]
        at_start = [(w, d) for w, d in cells if w.offsets[d] == 0]
        variant = draw(st.sampled_from(["past_end", "negative"]))
        w, d = draw(st.sampled_from(at_end if variant == "past_end" else at_start))
        if variant == "past_end":
            grow = draw(st.integers(1, 2))
            new = PlannedWrite(
                w.rank, key, w.offsets, _with(w.sizes, d, w.sizes[d] + grow), w.size, w.dtype
            )
            detail = f"rank {w.rank}'s chunk extends {grow} past the end of dim {d}: {new}"
        else:
            new = PlannedWrite(
                w.rank,
                key,
                _with(w.offsets, d, -1),
                _with(w.sizes, d, w.sizes[d] + 1),
                w.size,
                w.dtype,
            )
            detail = f"rank {w.rank}'s chunk starts at -1 on dim {d}: {new}"
        _replace_write(writes, w, new)
    elif kind in ("size_mismatch", "dtype_mismatch"):
        first = mine[0]
        others = [w for w in mine[1:] if w.rank != first.rank] or mine[1:]
        w = draw(st.sampled_from(others))
        if kind == "size_mismatch":
            d = draw(st.integers(0, len(shape) - 1))
            new = PlannedWrite(
                w.rank,
                key,
                w.offsets,
                w.sizes,
                _with(shape, d, shape[d] + draw(st.integers(1, 3))),
                w.dtype,
            )
            what = f"global size {new.size}"
        else:
            dtype = draw(st.sampled_from([t for t in _PLAN_DTYPES if t != first.dtype]))
            new = PlannedWrite(w.rank, key, w.offsets, w.sizes, w.size, dtype)
            what = f"dtype {dtype}"
        _replace_write(writes, w, new)
        detail = (
            f"rank {w.rank}'s item {new} says {what}; rank {first.rank}'s first item says "
            f"{first.size if kind == 'size_mismatch' else first.dtype}"
        )
    else:
        # what is duplicated: a tensor chunk, a 0-dim tensor or an object (each its own path
        # in planners: DCP's validation, for one, skips 0-dim tensors)
        what = draw(st.sampled_from(["chunk", "scalar"] + (["object"] if objects else [])))
        if what == "scalar":
            writes.append(
                PlannedWrite(
                    draw(st.integers(0, base.world - 1)), "scalar_0d", (), (), (), "float32"
                )
            )
        elif what == "object" and not any(w.is_bytes for w in writes):
            writes.append(PlannedWrite(draw(st.integers(0, base.world - 1)), "object_b"))
        candidates = {
            "chunk": [w for w in writes if w.sizes and math.prod(w.sizes) > 0],
            "scalar": [w for w in writes if w.sizes == ()],
            "object": [w for w in writes if w.is_bytes],
        }[what]
        w = draw(st.sampled_from(candidates))
        rank = draw(st.integers(0, base.world - 1))
        writes.append(PlannedWrite(rank, w.key, w.offsets, w.sizes, w.size, w.dtype))
        key = w.key
        detail = f"{w} written by rank {w.rank} and again by rank {rank}"
    return PlanCase(
        base.world, tuple(sorted(writes, key=lambda x: x.rank)), kind, key, detail, base.writes
    )
