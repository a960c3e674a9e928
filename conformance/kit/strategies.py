"""The strategies the suites share: dtypes, meshes, placements, shapes, layouts, objects, cases.

Every strategy draws plain data (tuples, strings, :mod:`.cases` dataclasses) that pickles
to ranks; nothing here touches torch.distributed or has import-time side effects.
Public through :mod:`ckptconf.conformance.strategies`, with the plan strategies.

- :func:`meshes`: DeviceMesh shapes, 1-D and 2-D, sizes 1-8 (or exactly a world size)
- :func:`placements`: placement names for a mesh and tensor rank (``S<d>``, ``R``, ``SS<d>x<f>``)
- :func:`global_shapes`: shapes including 0-dim, size-0 dims and dims smaller than a mesh
- :func:`dtype_names`: every dtype the suite covers that this torch has
- :func:`layouts`: plain, DTensor or ShardedTensor layouts for a world size
- :func:`save_load_cases`: whole cases, same layout or resharded, with objects
- :func:`object_values`: non-tensor values (bytes, numbers, strings, containers)
- :func:`tensor_keys`: state-dict keys, dotted and unusual
- :func:`supported_options`: the options of :func:`save_load_cases` a backend supports
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

from .cases import Layout, SaveLoadCase, TensorSpec

__all__ = [
    "mesh_changes_of",
    "world_sizes",
    "ALL_DTYPES",
    "BASIC_DTYPES",
    "available_dtypes",
    "dtype_names",
    "global_shapes",
    "layout_kinds",
    "layouts",
    "meshes",
    "no_prefix_clash",
    "object_values",
    "placements",
    "save_load_cases",
    "SMALL_CASES",
    "small_cases",
    "supported_dtypes",
    "mostly_basic_dtypes",
    "supported_options",
    "tensor_keys",
    "distinct_tensor_keys",
]

F = TypeVar("F", bound=Callable[..., Any])

_REUSED_LIMIT = 4096
"""Strategies one factory keeps built (:func:`_reused`); past that it starts afresh."""


def _value_key(value: Any) -> Any:
    """``value`` as a cache key that tells ``1``, ``1.0`` and ``True`` apart; ``TypeError`` for a
    value that could change after the strategy is built (a list, a dict)."""
    if isinstance(value, (tuple, frozenset)):
        return (type(value), tuple(_value_key(v) for v in value))
    if value is None or isinstance(value, (str, bytes, int, float)):
        return (type(value), value)
    raise TypeError(f"not a cache key: {type(value).__name__}")


def _reused(factory: F) -> F:
    """``factory`` returning one strategy object per distinct arguments.

    A strategy is immutable and draws by its arguments alone, so the one built before draws
    exactly what a new one would; hypothesis validates a strategy object once, and building
    and validating a fresh one at every draw (a filtered regex, a recursive strategy) was most
    of the controller's drawing time. Arguments that are not plain immutable values (a list,
    say) build a new strategy each call, as before.
    """
    built: dict[Any, Any] = {}

    @functools.wraps(factory)
    def reused(*args: Any, **kwargs: Any) -> Any:
        try:
            key = (
                tuple(_value_key(a) for a in args),
                tuple(sorted((k, _value_key(v)) for k, v in kwargs.items())),
            )
        except TypeError:
            return factory(*args, **kwargs)
        strategy = built.get(key)
        if strategy is None:
            if len(built) >= _REUSED_LIMIT:
                built.clear()
            strategy = built[key] = factory(*args, **kwargs)
        return strategy

    return reused  # type: ignore[return-value]


ALL_DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "int32",
    "int64",
    "uint8",
    "bool",
    "complex64",
    "float8_e4m3fn",
    "float8_e5m2",
)
"""Dtype names the suite covers; :func:`dtype_names` keeps those this torch has."""

BASIC_DTYPES = ("float32", "float64", "int64")
"""The dtypes every backend must handle; the others need the ``dtypes`` feature."""


def available_dtypes(names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are dtypes of this torch."""
    import torch

    return [n for n in names if isinstance(getattr(torch, n, None), torch.dtype)]


