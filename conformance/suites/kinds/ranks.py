"""What the ranks of the kinds suite run.

- non-contiguous values (transposed, stepped slices, views at a storage offset, several
  keys sharing one storage) saved from, and loaded into;
- nested containers (dicts with dotted and int keys, lists of tensors, optimizer-state
  shapes) described by a :class:`TreeCase`, with tensors and objects as leaves;
- loads that must fail (missing, unexpected keys, wrong shape or dtype) without touching
  the destination.

Every value is built from the case deterministically, as in :mod:`.rank_ops`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from ...backend import Backend
from ...kit.cases import NOT_LOADED, SaveLoadCase, blank_tensor, encoded_tensor
from ...kit.failures import Mismatch
from ...kit.values import (
    blank_state,
    build_state,
    call_outcome,
    compare_state,
    local_pieces,
    object_mismatch,
    same_object,
    tensor_value,
)
from .cases import Leaf, Obj, TreeCase

__all__ = [
    "VIEW_KINDS",
    "save_views",
    "load_into_views",
    "save_tree",
    "load_tree",
    "save_tree_outcome",
    "save_divergent_replica",
    "load_expecting_error",
    "off_split_dtensor",
    "RankState",
    "SubclassedTensor",
    "stateful_load",
    "stateful_save",
    "subclass_load",
    "subclass_save",
]

VIEW_KINDS = ("transpose", "slice", "offset", "shared")
"""How a plain tensor is held: ``transpose`` (a permuted view of a contiguous buffer of
the reversed shape), ``slice`` (every other element of a buffer twice as large on every
dim, starting at 1), ``offset`` (a view at a storage offset of a larger flat buffer) and
``shared`` (all ``shared`` tensors of a dtype are views of one flat buffer)."""


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as bytes (bitwise comparison for any dtype, float8 included)."""
    # a fresh tensor: .contiguous() keeps odd strides of size-0 and size-1 dims, which
    # .view(uint8) rejects
    fresh = torch.empty(t.shape, dtype=t.dtype).copy_(t.detach())
    return fresh.reshape(-1).view(torch.uint8)


def _zeros(shape, dtype) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


# --- non-contiguous values -----------------------------------------------------------------


