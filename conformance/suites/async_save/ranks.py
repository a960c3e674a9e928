"""What the ranks of the async_save suite run: start a save, change the state at once, wait."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist

from ...backend import Backend
from ...kit.cases import SaveLoadCase
from ...kit.values import build_state, compare_state

__all__ = ["CHANGED_OBJECT", "async_save_then_clobber"]

CHANGED_OBJECT = ("changed after async_save returned",)
"""What every object of the state is replaced by once ``async_save`` has returned."""


def _clobber(t: torch.Tensor) -> None:
    """Change every element of ``t`` in place (``x -> -x - 1``, ``not x`` for bool)."""
    if t.dtype == torch.bool:
        t.logical_not_()
    else:
        t.neg_().sub_(1)


def _state(case: SaveLoadCase) -> dict[str, Any]:
    """The case's state (as kit.values.build_state), with objects deep-copied: the test changes
    them in place, and the case's own values must stay the expected ones."""
    state = build_state(case, for_load=False)
    objects = {key: copy.deepcopy(value) for key, value in case.objects}
    if case.nested:
        return {**state, "extra": objects} if objects else state
    return {**state, **objects}


def async_save_then_clobber(backend: Backend, case: SaveLoadCase, path: str) -> dict[str, Any]:
    """Start an async save, then change every tensor in place and every object, then wait.

    Requires ``case.load_layouts == case.save_layouts`` (the state is compared with the
    case to check that the test changed everything). Returns how many tensor elements
    and objects were changed before the wait.
    """
    state = _state(case)
    future = backend.run_async_save(state, path)
    # at once, before waiting: every element of every local piece, every object
    tensors = state["model"] if case.nested else state
    objects = state.get("extra", {}) if case.nested else state
    local_elements: dict[str, int] = {}
    for spec, layout in zip(case.tensors, case.save_layouts):
        for piece in _actual_local_views(tensors[spec.key], layout):
            _clobber(piece)
            local_elements[spec.key] = local_elements.get(spec.key, 0) + piece.numel()
    for key, _ in case.objects:
        value = objects[key]
        if isinstance(value, list):  # mutable: change it in place too
            value.clear()
            value.append(CHANGED_OBJECT)
        objects[key] = CHANGED_OBJECT
    # the test's own precondition: the state now differs from the case everywhere it can
    differing = {m.key for m in compare_state(case, state)}
    unchanged = [key for key, n in local_elements.items() if n and key not in differing] + [
        key for key, _ in case.objects if key not in differing
    ]
    assert not unchanged, f"the test did not change {unchanged!r} after async_save returned"
    future.result()
    if dist.is_initialized():
        dist.barrier()
    return {"changed_elements": sum(local_elements.values()), "changed_objects": len(case.objects)}


def _actual_local_views(value: Any, layout) -> list[torch.Tensor]:
    """The local tensors of a value, as aliases (in-place changes reach the value); the
    same pieces, in the same order, as ``kit.values.local_pieces``."""
    if layout.kind == "dtensor":
        return [value._local_tensor]
    if layout.kind == "sharded_tensor":
        return [s.tensor for s in value.local_shards()]
    return [value]
