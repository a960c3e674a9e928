"""Cases of the kinds suite: nested trees of tensors and objects, and their strategies.

A :class:`TreeCase` is a nested state dict whose leaves are :class:`Leaf` (a tensor: its
values and layout) and :class:`Obj` (a non-tensor value); the strategies draw trees with
dotted and unusual keys, optimizer-shaped states, and same-layout cases of given shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import Layout, SaveLoadCase, TensorSpec
from ...kit.strategies import (
    BASIC_DTYPES,
    distinct_tensor_keys,
    dtype_names,
    global_shapes,
    layout_kinds,
    layouts,
    no_prefix_clash,
    object_values,
    real_stack_objects,
    tensor_keys,
)

__all__ = [
    "KEY_CLASHES",
    "MAX_SIDE",
    "OBJECT_KINDS",
    "UNUSUAL_KEYS",
    "Leaf",
    "Obj",
    "TreeCase",
    "empty_shapes",
    "optimizer_trees",
    "shaped_cases",
    "trees",
    "unique_flat_keys",
    "unusual_keys",
]


@dataclass(frozen=True)
class Leaf:
    """A tensor in a tree: its values (spec: dtype, shape, salt) and layout."""

    spec: TensorSpec
    layout: Layout = Layout()


@dataclass(frozen=True)
class Obj:
    """A non-tensor value in a tree (saved as an object)."""

    value: Any


@dataclass(frozen=True)
class TreeCase:
    """A nested state dict: dicts (any hashable keys) and lists of :class:`Leaf`, :class:`Obj`.

    With ``tie``, leaves with equal ``spec`` and layout are one tensor object in the saved
    state and in the destination (tied weights).
    """

    tree: Any
    world: int = 1
    tie: bool = False

    def leaves(self) -> list[tuple[tuple, Any]]:
        """``(path, leaf)`` for every Leaf and Obj, depth first."""
        out: list[tuple[tuple, Any]] = []

        def visit(path, node):
            if isinstance(node, Mapping):
                for k, v in node.items():
                    visit(path + (k,), v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    visit(path + (i,), v)
            else:
                out.append((path, node))

        visit((), self.tree)
        return out

    def describe(self) -> str:
        """One line per leaf: its path, then dtype, shape and layout, or the object."""
        lines = [f"save and load on {self.world} rank(s)" + (", tied leaves" if self.tie else "")]
        for path, leaf in self.leaves():
            where = "".join(f"[{p!r}]" for p in path)
            if isinstance(leaf, Leaf):
                lines.append(f"  {where}: {leaf.spec.dtype}{list(leaf.spec.shape)} {leaf.layout}")
            else:
                lines.append(f"  {where}: object {leaf.value!r}")
        return "\n".join(lines)


MAX_SIDE = 6

REAL_STACK_OBJECTS = real_stack_objects()
"""Object values of real training stacks' state dicts (see the kit's ``real_stack_objects``)."""


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
    "nan": float("nan"),
    "complex": 1.5 - 2j,
    "set": {1, 2},
    "frozenset": frozenset({"x"}),
    **REAL_STACK_OBJECTS,
}
"""Non-tensor values with a name each (no dict: DCP flattens dicts into keys), the values real
training stacks keep in their state dicts among them (:data:`REAL_STACK_OBJECTS`)."""


def _clash_leaf(salt: int) -> Leaf:
    return Leaf(TensorSpec("", (4,), "float64", salt), Layout())


KEY_CLASHES = {
    "dotted_key_and_dict": {"a.b": _clash_leaf(1000), "a": {"b": _clash_leaf(2000)}},
    "dotted_index_and_list": {"l": [_clash_leaf(1000)], "l.0": _clash_leaf(2000)},
}
"""States in which two paths flatten to the same dotted key."""


# --- strategies, drawn in the controller -------------------------------------------------------


@st.composite
def shaped_cases(
    draw,
    *,
    shapes: st.SearchStrategy[tuple[int, ...]],
    worlds: Sequence[int],
    kinds: Sequence[str],
    dtypes: Sequence[str],
    objects: bool,
    max_tensors: int = 3,
    nested: bool = True,
) -> SaveLoadCase:
    """A same-layout case whose tensor shapes come from ``shapes`` (flat unless ``nested``
    may be drawn)."""
    world = draw(st.sampled_from(list(worlds)))
    count = draw(st.integers(1, max_tensors))
    keys = draw(distinct_tensor_keys(count))
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
        tuple(specs),
        tuple(lays),
        tuple(lays),
        world,
        world,
        items,
        nested=nested and draw(st.booleans()),
    )


@st.composite
def empty_shapes(draw) -> tuple[int, ...]:
    """A shape of 1 to 3 dims with at least one size-0 dim."""
    shape = list(draw(global_shapes(min_dims=1, max_dims=3, max_side=4)))
    shape[draw(st.integers(0, len(shape) - 1))] = 0
    return tuple(shape)


UNUSUAL_KEYS = ("with space", "a/b", "k:v", "日本語", "tab\tkey", "[0]", "x-y.z", "UPPER.Case")


def unusual_keys() -> st.SearchStrategy[str]:
    return st.one_of(tensor_keys(), st.sampled_from(UNUSUAL_KEYS))


def _flat_keys(tree, path=()) -> list[str]:
    """The dotted keys DCP flattens a tree to (dicts and tensor-holding lists recurse)."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _flat_keys(v, path + (key,))]
    if isinstance(tree, list):
        return [k for i, v in enumerate(tree) for k in _flat_keys(v, path + (i,))]
    return [".".join(map(str, path))]