def _view_buffers(
    case: SaveLoadCase, views: tuple[str, ...], fills: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(buffers, values)``: each value a view of its kind holding ``fills[i]``.

    Buffers start as zeros, so whatever a value does not cover stays zero.
    """
    shared_sizes: dict[torch.dtype, int] = {}
    shared_at: list[int] = []
    for kind, fill in zip(views, fills):
        start = shared_sizes.get(fill.dtype, 1)  # one padding element before and between
        shared_at.append(start)
        if kind == "shared":
            shared_sizes[fill.dtype] = start + fill.numel() + 1
    shared_buffers = {d: _zeros((n,), d) for d, n in shared_sizes.items()}
    buffers, values = [], []
    for spec, kind, fill, start in zip(case.tensors, views, fills, shared_at):
        shape, dtype = tuple(spec.shape), fill.dtype
        if kind == "transpose":
            order = tuple(reversed(range(len(shape))))
            buffer = _zeros(tuple(shape[d] for d in order), dtype)
            value = buffer.permute(order)
        elif kind == "slice":
            buffer = _zeros(tuple(2 * n + 1 for n in shape), dtype)
            value = buffer[tuple(slice(1, 2 * n + 1, 2) for n in shape)]
        elif kind == "offset":
            buffer = _zeros((fill.numel() + 3,), dtype)
            value = buffer[2 : 2 + fill.numel()].view(shape)
        elif kind == "shared":
            buffer = shared_buffers[dtype]
            value = buffer[start : start + fill.numel()].view(shape)
        else:
            raise ValueError(f"unknown view kind {kind!r}; expected one of {VIEW_KINDS}")
        value.copy_(fill)
        buffers.append(buffer)
        values.append(value)
    return buffers, values


def _encoded(case: SaveLoadCase) -> list[torch.Tensor]:
    return [encoded_tensor(s.shape, s.dtype, s.salt) for s in case.tensors]


def _with_objects(case: SaveLoadCase, tensors: dict[str, Any], *, blank: bool) -> dict[str, Any]:
    objects = {k: (NOT_LOADED if blank else copy.deepcopy(v)) for k, v in case.objects}
    if case.nested:
        return {"model": tensors, "extra": objects} if objects else {"model": tensors}
    return {**tensors, **objects}


def _buffer_changes(
    case: SaveLoadCase, views: tuple[str, ...], buffers: list[torch.Tensor], fills, what: str
) -> list[Mismatch]:
    """Every buffer that differs from the same views built over ``fills``."""
    expected_buffers, _ = _view_buffers(case, views, fills)
    out, seen = [], set()
    for spec, kind, got, want in zip(case.tensors, views, buffers, expected_buffers):
        if id(got) in seen:  # a shared buffer: checked once
            continue
        seen.add(id(got))
        differ = _bytes(got) != _bytes(want)
        if differ.any():
            out.append(
                Mismatch(
                    spec.key,
                    _rank(),
                    f"{what}: the {kind} buffer of {list(got.shape)} holding it differs in "
                    f"{int(differ.sum())} byte(s)",
                )
            )
    return out


def save_views(
    backend: Backend, case: SaveLoadCase, views: tuple[str, ...], path: str
) -> list[Mismatch]:
    """Save the case with every tensor held as the non-contiguous view ``views[i]``.

    Returns the changes the save made to the sources (a save must not modify them).
    """
    fills = _encoded(case)
    buffers, values = _view_buffers(case, views, fills)
    for spec, value, fill in zip(case.tensors, values, fills):  # the test's own precondition
        assert torch.equal(_bytes(value), _bytes(fill)), f"view of {spec.key!r} was built wrong"
    tensors = {spec.key: value for spec, value in zip(case.tensors, values)}
    backend.run_save(_with_objects(case, tensors, blank=False), path)
    return _buffer_changes(case, views, buffers, fills, "the save modified its source")


def load_into_views(
    backend: Backend, case: SaveLoadCase, views: tuple[str, ...], path: str
) -> list[Mismatch]:
    """Load into zeroed non-contiguous views; every view must hold the encoded values and
    every buffer element outside the views must still be zero."""
    blanks = [_zeros(s.shape, getattr(torch, s.dtype)) for s in case.tensors]
    buffers, values = _view_buffers(case, views, blanks)
    tensors = {spec.key: value for spec, value in zip(case.tensors, values)}
    state = _with_objects(case, tensors, blank=True)
    backend.run_load(state, path)
    loaded_tensors = state["model"] if case.nested else state
    out = []
    for spec, value in zip(case.tensors, values):
        if loaded_tensors.get(spec.key) is not value:
            out.append(
                Mismatch(spec.key, _rank(), "the load replaced the destination tensor object")
            )
    out += _buffer_changes(case, views, buffers, _encoded(case), "after the load")
    # tensor values are covered by the buffers; objects are compared as usual
    return out + [m for m in compare_state(case, state) if m.detail == "object differs"]


# --- nested containers -----------------------------------------------------------------------


def _build_tree(case: TreeCase, *, blank: bool, tensors: dict | None = None) -> Any:
    """The tree's state; ``tensors`` (if given) receives each tensor value by its path."""
    made: dict[Leaf, Any] = {}

    def build(path, node):
        if isinstance(node, Mapping):
            return {k: build(path + (k,), v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(path + (i,), v) for i, v in enumerate(node)]
        if isinstance(node, Obj):
            return NOT_LOADED if blank else copy.deepcopy(node.value)
        if not (case.tie and node in made):
            made[node] = tensor_value(node.spec, node.layout, blank=blank)
        if tensors is not None:
            tensors[path] = made[node]
        return made[node]

    return build((), case.tree)


def _compare_tree(case: TreeCase, state: Any, tensors: dict | None = None) -> list[Mismatch]:
    """Every difference of ``state`` from the tree's values; with ``tensors`` (path ->
    destination tensor before the load), also every tensor the load replaced instead of
    filling in place."""
    rank = _rank()
    out: list[Mismatch] = []

    def name(path) -> str:
        return ".".join(map(str, path)) if path else "<root>"

    def visit(path, node, got):
        if isinstance(node, Mapping):
            if not isinstance(got, Mapping):
                out.append(Mismatch(name(path), rank, f"a {type(got).__name__}, expected a dict"))
                return
            extra = [k for k in got if k not in node]
            if extra:
                out.append(
                    Mismatch(
                        name(path), rank, f"keys appeared that the state did not have: {extra!r}"
                    )
                )
            for k, v in node.items():
                if k not in got:
                    out.append(Mismatch(name(path + (k,)), rank, "key disappeared from the state"))
                else:
                    visit(path + (k,), v, got[k])
            return
        if isinstance(node, list):
            if not isinstance(got, list) or len(got) != len(node):
                out.append(
                    Mismatch(name(path), rank, f"{got!r:.80}, expected a list of {len(node)}")
                )
                return
            for i, v in enumerate(node):
                visit(path + (i,), v, got[i])
            return
        if isinstance(node, Obj):
            if not same_object(got, node.value):
                out.append(
                    Mismatch(name(path), rank, "object differs", expected=node.value, actual=got)
                )
            return
        key = name(path)
        if tensors is not None and got is not tensors[path]:
            out.append(
                Mismatch(
                    key, rank, "the load replaced the destination tensor object (not in place)"
                )
            )
            return
        spec = replace(node.spec, key=key)
        one = SaveLoadCase((spec,), (node.layout,), (node.layout,))
        out.extend(compare_state(one, {key: got}))

    visit((), case.tree, state)
    return out


def save_tree(backend: Backend, case: TreeCase, path: str) -> None:
    """Save the tree's state with the backend on this rank."""
    backend.run_save(_build_tree(case, blank=False), path)


def save_tree_outcome(backend: Backend, case: TreeCase, path: str) -> dict[str, Any]:
    """Save the tree's state; report whether (and with what) the save raised on this rank."""
    return call_outcome(lambda: backend.run_save(_build_tree(case, blank=False), path), limit=600)


def save_divergent_replica(
    backend: Backend, case: SaveLoadCase, path: str, divergent_rank: int
) -> dict[str, Any]:
    """Save the case with the replicated tensors of ``divergent_rank`` holding other values.

    Returns whether (and with what) the save raised on this rank.
    """
    state = build_state(case, for_load=False)
    if _rank() == divergent_rank:
        for spec, layout in zip(case.tensors, case.save_layouts):
            other = encoded_tensor(spec.shape, spec.dtype, spec.salt + 500)
            value = state[spec.key]
            local = value._local_tensor if layout.kind == "dtensor" else value
            local.copy_(other)  # replicated layouts only: the local tensor is the whole tensor
    return call_outcome(lambda: backend.run_save(state, path), limit=600)


def load_tree(backend: Backend, case: TreeCase, path: str) -> list[Mismatch]:
    """Load into a blank tree (same containers, zero tensors, None objects) and compare;
    tensors must be filled in place."""
    tensors: dict = {}
    state = _build_tree(case, blank=True, tensors=tensors)
    backend.run_load(state, path)
    return _compare_tree(case, state, tensors)


# --- loads that must fail ---------------------------------------------------------------------


def _snapshot(case: SaveLoadCase, state: dict[str, Any]) -> dict[str, list[Any]]:
    """Each destination tensor's bytes, piece by piece; a value that is no tensor any more (a
    load that replaced it) is itself, so that it differs from the tensor's snapshot."""
    tensors = state["model"] if case.nested else state
    return {
        spec.key: (
            [_bytes(t).clone() for t in local_pieces(tensors[spec.key], layout)]
            if isinstance(tensors.get(spec.key), torch.Tensor)
            else [tensors.get(spec.key)]
        )
        for spec, layout in zip(case.tensors, case.load_layouts)
    }


def load_expecting_error(
    backend: Backend, dest: SaveLoadCase, control_case: SaveLoadCase, path: str
) -> dict[str, Any]:
    """Load the checkpoint into ``dest``'s blank state, which does not match it; report.

    Returns ``raised``, ``type``, ``text`` (the error), ``changed`` (destination keys
    whose tensors the load modified), ``loaded`` (when it did not raise: how the
    destination differs from the saved values) and ``control`` (mismatches, or the error,
    of a load of the same checkpoint into ``control_case``'s matching state, which must work).
    """
    state = blank_state(dest)
    before = _snapshot(dest, state)
    outcome = call_outcome(lambda: backend.run_load(state, path), limit=3000)
    after = _snapshot(dest, state)
    changed = [
        key
        for key, pieces in before.items()
        if len(pieces) != len(after[key])
        or any(
            not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b))
            for a, b in zip(pieces, after[key])
        )
    ]
    result: dict[str, Any] = {"rank": _rank(), "text": "", "type": None, **outcome}
    result["changed"] = changed
    if not outcome["raised"]:
        held = state["model"] if dest.nested else state
        replaced = [
            f"key {s.key!r} holds a {type(held.get(s.key)).__name__} now, not a tensor"
            for s in dest.tensors
            if not isinstance(held.get(s.key), torch.Tensor)
        ]
        result["loaded"] = replaced or [str(m) for m in compare_state(dest, state)][:5]
    good = build_state(control_case, for_load=True)
    control = call_outcome(lambda: backend.run_load(good, path), limit=1500)
    result["control"] = (
        [f"raised {control['type']}: {control['text']}"]
        if control["raised"]
        else [str(m) for m in compare_state(control_case, good)][:5]
    )
    return result


