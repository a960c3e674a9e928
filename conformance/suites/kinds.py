"""State-dict kinds: every dtype, 0-dim and empty tensors, non-contiguous tensors, nested
containers and optimizer-shaped states, unusual keys; and (strict) loads into a state that
does not match the checkpoint, which must fail without touching the destination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from ckptconf.harness import WorldError, get_world
from hypothesis import given
from hypothesis import strategies as st

from .. import rank_ops, rank_ops_kinds
from ..backend import Backend, BackendRef
from ..cases import Layout, SaveLoadCase, TensorSpec
from ..runner import _failure, _listing, check_save_then_load
from ..strategies import (
    ALL_DTYPES,
    _available,
    _no_prefix_clash,
    dtype_names,
    global_shapes,
    layouts,
    object_values,
    save_load_cases,
    tensor_keys,
)
from .roundtrip import kinds_for

__all__ = ["StateDictKindsTests", "BASIC_DTYPES", "dtypes_for"]

BASIC_DTYPES = ("float32", "float64", "int64")
"""The dtypes every backend must handle; the others need the ``dtypes`` feature."""

MAX_SIDE = 6
TIMEOUT = 120.0


OBJECT_KINDS = {
    "empty_bytes": b"",
    "bytes": bytes([0, 255, 10, 13]),
    "bytearray": bytearray(b"ab"),
    "empty_str": "",
    "unicode": "ünï ✓ 日本",
    "big_int": 2**70,
    "negative_int": -(2**40),
    "float": 1.5e-300,
    "infinity": float("-inf"),
    "none": None,
    "bool": False,
    "empty_list": [],
    "mixed_list": [1, "a", b"b", None, [2.5]],
    "tuple": (1, (2.0, b"")),
}
"""Non-tensor values with a name each (no NaN: it never equals itself; no dict: DCP
flattens dicts into keys)."""


def _clash_leaf(salt: int) -> rank_ops_kinds.Leaf:
    return rank_ops_kinds.Leaf(TensorSpec("", (4,), "float64", salt), Layout())


KEY_CLASHES = {
    "dotted_key_and_dict": {"a.b": _clash_leaf(1000), "a": {"b": _clash_leaf(2000)}},
    "dotted_index_and_list": {"l": [_clash_leaf(1000)], "l.0": _clash_leaf(2000)},
}
"""States in which two paths flatten to the same dotted key."""


def dtypes_for(backend: Backend) -> tuple[str, ...]:
    """Every dtype of the strategies if the backend supports them, else the basic three."""
    return tuple(_available(ALL_DTYPES if backend.supports("dtypes") else BASIC_DTYPES))


def _dtype_params():
    return [
        pytest.param(d, id=d)
        if d in BASIC_DTYPES
        else pytest.param(d, id=d, marks=pytest.mark.ckpt_requires("dtypes"))
        for d in ALL_DTYPES
    ]


def _run(backend: Backend, world: int, what: str, case_text: str, repro: str, fn, *args):
    """``get_world(world).run(fn, *args)``; a rank's error is a ConformanceFailure."""
    try:
        return get_world(world).run(fn, *args, timeout=TIMEOUT)
    except WorldError as exc:
        raise _failure(backend, f"{what} raised", case_text, str(exc), repro) from None


# --- strategies, drawn in the controller -------------------------------------------------------


@st.composite
def _shaped_cases(
    draw,
    *,
    shapes: st.SearchStrategy[tuple[int, ...]],
    worlds: Sequence[int],
    kinds: Sequence[str],
    dtypes: Sequence[str],
    objects: bool,
    max_tensors: int = 3,
) -> SaveLoadCase:
    """A same-layout case whose tensor shapes come from ``shapes``."""
    world = draw(st.sampled_from(list(worlds)))
    count = draw(st.integers(1, max_tensors))
    keys = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
            _no_prefix_clash
        )
    )
    specs, lays = [], []
    for i, key in enumerate(keys):
        shape = draw(shapes)
        specs.append(TensorSpec(key, shape, draw(dtype_names(names=dtypes)), salt=i * 1000))
        lays.append(draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False)))
    items = ()
    if objects:
        names = draw(st.lists(st.sampled_from(["step", "tag"]), max_size=2, unique=True))
        items = tuple((f"obj_{n}", draw(object_values())) for n in names)
    return SaveLoadCase(
        tuple(specs), tuple(lays), tuple(lays), world, world, items, nested=draw(st.booleans())
    )