@_reused
def dtype_names(*, names: Sequence[str] = ALL_DTYPES) -> st.SearchStrategy[str]:
    """A dtype name from ``names`` that this torch defines."""
    return st.sampled_from(available_dtypes(names))


def world_sizes(*defaults: int, largest: int | None = None) -> tuple[int, ...]:
    """``defaults``, and ``largest`` when it is larger: the session's largest world
    (``ckpt.session.largest_world``: ``--ckpt-world-size``, else under a launcher the launched
    world's size). So under torchrun with 8 ranks the suites that draw world sizes also draw
    cases on all 8 (1-D and 2-D meshes of them), and a pool run with ``--ckpt-world-size 8``
    draws the same cases."""
    if largest is not None and largest > max(defaults):
        return (*defaults, largest)
    return tuple(defaults)


def mesh_changes_of(size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(save mesh, load mesh)`` pairs on ``size`` ranks: its 1-D mesh to each 2-D one and back."""
    pairs = []
    for shape in _factorizations(size, 2)[1:]:
        pairs += [((size,), shape), (shape, (size,))]
    return pairs


def _factorizations(n: int, max_dims: int) -> list[tuple[int, ...]]:
    out = [(n,)]
    if max_dims >= 2:
        out += [(a, n // a) for a in range(2, n) if n % a == 0]
    return out


@_reused
@st.composite
def meshes(
    draw, *, world_size: int | None = None, max_dims: int = 2, max_size: int = 8
) -> tuple[int, ...]:
    """A mesh shape; exactly ``world_size`` ranks if given, else 1 to ``max_size``."""
    size = world_size if world_size is not None else draw(st.integers(1, max_size))
    return draw(st.sampled_from(_factorizations(size, max_dims)))


@_reused
@st.composite
def placements(
    draw, *, mesh: tuple[int, ...], ndim: int, strided: bool = True, replicate: bool = True
) -> tuple[str, ...]:
    """One placement name per mesh dim for a tensor of ``ndim`` dims."""
    out = []
    for _ in mesh:
        kinds = (["R"] if replicate or ndim == 0 else []) + (["S", "SS"] if strided else ["S"]) * (
            ndim > 0
        )
        kind = draw(st.sampled_from(kinds or ["R"]))
        if kind == "R":
            out.append("R")
        elif kind == "S":
            out.append(f"S{draw(st.integers(0, ndim - 1))}")
        else:
            out.append(f"SS{draw(st.integers(0, ndim - 1))}x{draw(st.integers(2, 3))}")
    return tuple(out)


@_reused
@st.composite
def global_shapes(
    draw, *, min_dims: int = 0, max_dims: int = 3, max_side: int = 9, allow_empty: bool = True
) -> tuple[int, ...]:
    """A global shape; sides from 0 (if ``allow_empty``) or 1 up to ``max_side``, half of them
    drawn from 4 or less: sides smaller than a mesh dim (uneven and empty shards, DCP's chunks
    past the end) are where layouts break.

    The number of dims is drawn uniformly first (not ``hypothesis.extra.numpy.array_shapes``,
    whose list lengths favour short lists).
    """
    ndim = draw(st.integers(min_dims, max_dims))
    low = 0 if allow_empty else 1
    side = st.one_of(st.integers(low, max(low, min(4, max_side))), st.integers(low, max_side))
    return tuple(draw(st.lists(side, min_size=ndim, max_size=ndim)))


@_reused
@st.composite
def layouts(
    draw,
    *,
    world_size: int,
    shape: tuple[int, ...],
    kinds: Sequence[str] = ("plain", "dtensor", "sharded_tensor"),
    strided: bool = True,
    some_ranks: bool = False,
) -> Layout:
    """A layout of a tensor of ``shape`` over ``world_size`` ranks. A ShardedTensor is cut,
    half the time when it can be, on a dim with fewer rows than ranks: empty shards.

    ``some_ranks``: on two or more ranks, a quarter of the time the key is held by a drawn
    subset of them only, in a drawn order (:attr:`Layout.ranks`), as pipeline stages and
    experts are (not more often: on 2 ranks such a key is on one rank, not sharded).
    """
    allowed = [k for k in kinds if not (k == "sharded_tensor" and len(shape) == 0)]
    kind = draw(st.sampled_from(allowed))
    holders: tuple[int, ...] = ()
    if some_ranks and world_size > 1 and draw(st.integers(0, 3)) == 3:
        order = draw(st.permutations(range(world_size)))
        holders = tuple(order[: draw(st.integers(1, world_size - 1))])
        if kind == "plain":
            holders = tuple(sorted(holders))  # a set of full copies: the order means nothing
    size = len(holders) or world_size
    if kind == "plain":
        return Layout(ranks=holders)
    if kind == "sharded_tensor":
        short = [d for d, n in enumerate(shape) if n < size]
        dims = short if short and draw(st.booleans()) else list(range(len(shape)))
        return Layout("sharded_tensor", shard_dim=draw(st.sampled_from(dims)), ranks=holders)
    mesh = draw(meshes(world_size=size))
    chosen = draw(placements(mesh=mesh, ndim=len(shape), strided=strided))
    return Layout("dtensor", mesh, evenly_strided(shape, mesh, chosen), ranks=holders)


def _chunk_sizes(size: int, parts: int) -> set[int]:
    """The sizes of ``torch.chunk``'s parts of ``size`` rows in ``parts`` (empty ones too)."""
    step = -(-size // parts) if size else 0
    return {max(0, min(step, size - i * step)) for i in range(parts)}


def evenly_strided(
    shape: tuple[int, ...], mesh: tuple[int, ...], chosen: tuple[str, ...]
) -> tuple[str, ...]:
    """``chosen`` where this torch's ``_StridedShard`` splits unevenly; on one that asserts even
    sharding (torch 2.6, ``reference.compat.uneven_strided_shard``), each ``_StridedShard`` that
    would split unevenly is replaced by one that splits evenly (another factor, then another
    dim), or else by the ``Shard`` of its dim: DTensor there has no such layout to test."""
    if not any(p.startswith("SS") for p in chosen):
        return chosen
    from ckptconf.reference.compat import uneven_strided_shard  # imports torch's placements

    if uneven_strided_shard():
        return chosen
    sizes = [{n} for n in shape]
    out = []
    for parts, placement in zip(mesh, chosen):
        if placement.startswith("SS"):
            dim, factor = (int(x) for x in placement[2:].split("x"))
            options = [(dim, factor)] + [
                (d, f) for d in range(len(shape)) for f in (2, 3) if (d, f) != (dim, factor)
            ]
            even = [(d, f) for d, f in options if all(n % (parts * f) == 0 for n in sizes[d])]
            if even:
                dim, factor = even[0]
                out.append(f"SS{dim}x{factor}")
                sizes[dim] = {n // parts for n in sizes[dim]}
                continue
            placement = f"S{dim}"
        out.append(placement)
        if placement != "R":
            dim = int(placement[1:])
            sizes[dim] = {c for n in sizes[dim] for c in _chunk_sizes(n, parts)}
    return tuple(out)


def real_stack_objects() -> dict[str, Any]:
    """Non-tensor values real training stacks keep in their state dicts, by name, each with
    where it comes from: numpy arrays and scalars and RNG states (Megatron's and torchtitan's
    ``get_rng_state``), ``io.BytesIO`` (TransformerEngine < 2.0 ``_extra_state``, Megatron),
    ``argparse.Namespace`` (Megatron's ``args``), ``SimpleNamespace``, paths, torch dtypes,
    sizes and devices (Megatron's args), Python's ``random`` state, optimizer ``betas``."""
    import argparse
    import io
    import pathlib
    import random
    import types

    import numpy
    import torch

    return {
        "numpy_array": numpy.arange(6.0).reshape(2, 3),
        "numpy_int_array": numpy.arange(4, dtype=numpy.int32),
        "numpy_scalar": numpy.float64(0.25),
        "numpy_rng_state": numpy.random.RandomState(0).get_state(),
        "python_rng_state": random.Random(0).getstate(),
        "bytes_io": io.BytesIO(b"fp8 extra state"),
        "namespace": argparse.Namespace(lr=0.1, num_layers=4, params_dtype=torch.bfloat16),
        "simple_namespace": types.SimpleNamespace(step=3, name="run"),
        "path": pathlib.PurePosixPath("/data/shards/00001"),
        "torch_dtype": torch.float16,
        "torch_size": torch.Size([2, 3]),
        "torch_device": torch.device("cpu"),
        "betas": (0.9, 0.999),
    }


def _real_stack_object(name: str) -> Any:
    """A new instance of the :func:`real_stack_objects` value named ``name``."""
    return real_stack_objects()[name]


@functools.cache
def object_values() -> st.SearchStrategy:
    """Non-tensor values a state dict may hold: bytes, numbers (NaN and complex too), strings,
    None, lists, tuples and sets, and the values of real stacks (:func:`real_stack_objects`).

    No dicts: DCP flattens dicts into keys, so a dict value is a container, not an object.
    """
    leaves = st.one_of(
        st.binary(max_size=8),
        st.integers(-(2**40), 2**40),
        st.floats(width=64),
        st.complex_numbers(max_magnitude=1e6, allow_nan=False),
        st.text(max_size=6),
        st.none(),
        st.booleans(),
        st.frozensets(st.integers(0, 5), max_size=3),
        # by name, each drawn value built anew: the strategy is kept (object_values is cached),
        # and a drawn object must not be one an earlier example held (a BytesIO, an array)
        st.sampled_from(sorted(real_stack_objects())).map(_real_stack_object),
    )
    return st.recursive(
        leaves, lambda c: st.one_of(st.lists(c, max_size=3), st.tuples(c, c)), max_leaves=6
    )


@functools.cache
def tensor_keys() -> st.SearchStrategy[str]:
    """Keys, some with dots, some unusual characters."""
    return st.one_of(
        st.sampled_from(["weight", "bias", "layers.0.weight", "embed.tok", "w-1", "ünï"]),
        st.from_regex(r"[a-z][a-z0-9_.]{0,8}", fullmatch=True).filter(
            lambda k: ".." not in k and not k.endswith(".")
        ),
    )


@functools.cache
def distinct_tensor_keys(count: int) -> st.SearchStrategy[list[str]]:
    """``count`` distinct :func:`tensor_keys`, none a dotted prefix of another."""
    return st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
        no_prefix_clash
    )


@functools.cache
def _object_names() -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(["step", "config", "rng", "tag"]), max_size=2, unique=True)


@_reused
@st.composite
def save_load_cases(
    draw,
    *,
    save_worlds: Sequence[int] = (1, 2),
    load_worlds: Sequence[int] | None = None,
    same_layout: bool = False,
    kinds: Sequence[str] = ("plain", "dtensor", "sharded_tensor"),
    dtypes: Sequence[str] = ("float64", "int64", "float32"),
    strided: bool = True,
    objects: bool = True,
    max_tensors: int = 3,
    max_side: int = 9,
    allow_empty: bool = True,
    nested: bool | None = None,
    min_dims: int = 0,
    per_rank_keys: bool = False,
) -> SaveLoadCase:
    """A case: tensors with layouts to save on one world and to load on another.

    ``same_layout`` loads every tensor as it was saved (on the same world); otherwise
    each tensor gets an independent destination layout on a world from ``load_worlds``.
    ``per_rank_keys``: a key, tensor or object, may be held by some ranks only, on either
    side (see :func:`layouts` and :attr:`SaveLoadCase.object_ranks`); every key is held by
    at least one rank of each world.
    """
    save_world = draw(st.sampled_from(list(save_worlds)))
    load_world = (
        save_world
        if same_layout or load_worlds is None
        else draw(st.sampled_from(list(load_worlds)))
    )
    count = draw(st.integers(1, max_tensors))
    keys = draw(distinct_tensor_keys(count))
    specs, saves, loads = [], [], []
    for i, key in enumerate(keys):
        shape = draw(global_shapes(min_dims=min_dims, max_side=max_side, allow_empty=allow_empty))
        spec = TensorSpec(key, shape, draw(dtype_names(names=dtypes)), salt=i * 1000)
        options = {"shape": shape, "kinds": kinds, "strided": strided, "some_ranks": per_rank_keys}
        saved = draw(layouts(world_size=save_world, **options))
        loaded = saved if same_layout else draw(layouts(world_size=load_world, **options))
        specs.append(spec)
        saves.append(saved)
        loads.append(loaded)
    object_items: tuple = ()
    object_ranks: tuple = ()
    if objects:
        names = draw(_object_names())
        object_items = tuple((f"obj_{n}", draw(object_values())) for n in names)
        if per_rank_keys and object_items:
            saved_by = [draw(_some_ranks(save_world)) for _ in object_items]
            loaded_by = (
                saved_by if same_layout else [draw(_some_ranks(load_world)) for _ in saved_by]
            )
            object_ranks = tuple(zip(saved_by, loaded_by))
    return SaveLoadCase(
        tensors=tuple(specs),
        save_layouts=tuple(saves),
        load_layouts=tuple(loads),
        save_world=save_world,
        load_world=load_world,
        objects=object_items,
        nested=draw(st.booleans()) if nested is None else nested,
        object_ranks=object_ranks,
    )


@_reused
@st.composite
def _some_ranks(draw, world_size: int) -> tuple[int, ...]:
    """``()`` (every rank) three times in four, else a drawn proper subset of the ranks."""
    if world_size < 2 or draw(st.integers(0, 3)) != 3:
        return ()
    chosen = draw(st.sets(st.integers(0, world_size - 1), min_size=1, max_size=world_size - 1))
    return tuple(sorted(chosen))


def no_prefix_clash(keys: Sequence[str]) -> bool:
    """Keys that cannot collide once nested containers are flattened with dots."""
    return not any(
        a != b and (b.startswith(a + ".") or a.startswith(b + ".")) for a in keys for b in keys
    )


def layout_kinds(backend: Any) -> tuple[str, ...]:
    """The tensor layouts (``plain``, ``dtensor``, ``sharded_tensor``) ``backend`` supports."""
    kinds = ["plain"]
    kinds += [k for k in ("dtensor", "sharded_tensor") if backend.supports(k)]
    return tuple(kinds)


def supported_dtypes(backend: Any) -> tuple[str, ...]:
    """Every dtype of :data:`ALL_DTYPES` this torch has if ``backend`` supports ``dtypes``, else
    :data:`BASIC_DTYPES`."""
    return tuple(available_dtypes(ALL_DTYPES if backend.supports("dtypes") else BASIC_DTYPES))


def mostly_basic_dtypes(backend: Any) -> tuple[str, ...]:
    """Dtype names for tests whose subject is layouts, not dtypes, to draw from (with
    ``dtypes=``): a basic dtype three times in four, whose values tell every element's index
    apart, else another dtype ``backend`` supports (bfloat16, float8, bool, complex), so that a
    layout's bytes are also cut at other element sizes than 4 and 8."""
    basic = available_dtypes(BASIC_DTYPES)
    others = [d for d in supported_dtypes(backend) if d not in basic]
    return tuple(basic * len(others) + others) if others else tuple(basic)


def supported_options(backend: Any, **overrides: Any) -> dict[str, Any]:
    """The options of :func:`save_load_cases` that keep a case within what ``backend``
    supports: its layout kinds, objects, empty and 0-dim tensors, nesting (``overrides`` on
    top)."""
    options = {
        "kinds": layout_kinds(backend),
        "strided": False,
        "objects": backend.supports("objects"),
        "allow_empty": backend.supports("empty_tensors"),
        "min_dims": 0 if backend.supports("scalar_tensors") else 1,
    }
    if not backend.supports("nested_state_dicts"):
        options["nested"] = False
    return {**options, **overrides}


SMALL_CASES: dict[str, Any] = dict(max_tensors=2, max_side=6, allow_empty=False)
"""The size options of :func:`small_cases` (for :func:`~.layouts.small_layout_examples`)."""


def small_cases(backend: Any, world: int) -> st.SearchStrategy[SaveLoadCase]:
    """Small flat or nested states of the layouts ``backend`` supports, saved and loaded in
    the same layout on ``world`` ranks: at most two tensors of sides up to 6, no
    ShardedTensor, no empty tensor. The cases of tests where a fault or a crash, not
    resharding, is under test, and every example costs fresh processes."""
    options = supported_options(backend, **SMALL_CASES)
    options["kinds"] = tuple(k for k in options["kinds"] if k != "sharded_tensor")
    return save_load_cases(save_worlds=(world,), same_layout=True, **options)