def off_split_dtensor(backend: Backend, step: str, path: str) -> dict[str, Any]:
    """A float64 DTensor of global shape (4,) on ``Shard(0)`` over 2 ranks whose local tensors
    hold 3 rows each, not the 2 its placements give (``DTensor.from_local(..., shape=(4,),
    run_check=False)`` accepts it): saved (``step`` "save"), or loaded into from a checkpoint of
    the right split (``step`` "load").

    Returns the ``call_outcome`` of that step, ``changed`` (a load wrote the off-split
    destination) and ``control``: mismatches, or the error, of a save and a load of the same
    key held as its placements give, which must work.
    """
    from ckptconf.harness.world import rank_device
    from torch.distributed.tensor import DTensor, Shard

    from ...kit.cases import Layout
    from ...kit.values import layout_mesh

    rank = _rank()
    mesh = layout_mesh(Layout("dtensor", (2,), ("S0",)))
    full = encoded_tensor((4,), "float64", salt=4000).to(rank_device())

    def off_split(values: torch.Tensor):
        local = values[rank : rank + 3].clone()  # rows 0-2 on rank 0, 1-3 on rank 1
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=(4,), stride=(1,))

    def right_split(values: torch.Tensor):
        return DTensor.from_local(values[2 * rank : 2 * rank + 2].clone(), mesh, [Shard(0)])

    result: dict[str, Any] = {"rank": rank, "changed": False}
    if step == "save":
        outcome = call_outcome(lambda: backend.run_save({"w": off_split(full)}, path + "-off"))
    else:
        backend.run_save({"w": right_split(full)}, path + "-off")
        dest = off_split(torch.full_like(full, -1.0))
        outcome = call_outcome(lambda: backend.run_load({"w": dest}, path + "-off"))
        result["changed"] = not bool((dest.to_local() == -1.0).all())
    result.update(outcome)
    control = call_outcome(lambda: backend.run_save({"w": right_split(full)}, path), limit=1500)
    if control["raised"]:
        result["control"] = [f"save raised {control['type']}: {control['text']}"]
        return result
    blank = right_split(torch.full_like(full, -1.0))
    control = call_outcome(lambda: backend.run_load({"w": blank}, path), limit=1500)
    expected = full[2 * rank : 2 * rank + 2]
    if control["raised"]:
        result["control"] = [f"load raised {control['type']}: {control['text']}"]
    elif not torch.equal(blank.to_local(), expected):
        result["control"] = [f"loaded {blank.to_local().tolist()}, expected {expected.tolist()}"]
    else:
        result["control"] = []
    return result