@st.composite
def _empty_shapes(draw) -> tuple[int, ...]:
    """A shape of 1 to 3 dims with at least one size-0 dim."""
    shape = list(draw(global_shapes(min_dims=1, max_dims=3, max_side=4)))
    shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


UNUSUAL_KEYS = ("with space", "a/b", "k:v", "日本語", "tab\tkey", "[0]", "x-y.z", "UPPER.Case")


def _unusual_keys() -> st.SearchStrategy[str]:
    return st.one_of(tensor_keys(), st.sampled_from(UNUSUAL_KEYS))


def _flat_keys(tree, path=()) -> list[str]:
    """The dotted keys DCP flattens a tree to (dicts and tensor-holding lists recurse)."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _flat_keys(v, path + (key,))]
    if isinstance(tree, list):
        return [k for i, v in enumerate(tree) for k in _flat_keys(v, path + (i,))]
    return [".".join(map(str, path))]


def _unique_flat_keys(tree) -> bool:
    keys = _flat_keys(tree)
    return len(set(keys)) == len(keys) and _no_prefix_clash(keys)


@st.composite
def _trees(draw, *, backend: Backend, world: int, max_leaves: int = 6):
    """Nested dicts (dotted and unusual keys) and lists of tensors, with objects."""
    salt = iter(range(0, 10**6, 1000))
    kinds = kinds_for(backend)
    objects = backend.supports("objects")
    budget = [max_leaves]

    def leaf() -> rank_ops_kinds.Leaf:
        shape = draw(
            global_shapes(
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
                min_dims=0 if backend.supports("scalar_tensors") else 1,
            )
        )
        spec = TensorSpec("", shape, draw(dtype_names(names=BASIC_DTYPES)), next(salt))
        lay = draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))
        return rank_ops_kinds.Leaf(spec, lay)

    def node(depth: int):
        budget[0] -= 1
        choices = ["tensor"] + (["object"] if objects else [])
        if depth < 3 and budget[0] > 0:
            choices += ["dict", "list"]
        kind = draw(st.sampled_from(choices))
        if kind == "tensor":
            return leaf()
        if kind == "object":
            return rank_ops_kinds.Obj(draw(object_values()))
        if kind == "list":  # a list DCP recurses into: tensors only
            return [leaf() for _ in range(draw(st.integers(1, 3)))]
        keys = draw(st.lists(_unusual_keys(), min_size=1, max_size=3, unique=True))
        return {k: node(depth + 1) for k in keys}

    keys = draw(st.lists(_unusual_keys(), min_size=1, max_size=3, unique=True))
    return {k: node(1) for k in keys}


@st.composite
def _optimizer_trees(draw, *, backend: Backend, world: int):
    """``{"model": {...}, "optim": {"state": {0: {"exp_avg": t, "exp_avg_sq": t, "step": t0}},
    "param_groups": [{"lr": 0.1, "params": [0, ...]}]}}``, as ``optimizer.state_dict()``."""
    salt = iter(range(0, 10**6, 1000))
    kinds = kinds_for(backend)
    objects = backend.supports("objects")
    count = draw(st.integers(1, 3))
    names = draw(
        st.lists(tensor_keys(), min_size=count, max_size=count, unique=True).filter(
            _no_prefix_clash
        )
    )
    step_shape = () if backend.supports("scalar_tensors") else (1,)
    model, state = {}, {}
    for index, name in enumerate(names):
        shape = draw(global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False))
        dtype = draw(dtype_names(names=("float32", "float64")))
        lay = draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))

        def leaf(shape=shape, dtype=dtype, lay=lay):
            return rank_ops_kinds.Leaf(TensorSpec("", shape, dtype, next(salt)), lay)

        model[name] = leaf()
        if draw(st.booleans()) or index == 0:  # a parameter without state: not stepped yet
            state[index] = {
                "exp_avg": leaf(),
                "exp_avg_sq": leaf(),
                "step": rank_ops_kinds.Leaf(TensorSpec("", step_shape, "float32", next(salt))),
            }
    optim: dict = {"state": state}
    if objects:
        ids = list(range(count))
        split = draw(st.integers(1, count))
        groups = [ids[:split], ids[split:]] if split < count else [ids]
        optim["param_groups"] = [
            {
                "lr": rank_ops_kinds.Obj(draw(st.sampled_from([0.1, 1e-3, 3e-4]))),
                "betas": rank_ops_kinds.Obj((0.9, 0.999)),
                "weight_decay": rank_ops_kinds.Obj(0.0),
                "amsgrad": rank_ops_kinds.Obj(False),
                "params": rank_ops_kinds.Obj(group),
            }
            for group in groups
        ]
    return {"model": model, "optim": optim}


# --- the suite ---------------------------------------------------------------------------------


@pytest.mark.ckpt_suite("kinds")
@pytest.mark.ckpt_level("core")
class StateDictKindsTests:
    """What a state dict may hold round-trips; loads into a mismatching state fail cleanly."""

    # (a) dtypes

    @pytest.mark.parametrize("dtype", _dtype_params())
    @given(data=st.data())
    def test_dtype_round_trip(self, backend, ckpt_path, ckpt_repro, dtype, data):
        """Tensors of one dtype, any supported layout, on 1 and 2 ranks."""
        if dtype not in _available([dtype]):
            pytest.skip(f"this torch has no {dtype}")
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds_for(backend),
                dtypes=(dtype,),
                strided=False,
                objects=False,
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @given(data=st.data())
    def test_mixed_dtypes(self, backend, ckpt_path, ckpt_repro, data):
        """Several dtypes in one checkpoint (1-byte next to 8-byte elements), with objects."""
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds_for(backend),
                dtypes=dtypes_for(backend),
                strided=False,
                objects=backend.supports("objects"),
                max_tensors=4,
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    # (b) 0-dim and empty tensors

    @pytest.mark.ckpt_requires("scalar_tensors")
    @given(data=st.data())
    def test_scalar_tensors(self, backend, ckpt_path, ckpt_repro, data):
        """0-dim tensors (plain, or replicated DTensors), every supported dtype."""
        case = data.draw(
            _shaped_cases(
                shapes=st.just(()),
                worlds=(1, 2),
                kinds=kinds_for(backend),
                dtypes=dtypes_for(backend),
                objects=backend.supports("objects"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("empty_tensors")
    @given(data=st.data())
    def test_empty_tensors(self, backend, ckpt_path, ckpt_repro, data):
        """Tensors with a size-0 dim, any supported layout."""
        case = data.draw(
            _shaped_cases(
                shapes=_empty_shapes(),
                worlds=(1, 2),
                kinds=kinds_for(backend),
                dtypes=BASIC_DTYPES,
                objects=False,
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    # (c) non-contiguous tensors

    def _views_case(self, backend, data):
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=("plain",),
                dtypes=dtypes_for(backend),
                objects=backend.supports("objects"),
                max_tensors=4,
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
            ).filter(
                lambda c: backend.supports("scalar_tensors") or all(len(s.shape) for s in c.tensors)
            ),
            label="case",
        )
        views = tuple(
            data.draw(st.sampled_from(rank_ops_kinds.VIEW_KINDS), label=f"view of {s.key!r}")
            for s in case.tensors
        )
        text = (
            case.describe()
            + "\n  held as: "
            + ", ".join(f"{s.key!r} {v}" for s, v in zip(case.tensors, views))
        )
        return case, views, text

    @given(data=st.data())
    def test_noncontiguous_sources(self, backend, ckpt_path, ckpt_repro, data):
        """Transposed views, stepped slices, views at a storage offset and views sharing one
        storage save their values (not their storage) and are not modified by the save;
        they load into contiguous tensors."""
        case, views, text = self._views_case(backend, data)
        path, ref = ckpt_path(), BackendRef.of(backend)
        world = case.save_world
        changed = _run(
            backend,
            world,
            "save",
            text,
            ckpt_repro,
            rank_ops_kinds.save_views,
            ref,
            case,
            views,
            path,
        )
        found = [m for r in changed for m in r]
        found += [
            m
            for r in _run(
                backend, world, "load", text, ckpt_repro, rank_ops.load_case, ref, case, path
            )
            for m in r
        ]
        if found:
            raise _failure(
                backend,
                f"{len(found)} problem(s) saving non-contiguous tensors",
                text,
                _listing(found),
                ckpt_repro,
            )

    @given(data=st.data())
    def test_noncontiguous_destinations(self, backend, ckpt_path, ckpt_repro, data):
        """Loading in place into the same kinds of views writes the view's elements and
        nothing else of the storage around them."""
        case, views, text = self._views_case(backend, data)
        path, ref = ckpt_path(), BackendRef.of(backend)
        world = case.save_world
        _run(backend, world, "save", text, ckpt_repro, rank_ops.save_case, ref, case, path)
        found = [
            m
            for r in _run(
                backend,
                world,
                "load",
                text,
                ckpt_repro,
                rank_ops_kinds.load_into_views,
                ref,
                case,
                views,
                path,
            )
            for m in r
        ]
        if found:
            raise _failure(
                backend,
                f"{len(found)} problem(s) loading into non-contiguous tensors",
                text,
                _listing(found),
                ckpt_repro,
            )

    # (d) containers and keys

    def _check_tree(self, backend, case, path, repro):
        ref = BackendRef.of(backend)
        text = case.describe()
        _run(backend, case.world, "save", text, repro, rank_ops_kinds.save_tree, ref, case, path)
        found = [
            m
            for r in _run(
                backend, case.world, "load", text, repro, rank_ops_kinds.load_tree, ref, case, path
            )
            for m in r
        ]
        if found:
            raise _failure(
                backend,
                f"{len(found)} loaded value(s) differ from what was saved",
                text,
                _listing(found),
                repro,
            )

    @pytest.mark.ckpt_requires("objects")
    @pytest.mark.parametrize("kind", sorted(OBJECT_KINDS))
    @pytest.mark.parametrize("depth", ["top", "nested"])
    def test_object_values(self, backend, ckpt_path, ckpt_repro, kind, depth):
        """Each kind of non-tensor value (empty bytes, bytearray, unicode, big ints, inf, None,
        bools, lists and tuples) round-trips with its type, at the top level and nested."""
        leaf = rank_ops_kinds.Obj(OBJECT_KINDS[kind])
        weight = rank_ops_kinds.Leaf(TensorSpec("", (3,), "float64", 1000))
        tree = {"weight": weight, "value": leaf}
        if depth == "nested":
            tree = {"model": {"weight": weight}, "extra": {"meta": {"value": leaf}}}
        self._check_tree(backend, rank_ops_kinds.TreeCase(tree, 1), ckpt_path(), ckpt_repro)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.parametrize("shape_of_clash", sorted(KEY_CLASHES))
    def test_colliding_keys_are_an_error_or_kept_apart(
        self, backend, ckpt_path, ckpt_repro, shape_of_clash
    ):
        """Two paths that flatten to one key (``{"a.b": x, "a": {"b": y}}``): the save raises on
        every rank, or both values load back; never one value silently under both paths."""
        tree = KEY_CLASHES[shape_of_clash]
        case = rank_ops_kinds.TreeCase(tree, 2)
        ref, path, text = BackendRef.of(backend), ckpt_path(), case.describe()
        outcomes = _run(
            backend, 2, "save", text, ckpt_repro, rank_ops_kinds.save_tree_outcome, ref, case, path
        )
        raised = [o["raised"] for o in outcomes]
        if all(raised):
            return
        if any(raised):
            raise _failure(
                backend,
                "a save of colliding keys raised on some ranks only",
                text,
                "\n".join(f"  rank {r}: {o}" for r, o in enumerate(outcomes)),
                ckpt_repro,
            )
        found = [
            m
            for r in _run(
                backend, 2, "load", text, ckpt_repro, rank_ops_kinds.load_tree, ref, case, path
            )
            for m in r
        ]
        if found:
            raise _failure(
                backend,
                "two paths that flatten to one key were saved without an error, "
                "and one value was lost",
                text,
                _listing(found),
                ckpt_repro,
            )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("replica_check")
    @given(data=st.data())
    def test_differing_replicas_are_an_error(self, backend, ckpt_path, ckpt_repro, data):
        """A replicated tensor (plain on every rank, or DTensor ``R``) whose value differs on
        one rank: the save raises on every rank naming the key, instead of keeping one copy."""
        kinds = ["plain"] + (["dtensor"] if backend.supports("dtensor") else [])
        kind = data.draw(st.sampled_from(kinds), label="kind")
        shape = data.draw(
            global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False),
            label="shape",
        )
        layout = Layout() if kind == "plain" else Layout("dtensor", (2,), ("R",))
        spec = TensorSpec("replicated.weight", shape, "float32", 1000)
        case = SaveLoadCase((spec,), (layout,), (layout,), 2, 2)
        divergent = data.draw(st.integers(0, 1), label="divergent rank")
        text = case.describe() + f"\n  rank {divergent} holds other values"
        outcomes = _run(
            backend,
            2,
            "save",
            text,
            ckpt_repro,
            rank_ops_kinds.save_divergent_replica,
            BackendRef.of(backend),
            case,
            ckpt_path(),
            divergent,
        )
        silent = [r for r, o in enumerate(outcomes) if not o["raised"]]
        unnamed = [r for r, o in enumerate(outcomes) if o["raised"] and spec.key not in o["text"]]
        if silent or unnamed:
            raise _failure(
                backend,
                "a save of replicas that differ must raise on every rank, naming the key",
                text,
                "\n".join(
                    f"  rank {r}: "
                    + (f"raised {o['type']}: {o['text'][-300:]}" if o["raised"] else "no error")
                    for r, o in enumerate(outcomes)
                ),
                ckpt_repro,
            )

    @given(data=st.data())
    def test_nested_containers(self, backend, ckpt_path, ckpt_repro, data):
        """Dicts in dicts with dotted and unusual keys, lists of tensors, objects at any depth;
        the loaded state keeps its containers and gains no keys."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        tree = data.draw(
            _trees(backend=backend, world=world).filter(_unique_flat_keys), label="tree"
        )
        self._check_tree(backend, rank_ops_kinds.TreeCase(tree, world), ckpt_path(), ckpt_repro)

    @given(data=st.data())
    def test_optimizer_state(self, backend, ckpt_path, ckpt_repro, data):
        """A model and its optimizer's state_dict(): int-keyed per-parameter state with a
        0-dim step, and param_groups, a list of dicts of objects."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        tree = data.draw(_optimizer_trees(backend=backend, world=world), label="tree")
        self._check_tree(backend, rank_ops_kinds.TreeCase(tree, world), ckpt_path(), ckpt_repro)

    @given(data=st.data())
    def test_unusual_keys(self, backend, ckpt_path, ckpt_repro, data):
        """Flat keys with dots, spaces, slashes, colons, tabs, brackets and non-ASCII."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        keys = data.draw(
            st.lists(_unusual_keys(), min_size=1, max_size=4, unique=True).filter(_no_prefix_clash),
            label="keys",
        )
        kinds = kinds_for(backend)
        tree = {}
        for i, key in enumerate(keys):
            shape = data.draw(global_shapes(min_dims=1, max_side=MAX_SIDE, allow_empty=False))
            lay = data.draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))
            tree[key] = rank_ops_kinds.Leaf(TensorSpec("", shape, "float64", i * 1000), lay)
        self._check_tree(backend, rank_ops_kinds.TreeCase(tree, world), ckpt_path(), ckpt_repro)

    @given(data=st.data())
    def test_tied_tensors(self, backend, ckpt_path, ckpt_repro, data):
        """One tensor object under two keys (tied weights) saves and loads under both."""
        world = data.draw(st.sampled_from([1, 2]), label="world")
        shape = data.draw(
            global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False)
        )
        lay = data.draw(
            layouts(world_size=world, shape=shape, kinds=kinds_for(backend), strided=False),
            label="layout",
        )
        tied = rank_ops_kinds.Leaf(TensorSpec("", shape, "float32", 0), lay)
        other = rank_ops_kinds.Leaf(TensorSpec("", shape, "float32", 1000), lay)
        tree = {"embed": {"weight": tied}, "layers": [other], "lm_head": {"weight": tied}}
        self._check_tree(
            backend, rank_ops_kinds.TreeCase(tree, world, tie=True), ckpt_path(), ckpt_repro
        )

    # (e)-(h) strict loads

    def _strict_case(self, backend, data, *, min_tensors=1) -> SaveLoadCase:
        kinds = tuple(k for k in kinds_for(backend) if k != "sharded_tensor")
        return data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds,
                strided=False,
                objects=False,
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
            ).filter(lambda c: len(c.tensors) >= min_tensors),
            label="case",
        )

    def _check_rejected(
        self,
        backend: Backend,
        saved: SaveLoadCase,
        dest: SaveLoadCase,
        path: str,
        repro: str,
        what: str,
    ) -> None:
        """Save ``saved``; a load into ``dest`` must raise on every rank and change nothing;
        a load into ``saved``'s own layout (the control) must work."""
        ref = BackendRef.of(backend)
        text = f"saved:\n{saved.describe()}\ndestination:\n{dest.describe()}"
        _run(backend, saved.save_world, "save", text, repro, rank_ops.save_case, ref, saved, path)
        results = _run(
            backend,
            saved.load_world,
            "load",
            text,
            repro,
            rank_ops_kinds.load_expecting_error,
            ref,
            dest,
            saved,
            path,
        )
        problems = []
        for r in results:
            if not r["raised"]:
                loaded = "; ".join(r["loaded"]) or (
                    "it loaded the saved values, converted where dtypes differ"
                )
                problems.append(f"  rank {r['rank']}: load did not raise ({loaded})")
            if r["changed"]:
                problems.append(
                    f"  rank {r['rank']}: the load modified destination key(s) {r['changed']!r}"
                    + (" before raising" if r["raised"] else "")
                )
        errors = "\n".join(
            f"  rank {r['rank']} raised {r['type']}: {r['text'][-600:]}"
            for r in results
            if r["raised"]
        )
        if problems:
            raise _failure(
                backend,
                f"loading into a state with {what} must raise on every rank and modify nothing",
                text,
                "\n".join(problems) + ("\nerrors:\n" + errors if errors else ""),
                repro,
            )
        control = [f"  rank {r['rank']}: {c}" for r in results for c in r["control"]]
        if control:
            raise _failure(
                backend,
                "after the rejected load, loading the checkpoint into a matching state failed",
                text,
                "\n".join(control),
                repro,
            )

    @pytest.mark.ckpt_level("strict")
    @given(data=st.data())
    def test_missing_key_in_checkpoint_raises(self, backend, ckpt_path, ckpt_repro, data):
        """The destination has a key the checkpoint lacks: an error, destination untouched."""
        case = self._strict_case(backend, data)
        extra = TensorSpec("zz_only_in_destination", (3,), "float64", salt=777)
        dest = replace(
            case,
            tensors=case.tensors + (extra,),
            save_layouts=case.save_layouts + (Layout(),),
            load_layouts=case.load_layouts + (Layout(),),
        )
        self._check_rejected(
            backend, case, dest, ckpt_path(), ckpt_repro, "a key missing from the checkpoint"
        )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("strict_keys")
    @given(data=st.data())
    def test_unexpected_key_in_checkpoint_raises(self, backend, ckpt_path, ckpt_repro, data):
        """The checkpoint has a key the destination lacks: an error, destination untouched."""
        case = self._strict_case(backend, data)
        extra = TensorSpec("zz_only_in_checkpoint", (3,), "float64", salt=777)
        saved = replace(
            case,
            tensors=case.tensors + (extra,),
            save_layouts=case.save_layouts + (Layout(),),
            load_layouts=case.load_layouts + (Layout(),),
        )
        self._check_rejected(
            backend, saved, case, ckpt_path(), ckpt_repro, "a key the checkpoint has and it lacks"
        )

    @pytest.mark.ckpt_level("strict")
    @given(data=st.data())
    def test_shape_mismatch_raises(self, backend, ckpt_path, ckpt_repro, data):
        """A destination tensor of another global shape (same number of dims)."""
        case = self._strict_case(backend, data)
        saved, dest = self._with_one_changed(
            data,
            case,
            lambda spec: data.draw(
                global_shapes(
                    min_dims=len(spec.shape),
                    max_dims=len(spec.shape),
                    max_side=MAX_SIDE,
                    allow_empty=backend.supports("empty_tensors"),
                ).filter(lambda s: s != spec.shape),
                label="destination shape",
            ),
            "shape",
        )
        self._check_rejected(backend, saved, dest, ckpt_path(), ckpt_repro, "a shape mismatch")

    @pytest.mark.ckpt_level("strict")
    @given(data=st.data())
    def test_dtype_mismatch_raises(self, backend, ckpt_path, ckpt_repro, data):
        """A destination tensor of another dtype (no silent cast)."""
        case = self._strict_case(backend, data)
        saved, dest = self._with_one_changed(
            data,
            case,
            lambda spec: data.draw(
                st.sampled_from([d for d in BASIC_DTYPES if d != spec.dtype]),
                label="destination dtype",
            ),
            "dtype",
        )
        self._check_rejected(backend, saved, dest, ckpt_path(), ckpt_repro, "a dtype mismatch")

    @staticmethod
    def _with_one_changed(data, case: SaveLoadCase, new_value, field: str):
        """``(case, destination)``: the destination has one tensor's ``field`` changed."""
        index = data.draw(st.integers(0, len(case.tensors) - 1), label="changed tensor")
        spec = case.tensors[index]
        changed = replace(spec, **{field: new_value(spec)})
        tensors = case.tensors[:index] + (changed,) + case.tensors[index + 1 :]
        return case, replace(case, tensors=tensors)