def unique_flat_keys(tree) -> bool:
    keys = _flat_keys(tree)
    return len(set(keys)) == len(keys) and no_prefix_clash(keys)


@st.composite
def trees(draw, *, backend: Backend, world: int, max_leaves: int = 6):
    """Nested dicts (dotted and unusual keys) and lists, with objects: a list holds a tensor
    first (so DCP recurses into it, as into ``[{"w": t, "cfg": 3}]``), then any nodes."""
    salt = iter(range(0, 10**6, 1000))
    kinds = layout_kinds(backend)
    objects = backend.supports("objects")
    budget = [max_leaves]

    def leaf() -> Leaf:
        shape = draw(
            global_shapes(
                max_side=MAX_SIDE,
                allow_empty=backend.supports("empty_tensors"),
                min_dims=0 if backend.supports("scalar_tensors") else 1,
            )
        )
        spec = TensorSpec("", shape, draw(dtype_names(names=BASIC_DTYPES)), next(salt))
        lay = draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))
        return Leaf(spec, lay)

    def node(depth: int):
        budget[0] -= 1
        choices = ["tensor"] + (["object"] if objects else [])
        if depth < 3 and budget[0] > 0:
            choices += ["dict", "list"]
        kind = draw(st.sampled_from(choices))
        if kind == "tensor":
            return leaf()
        if kind == "object":
            return Obj(draw(object_values()))
        if kind == "list":  # a list DCP recurses into (it holds a tensor), with other nodes after
            return [leaf()] + [node(depth + 1) for _ in range(draw(st.integers(0, 2)))]
        # below the top level, keys may be ints too (as optimizer state is keyed)
        nested_keys = st.one_of(unusual_keys(), st.integers(0, 3))
        keys = draw(st.lists(nested_keys, min_size=1, max_size=3, unique=True))
        return {k: node(depth + 1) for k in keys}

    keys = draw(st.lists(unusual_keys(), min_size=1, max_size=3, unique=True))
    return {k: node(1) for k in keys}


@st.composite
def optimizer_trees(draw, *, backend: Backend, world: int):
    """``{"model": {...}, "optim": {"state": {0: {"exp_avg": t, "exp_avg_sq": t, "step": t0}},
    "param_groups": [{"lr": 0.1, "params": [0, ...]}]}}``, as ``optimizer.state_dict()``."""
    salt = iter(range(0, 10**6, 1000))
    kinds = layout_kinds(backend)
    objects = backend.supports("objects")
    count = draw(st.integers(1, 3))
    names = draw(distinct_tensor_keys(count))
    step_shape = () if backend.supports("scalar_tensors") else (1,)
    model, state = {}, {}
    for index, name in enumerate(names):
        shape = draw(global_shapes(min_dims=1, max_dims=2, max_side=MAX_SIDE, allow_empty=False))
        dtype = draw(dtype_names(names=("float32", "float64")))
        lay = draw(layouts(world_size=world, shape=shape, kinds=kinds, strided=False))

        def leaf(shape=shape, dtype=dtype, lay=lay):
            return Leaf(TensorSpec("", shape, dtype, next(salt)), lay)

        model[name] = leaf()
        if draw(st.booleans()) or index == 0:  # a parameter without state: not stepped yet
            state[index] = {
                "exp_avg": leaf(),
                "exp_avg_sq": leaf(),
                "step": Leaf(TensorSpec("", step_shape, "float32", next(salt))),
            }
            if objects:  # an object under an int key: it loads into that key, not into "0"
                state[index]["n_iter"] = Obj(draw(st.integers(1, 10**6)))
    optim: dict = {"state": state}
    if objects:
        ids = list(range(count))
        split = draw(st.integers(1, count))
        groups = [ids[:split], ids[split:]] if split < count else [ids]
        optim["param_groups"] = [
            {
                "lr": Obj(draw(st.sampled_from([0.1, 1e-3, 3e-4]))),
                "betas": Obj((0.9, 0.999)),
                "weight_decay": Obj(0.0),
                "amsgrad": Obj(False),
                "params": Obj(group),
            }
            for group in groups
        ]
    return {"model": model, "optim": optim}