# --- Stateful values and tensor subclasses ----------------------------------------------------


class RankState:
    """A Stateful value (DCP's protocol) as an ``AppState`` is: a tensor, a step, and loader
    state under a key of this rank's own (``loader_rank<r>``); counts its loads."""

    def __init__(self, rank: int, *, blank: bool):
        make = blank_tensor if blank else encoded_tensor
        self.rank, self.weight = rank, make((4,), "float64", 1)
        self.step, self.loader = (0, {"pos": -1}) if blank else (7, {"pos": 100 + rank})
        self.loads: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "step": self.step, f"loader_rank{self.rank}": self.loader}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loads.append(state_dict)
        self.weight.copy_(state_dict["weight"])
        self.step, self.loader = state_dict["step"], state_dict[f"loader_rank{self.rank}"]


def _stateful_state(nested: bool, *, blank: bool) -> tuple[dict[str, Any], RankState]:
    value = RankState(_rank(), blank=blank)
    return (
        {"trainer": {"app": value, "n": 0 if blank else 3}} if nested else {"app": value}
    ), value


FAILING_STATE = "rank 1's loader lost its state"
"""What :class:`FailingState` raises on rank 1."""


class FailingState(RankState):
    """A :class:`RankState` whose ``state_dict()`` raises on rank 1 only (a data loader that
    lost its state), as it may at a save or at a load."""

    def state_dict(self) -> dict[str, Any]:
        if self.rank == 1:
            raise RuntimeError(FAILING_STATE)
        return super().state_dict()


