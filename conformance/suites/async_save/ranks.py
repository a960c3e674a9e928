"""What the ranks of the async_save suite run: start a save, change the state at once, wait;
or hold a save once its data is written and load meanwhile."""

from __future__ import annotations

import copy
import threading
from typing import Any

import torch
import torch.distributed as dist
from ckptconf.harness.forwarding import ForwardingStorageWriter, staging_like
from ckptconf.harness.world import per_group

from ...backend import Backend
from ...kit.cases import SaveLoadCase, resalted
from ...kit.failures import exception_text
from ...kit.values import blank_state, build_state, compare_state, load_case

__all__ = [
    "CHANGED_OBJECT",
    "HeldStorageWriter",
    "async_save_then_clobber",
    "load_during_async_save",
]

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


class HeldStorageWriter(ForwardingStorageWriter):
    """Forwards to ``inner``; once ``write_data``'s future is done (the new data written), sets
    ``written`` and holds the save there (before ``finish``) until ``released`` is set, at most
    ``limit`` seconds."""

    def __init__(self, inner, limit: float):
        super().__init__(inner)
        self.written, self.released, self.limit = threading.Event(), threading.Event(), limit

    def write_data(self, plan, planner):
        future = super().write_data(plan, planner)
        future.wait()
        self.written.set()
        self.released.wait(self.limit)
        return future


_SAVE_GROUPS: dict[int, Any] = {}


def _background_group():
    """A second gloo group of every rank, for the async save's collectives while the load uses
    the default group (one per process group; collective the first time)."""
    if not dist.is_initialized():
        return None
    world = id(dist.group.WORLD)
    groups = per_group(_SAVE_GROUPS)
    if world not in groups:
        groups[world] = dist.new_group(backend="gloo")
    return groups[world]


def load_during_async_save(
    backend: Backend, case: SaveLoadCase, path: str, limit: float
) -> dict[str, Any]:
    """Save the case; async-save its resalted state (same keys and shapes, other values) to the
    same path, held once its data is written; load meanwhile, release, wait; load again.

    Returns ``reached`` (whether the save got to the hold within ``limit`` seconds),
    ``during`` (``{"mismatches": [...]}`` of the load meanwhile against the first state, or
    ``{"error": text}``) and ``after`` (mismatches of the last load against the newer state).
    """
    group = _background_group()
    backend.run_save(build_state(case, for_load=False), path)
    newer = resalted(case)
    inner = backend.storage_writer(path)
    writer = staging_like(HeldStorageWriter, inner)(inner, limit)
    future = backend.run_async_save(
        build_state(newer, for_load=False), path, process_group=group, storage_writer=writer
    )
    try:
        reached = writer.written.wait(limit)
        state = blank_state(case)
        try:
            backend.run_load(state, path)
            during: dict[str, Any] = {"mismatches": compare_state(case, state)}
        except Exception as exc:  # noqa: BLE001 - an error is an allowed outcome here
            during = {"error": exception_text(exc)}
    finally:
        writer.released.set()
    future.result()
    if dist.is_initialized():
        dist.barrier()
    return {"reached": reached, "during": during, "after": load_case(backend, newer, path)}
