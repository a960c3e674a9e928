"""Layout classes: what kind of layout a drawn case exercises, and pinned examples of each.

A property test draws cases at random; a layout that breaks a backend (an empty trailing
shard, several pieces of one saved chunk on one rank) may be drawn only now and then, and
under the derandomized ``ci`` profile never. So every class of layout a test can draw is
also pinned: :func:`layout_examples` builds one small case per class allowed by a test's
options, run first in every profile (:class:`~.profiles.Pinned`), and
``tests/conformance/test_layout_classes.py`` checks, for every property test, that the
classes its draws reach are all among its pinned examples' classes.

The classes come from each rank's pieces of a tensor (boxes of global indices), computed
here from the layout's parameters: ``torch.chunk`` splitting for ``Shard``, ShardedTensor
and the parts of a ``_StridedShard`` (rank ``c`` of a mesh dim of size ``k`` holds piece
``c`` of each of the ``split_factor`` parts). This is a classification, never an oracle:
expected values come from DTensor itself (:mod:`.values`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ckptconf.reference.compat import uneven_strided_shard

from .cases import Layout, SaveLoadCase, TensorSpec
from .profiles import Pinned
from .strategies import SMALL_CASES, evenly_strided

__all__ = ["case_classes", "layout_examples", "pieces", "small_layout_examples"]

Box = tuple[tuple[int, ...], tuple[int, ...]]
"""A piece of a tensor: global offsets and sizes."""


def _split(lo: int, hi: int, parts: int, index: int) -> tuple[int, int]:
    """Part ``index`` of ``[lo, hi)`` cut into ``parts`` as ``torch.chunk`` does (ceil sizes,
    empty parts at the end)."""
    size = hi - lo
    step = math.ceil(size / parts) if size else 0
    return lo + min(index * step, size), lo + min((index + 1) * step, size)


def pieces(shape: tuple[int, ...], holding: Any, world: int) -> list[list[Box]]:
    """Per rank of ``world``, the pieces of a tensor of ``shape`` it holds as ``holding`` (a
    :class:`~.cases.Layout`, or any object with ``kind``, ``mesh``, ``placements``,
    ``shard_dim``, ``ranks`` and, for ``checkpointable``/``local_shards``, ``slabs``)."""
    full = ((0,) * len(shape), tuple(shape))
    out: list[list[Box]] = [[] for _ in range(world)]
    kind = holding.kind
    ranks = tuple(getattr(holding, "ranks", ()) or ())
    if kind == "plain":
        for rank in ranks or range(world):
            out[rank] = [full]
    elif kind in ("dtensor", "submesh"):
        members = ranks or tuple(range(math.prod(holding.mesh)))
        for position, rank in enumerate(members):
            coordinate = _unravel(position, holding.mesh)
            out[rank] = _dtensor_pieces(shape, holding.mesh, holding.placements, coordinate)
    elif kind == "sharded_tensor":
        holders = ranks or tuple(range(world))
        dim = holding.shard_dim
        for position, rank in enumerate(holders):
            lo, hi = _split(0, shape[dim], len(holders), position)
            out[rank] = [_with(full, dim, lo, hi)]
    elif kind in ("checkpointable", "local_shards"):
        for rank, own in enumerate(holding.slabs):
            out[rank] = [_with(full, 0, start, start + length) for start, length in own]
    else:
        raise ValueError(f"unknown holding kind {kind!r}")
    return out


def _unravel(position: int, mesh: Sequence[int]) -> tuple[int, ...]:
    coordinate = []
    for size in reversed(mesh):
        coordinate.append(position % size)
        position //= size
    return tuple(reversed(coordinate))


def _with(box: Box, dim: int, lo: int, hi: int) -> Box:
    offsets, sizes = list(box[0]), list(box[1])
    offsets[dim], sizes[dim] = lo, hi - lo
    return tuple(offsets), tuple(sizes)


def _dtensor_pieces(shape, mesh, placements, coordinate) -> list[Box]:
    boxes = [((0,) * len(shape), tuple(shape))]
    for size, placement, index in zip(mesh, placements, coordinate):
        if placement == "R":
            continue
        strided = placement.startswith("SS")
        dim = int(placement[2:].split("x")[0] if strided else placement[1:])
        factor = int(placement.split("x")[1]) if strided else 1
        cut = []
        for offsets, sizes in boxes:
            lo, hi = offsets[dim], offsets[dim] + sizes[dim]
            for part in range(factor):
                a, b = _split(lo, hi, factor, part)
                cut.append(_with((offsets, sizes), dim, *_split(a, b, size, index)))
        boxes = cut
    return boxes


def _volume(box: Box) -> int:
    return math.prod(box[1])


def _overlap(a: Box, b: Box) -> bool:
    return (
        all(max(oa, ob) < min(oa + sa, ob + sb) for oa, sa, ob, sb in zip(a[0], a[1], b[0], b[1]))
        and _volume(a) > 0
        and _volume(b) > 0
    )


def _side_classes(spec: TensorSpec, holding: Any, world: int, side: str) -> set[str]:
    """The classes of one tensor held one way: kind, placements, shape, shard sizes."""
    shape = tuple(spec.shape)
    found = set()
    kind = {
        "plain": "plain",
        "dtensor": "DTensor",
        "submesh": "DTensor on a submesh",
        "sharded_tensor": "ShardedTensor",
        "checkpointable": "checkpointable subclass",
        "local_shards": "LocalShardsWrapper",
    }[holding.kind]
    found.add(kind)
    if holding.kind in ("dtensor", "submesh"):
        if len(holding.mesh) == 2:
            found.add("DTensor on a 2-D mesh")
        if "R" in holding.placements:
            found.add("Replicate")
        if any(p.startswith("SS") for p in holding.placements):
            found.add("_StridedShard")
        if getattr(holding, "ranks", ()) and holding.kind == "dtensor":
            found.add("DTensor on a submesh")
    if getattr(holding, "ranks", ()) and holding.kind in ("plain", "sharded_tensor"):
        found.add("key on some ranks only")
    if shape == ():
        found.add("0-dim")
    elif 0 in shape:
        found.add("size-0 dim")
    held = pieces(shape, holding, world)
    holders = [boxes for boxes in held if boxes]
    volume = math.prod(shape)
    if holding.kind == "sharded_tensor" and shape:
        count, rows = len(getattr(holding, "ranks", ()) or range(world)), shape[holding.shard_dim]
        if (count - 1) * math.ceil(rows / count) > rows:
            found.add("ShardedTensor shards placed past the end")
    if volume and holding.kind != "plain":
        sizes = {sum(_volume(b) for b in boxes) for boxes in holders}
        if any(all(_volume(b) == 0 for b in boxes) for boxes in holders):
            found.add("empty shards")
        elif len(sizes) > 1:
            found.add("uneven shards")
        if any(sum(_volume(b) > 0 for b in boxes) > 1 for boxes in holders):
            found.add("several pieces on one rank")
    return {f"{side}: {c}" for c in found}


def _pair_classes(spec: TensorSpec, saved: Any, save_world: int, loaded: Any, load_world: int):
    shape = tuple(spec.shape)
    found = set()
    if saved != loaded or save_world != load_world:
        found.add("resharded")
    if save_world != load_world:
        found.add("world size change")
    saved_chunks = [b for boxes in pieces(shape, saved, save_world) for b in boxes]
    for boxes in pieces(shape, loaded, load_world):
        wanted = [b for b in boxes if _volume(b) > 0]
        if any(sum(_overlap(c, b) for b in wanted) > 1 for c in saved_chunks):
            found.add("several pieces of one saved chunk on one rank")
        if any(len({c for c in saved_chunks if _overlap(c, b)}) > 1 for b in wanted):
            found.add("a loaded piece from several saved chunks")
    return found


def case_classes(value: Any) -> set[str]:
    """The layout classes of a drawn value: a :class:`~.cases.SaveLoadCase`, a case with
    ``steps`` (mesh_change's ``MeshCase``), or a tuple holding such cases (a fault's rank and
    case); anything else has none."""
    if isinstance(value, tuple):
        return set().union(*(case_classes(v) for v in value)) if value else set()
    if isinstance(value, SaveLoadCase):
        steps = [(value.save_world, value.save_layouts), (value.load_world, value.load_layouts)]
        pairs = [(0, 1)]
    elif hasattr(value, "steps") and hasattr(value, "tensors"):
        steps = [(step.world, step.held) for step in value.steps]
        pairs = [(i - 1 if value.chain else 0, i) for i in range(1, len(steps))]
    else:
        return set()
    found = set()
    for i, spec in enumerate(value.tensors):
        for number, (world, held) in enumerate(steps):
            side = "save" if number == 0 or getattr(value, "chain", False) else "load"
            found |= _side_classes(spec, held[i], world, side)
            if number and getattr(value, "chain", False):
                found |= _side_classes(spec, held[i], world, "load")
        for a, b in pairs:
            found |= _pair_classes(spec, steps[a][1][i], steps[a][0], steps[b][1][i], steps[b][0])
    return found


# --- pinned examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Holding:
    """A template: a tensor of ``shape`` held as ``layout`` on ``world`` ranks, and the features
    (that the strategies honour) it needs."""

    name: str
    shape: tuple[int, ...]
    layout: Layout
    world: int
    requires: tuple[str, ...] = ()


def _holdings(w: int) -> list[_Holding]:
    """One holding per side class on ``w`` ranks (on 1 rank, only plain ones)."""
    out = [
        _Holding("plain", (3, 2), Layout(), w),
        _Holding("0-dim plain", (), Layout(), w, ("scalar_tensors",)),
        _Holding("size-0 plain", (0, 3), Layout(), w, ("empty_tensors",)),
    ]
    if w < 2:
        return out
    dt, st_ = ("dtensor",), ("sharded_tensor",)
    s0, sharded = Layout("dtensor", (w,), ("S0",)), Layout("sharded_tensor")
    some = tuple(range(w - 1, 0, -1))  # every rank but 0, in reverse order
    out += [
        _Holding("even Shard(0)", (2 * w, 2), s0, w, dt),
        _Holding("uneven Shard(0)", (w + 1, 2), s0, w, dt),
        _Holding("empty Shard(0) shards", (w - 1, 3), s0, w, dt),
        _Holding("Shard(1)", (2, w + 1), Layout("dtensor", (w,), ("S1",)), w, dt),
        _Holding("Replicate", (3, 2), Layout("dtensor", (w,), ("R",)), w, dt),
        _Holding(
            "0-dim Replicate", (), Layout("dtensor", (w,), ("R",)), w, (*dt, "scalar_tensors")
        ),
        _Holding("size-0 Shard(0)", (0, 3), s0, w, (*dt, "empty_tensors")),
        _Holding(
            "size-0 Replicate", (0, 3), Layout("dtensor", (w,), ("R",)), w, (*dt, "empty_tensors")
        ),
        _Holding(
            "_StridedShard",
            (4 * w, 2),
            Layout("dtensor", (w,), ("SS0x2",)),
            w,
            (*dt, "strided_shard"),
        ),
        _Holding(
            "uneven _StridedShard",
            (2 * w + 1, 2),
            Layout("dtensor", (w,), ("SS0x3",)),
            w,
            (*dt, "strided_shard"),
        ),
        _Holding("even ShardedTensor", (2 * w, 2), sharded, w, st_),
        _Holding("uneven ShardedTensor", (w + 1, 2), sharded, w, st_),
        _Holding(
            "ShardedTensor on dim 1", (2, w + 1), Layout("sharded_tensor", shard_dim=1), w, st_
        ),
        _Holding("size-0 ShardedTensor", (0, 3), sharded, w, (*st_, "empty_tensors")),
        _Holding(
            "empty _StridedShard shards",
            (1, 2),
            Layout("dtensor", (w,), ("SS0x2",)),
            w,
            (*dt, "strided_shard"),
        ),
        _Holding(
            "size-0 _StridedShard",
            (0, 2),
            Layout("dtensor", (w,), ("SS0x2",)),
            w,
            (*dt, "strided_shard", "empty_tensors"),
        ),
        _Holding("plain on some ranks", (3, 2), Layout(ranks=(w - 1,)), w),
        _Holding(
            "DTensor on some ranks", (3, 2), Layout("dtensor", (w - 1,), ("S0",), ranks=some), w, dt
        ),
        _Holding(
            "ShardedTensor on some ranks", (3, 2), Layout("sharded_tensor", ranks=some), w, st_
        ),
    ]
    if w >= 3:  # on 2 ranks the last chunk starts at most at the end
        out.append(_Holding("ShardedTensor shards past the end", (1, 3), sharded, w, st_))
    if w == 4:
        out += [
            _Holding("2-D mesh", (4, 5), Layout("dtensor", (2, 2), ("S0", "S1")), w, dt),
            _Holding(
                "2-D mesh, Replicate and _StridedShard",
                (8, 3),
                Layout("dtensor", (2, 2), ("R", "SS0x2")),
                w,
                (*dt, "strided_shard"),
            ),
        ]
        if not uneven_strided_shard():
            # torch 2.6: no uneven _StridedShard; the uneven and empty shards a strided layout
            # can have there come from a Shard beside it
            beside = Layout("dtensor", (2, 2), ("S1", "SS0x2"))
            out += [
                _Holding(
                    "uneven Shard beside _StridedShard", (8, 3), beside, w, (*dt, "strided_shard")
                ),
                _Holding(
                    "empty Shard beside _StridedShard", (8, 1), beside, w, (*dt, "strided_shard")
                ),
            ]
    return out


def _plain(shape: tuple[int, ...], world: int) -> _Holding:
    return _Holding("plain", shape, Layout(), world)


def layout_examples(
    *,
    save_worlds: Sequence[int] = (1, 2),
    load_worlds: Sequence[int] | None = None,
    same_layout: bool = False,
    world_change: bool | None = False,
    kinds: Sequence[str] = ("plain", "dtensor", "sharded_tensor"),
    strided: bool = False,
    per_rank_keys: bool = False,
    allow_empty: bool = True,
    min_dims: int = 0,
    max_side: int = 9,
    objects: bool = False,
    dtype: str = "float64",
    keep: Callable[[SaveLoadCase], bool] | None = None,
    combined: bool = False,
    max_tensors: int = 3,
    label: str = "case",
    also: dict[str, Callable[[SaveLoadCase], Any]] | None = None,
    wrap: Callable[[SaveLoadCase], Any] | None = None,
    per_parameters: Callable[[SaveLoadCase, dict[str, Any]], SaveLoadCase] | None = None,
) -> list[Pinned]:
    """Pinned examples for a test drawing a case as :func:`~.strategies.save_load_cases` does
    with these options on a backend that supports everything (each example ``requires`` the
    features it uses, and is not run on a backend lacking one).

    Every holding class on the first of ``save_worlds`` that has it: kept (``same_layout``), or
    saved that way and loaded as a plain tensor, and saved plain and loaded that way, on the
    same world (``world_change=False``), another one (``True``) or either (``None``); then the
    resharding pairs: several pieces of one saved chunk on one rank, a loaded piece from several
    saved chunks, a world size change where allowed. ``keep`` filters the cases (as a
    strategy's ``.filter``); ``combined`` puts the cases of each pair of worlds in one case, one
    tensor each, at most ``max_tensors`` a case (for tests whose examples cost seconds). The case is drawn under ``label``
    (``wrap`` turns it into the drawn value), ``also`` gives other labels' values from it, and
    ``per_parameters(case, params)`` adapts it to the test's parameters (a dtype, say).
    """
    allowed = dict(
        kinds=tuple(kinds),
        strided=strided,
        per_rank_keys=per_rank_keys,
        allow_empty=allow_empty,
        min_dims=min_dims,
        max_side=max_side,
    )
    load_worlds = tuple(load_worlds or save_worlds)
    found: list[tuple[str, _Holding, _Holding]] = []
    seen: set[str] = set()
    for world in sorted(set(save_worlds) | set(load_worlds)):
        for holding in _holdings(world):
            if holding.name in seen or not _allowed(holding, allowed):
                continue
            if same_layout:
                if world in save_worlds:
                    found.append((holding.name, holding, holding))
                    seen.add(holding.name)
                continue
            pairs = []
            other = _other_world(world, save_worlds, world_change)
            if world in load_worlds and other is not None:
                pairs.append(
                    (f"plain on {other} -> {holding.name}", _plain(holding.shape, other), holding)
                )
            other = _other_world(world, load_worlds, world_change)
            if world in save_worlds and other is not None:
                pairs.append(
                    (f"{holding.name} -> plain on {other}", holding, _plain(holding.shape, other))
                )
            if pairs:
                found += pairs
                seen.add(holding.name)
    if not same_layout:
        found += _pairs(save_worlds, load_worlds, world_change, allowed)
    cases = []
    for name, saved, loaded in found:
        case = _case((saved,), (loaded,), dtype, objects)
        if keep is None or keep(case):
            needed = _needs(saved, loaded) + (("objects",) if objects else ())
            cases.append((name, case, tuple(sorted(needed))))
    if combined:
        cases = _combine(cases, objects, max_tensors)
    return [
        Pinned(
            name,
            requires=needed,
            adapt=per_parameters,
            **{label: wrap(c) if wrap else c},
            **{other: fn(c) for other, fn in (also or {}).items()},
        )
        for name, c, needed in cases
    ]


def _other_world(world: int, worlds: Sequence[int], change: bool | None) -> int | None:
    """The world of the plain side: ``world`` itself, another one, or either (first choice:
    the same)."""
    if change is not True and world in worlds:
        return world
    others = [w for w in sorted(worlds) if w != world]
    return others[0] if others and change is not False else None


def _allowed(holding: _Holding, allowed: dict[str, Any]) -> bool:
    layout = holding.layout
    if layout.kind not in allowed["kinds"]:
        return False
    if any(p.startswith("SS") for p in layout.placements) and (
        not allowed["strided"]
        or evenly_strided(holding.shape, layout.mesh, layout.placements) != layout.placements
    ):  # torch 2.6's DTensor has no uneven _StridedShard
        return False
    if layout.ranks and not allowed["per_rank_keys"]:
        return False
    shape = holding.shape
    if len(shape) < allowed["min_dims"] or (0 in shape and not allowed["allow_empty"]):
        return False
    return max(shape, default=0) <= allowed["max_side"]


def _pairs(save_worlds, load_worlds, change, allowed) -> list[tuple[str, _Holding, _Holding]]:
    """Resharding pairs: Shard(0) -> Shard(1) (a piece from several saved chunks), plain ->
    _StridedShard (several pieces of one saved chunk on one rank), and a world size change."""
    out = []
    if "dtensor" not in allowed["kinds"]:
        return out
    for w in sorted(set(save_worlds) & set(load_worlds)):
        if w < 2 or change is True:
            continue
        rows = _Holding("Shard(0)", (2 * w, 2), Layout("dtensor", (w,), ("S0",)), w, ("dtensor",))
        cols = _Holding("Shard(1)", (2 * w, 2), Layout("dtensor", (w,), ("S1",)), w, ("dtensor",))
        out.append(("Shard(0) -> Shard(1)", rows, cols))
        if allowed["strided"]:
            strided = _Holding(
                "_StridedShard",
                (4 * w, 2),
                Layout("dtensor", (w,), ("SS0x2",)),
                w,
                ("dtensor", "strided_shard"),
            )
            out.append(("plain -> _StridedShard", _plain((4 * w, 2), w), strided))
        break
    if change is False:
        return out
    for a in sorted(save_worlds):
        for b in sorted(load_worlds):
            if a != b and a > 1 and b > 1:
                shape = (2 * a * b, 2)
                saved = _Holding("", shape, Layout("dtensor", (a,), ("S0",)), a, ("dtensor",))
                loaded = _Holding("", shape, Layout("dtensor", (b,), ("S0",)), b, ("dtensor",))
                out.append((f"Shard(0) on {a} -> Shard(0) on {b}", saved, loaded))
                if allowed["strided"]:
                    strided = _Holding(
                        "",
                        shape,
                        Layout("dtensor", (b,), ("SS0x2",)),
                        b,
                        ("dtensor", "strided_shard"),
                    )
                    out.append((f"Shard(0) on {a} -> _StridedShard on {b}", saved, strided))
                return out
    return out


def _needs(saved: _Holding, loaded: _Holding) -> tuple[str, ...]:
    needed = set(saved.requires) | set(loaded.requires)
    if saved.world != loaded.world:
        needed.add("world_size_change")
    return tuple(sorted(needed))


def _case(saved, loaded, dtype: str, objects: bool) -> SaveLoadCase:
    specs = tuple(
        TensorSpec(f"pinned.w{i}", h.shape, dtype, salt=1000 * i) for i, h in enumerate(saved)
    )
    return SaveLoadCase(
        specs,
        tuple(h.layout for h in saved),
        tuple(h.layout for h in loaded),
        saved[0].world,
        loaded[0].world,
        (("obj_step", 7),) if objects else (),
    )


def _combine(cases, objects: bool, most: int):
    """The cases of each pair of worlds (and features needed) put together, ``most`` tensors a
    case, as the strategy draws at most ``max_tensors``."""
    groups: dict[tuple, list] = {}
    for name, case, needed in cases:
        groups.setdefault((case.save_world, case.load_world, needed), []).append((name, case))
    out = []
    for (save, load, needed), group in groups.items():
        for start in range(0, len(group), most):
            part = group[start : start + most]
            case = SaveLoadCase(
                tuple(
                    replace(c.tensors[0], key=f"pinned.w{i}", salt=1000 * i)
                    for i, (_, c) in enumerate(part)
                ),
                tuple(c.save_layouts[0] for _, c in part),
                tuple(c.load_layouts[0] for _, c in part),
                save,
                load,
                (("obj_step", 7),) if objects else (),
            )
            names = " + ".join(name for name, _ in part)
            out.append((f"{names} ({save} -> {load} rank(s))", case, needed))
    return out


def small_layout_examples(
    save_worlds: Sequence[int], *, label: str, wrap: Callable[[SaveLoadCase], Any]
) -> list[Pinned]:
    """:func:`layout_examples` for a test drawing :func:`~.strategies.small_cases`: each
    world's holding classes combined in one case (with objects), ``wrap`` making the drawn
    value of ``label`` from it."""
    return layout_examples(
        save_worlds=save_worlds,
        same_layout=True,
        kinds=("plain", "dtensor"),
        objects=True,
        combined=True,
        label=label,
        wrap=wrap,
        **SMALL_CASES,
    )