def failing_stateful_save(backend: Backend, path: str) -> None:
    """Save ``{'app': FailingState}``: must raise on every rank, rank 1 first."""
    backend.run_save({"app": FailingState(_rank(), blank=False)}, path)


def failing_stateful_load(backend: Backend, path: str) -> None:
    """Load :func:`stateful_save`'s checkpoint into ``{'app': FailingState}``: must raise on
    every rank."""
    backend.run_load({"app": FailingState(_rank(), blank=True)}, path)


def stateful_save(backend: Backend, path: str, nested: bool) -> None:
    """Save a state holding a :class:`RankState` (at the top level or ``nested`` in a dict)."""
    backend.run_save(_stateful_state(nested, blank=False)[0], path)


def stateful_load(backend: Backend, path: str, nested: bool) -> list[Mismatch]:
    """Load :func:`stateful_save`'s checkpoint into a blank state: the same object stays in the
    dict, its ``load_state_dict`` ran once with the saved values, the values beside it loaded."""
    state, value = _stateful_state(nested, blank=True)
    backend.run_load(state, path)
    rank, key = _rank(), "trainer.app" if nested else "app"
    held = state["trainer"]["app"] if nested else state["app"]
    if held is not value:
        return [
            Mismatch(
                key, rank, f"the load replaced the Stateful value with a {type(held).__name__}"
            )
        ]
    out = []
    if len(value.loads) != 1:
        out.append(
            Mismatch(key, rank, f"load_state_dict ran {len(value.loads)} times, expected once")
        )
    out += object_mismatch(f"{key}.step", rank, value.step, 7)
    out += object_mismatch(f"{key}.loader_rank{rank}", rank, value.loader, {"pos": 100 + rank})
    want = encoded_tensor((4,), "float64", 1)
    if not torch.equal(value.weight, want):
        out.append(
            Mismatch(
                f"{key}.weight",
                rank,
                "tensor values differ",
                expected=want.tolist(),
                actual=value.weight.tolist(),
            )
        )
    if nested:
        out += object_mismatch("trainer.n", rank, state["trainer"]["n"], 3)
    return out


class SubclassedTensor(torch.Tensor):
    """A plain ``torch.Tensor`` subclass, as float8 and torchao types are."""


def _subclass_state(nested: bool, *, blank: bool) -> dict[str, Any]:
    make = blank_tensor if blank else encoded_tensor
    w = make((2, 3), "float32", 1).as_subclass(SubclassedTensor)
    b = make((3,), "float64", 1000).as_subclass(SubclassedTensor)
    return {"layer": {"w": w, "b": b}} if nested else {"w": w, "b": b}


def subclass_save(backend: Backend, path: str, nested: bool) -> None:
    """Save tensors of a :class:`SubclassedTensor` (flat, or ``nested`` in a dict)."""
    backend.run_save(_subclass_state(nested, blank=False), path)


def subclass_load(backend: Backend, path: str, nested: bool) -> list[Mismatch]:
    """Load :func:`subclass_save`'s checkpoint into blank subclass tensors: values loaded in
    place, the type kept."""
    dest = _subclass_state(nested, blank=True)
    holders = dest["layer"] if nested else dest
    before = dict(holders)
    backend.run_load(dest, path)
    want = _subclass_state(nested, blank=False)
    want, rank, out = (want["layer"] if nested else want), _rank(), []
    for name, tensor in holders.items():
        key = f"layer.{name}" if nested else name
        if tensor is not before[name] or type(tensor) is not SubclassedTensor:
            out.append(
                Mismatch(
                    key, rank, f"the load replaced the destination with a {type(tensor).__name__}"
                )
            )
            continue
        got, expected = tensor.as_subclass(torch.Tensor), want[name].as_subclass(torch.Tensor)
        if not torch.equal(got, expected):
            out.append(
                Mismatch(
                    key,
                    rank,
                    "tensor values differ",
                    expected=expected.tolist(),
                    actual=got.tolist(),
                )
            )
    return out
