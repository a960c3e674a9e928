"""What the ranks of the crash-states suite run: a save under strace, and loads of crash states."""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Any

import torch.distributed as dist
from ckptconf.harness.crash.recording import RecorderUnavailable, recording

from ...backend import Backend
from ...kit.cases import SaveLoadCase
from ...kit.values import blank_state, build_state, call_outcome, compare_state

__all__ = ["load_states", "save_recorded"]


def _everyone(value: Any) -> list[Any]:
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def save_recorded(backend: Backend, case: SaveLoadCase, path: str, traces: str) -> dict[str, Any]:
    """Save ``case`` while strace records this rank's file-system calls into
    ``traces/rank<r>/``; this rank's working folder, or why nothing was recorded.

    Every rank attaches its recorder before any rank saves, and if one could not, no rank
    saves (a save on some ranks only would hang).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    folder = os.path.join(traces, f"rank{rank}")
    os.makedirs(folder, exist_ok=True)
    state = build_state(case, for_load=False)
    with ExitStack() as stack:
        try:
            stack.enter_context(recording(os.path.join(folder, "trace")))
            attached = None
        except RecorderUnavailable as exc:
            attached = str(exc)
        problems = [p for p in _everyone(attached) if p is not None]
        if problems:
            return {"unavailable": problems[0]}
        backend.run_save(state, path)
    return {"cwd": os.getcwd()}


def _load(backend: Backend, case: SaveLoadCase, path: str) -> tuple[bool, str]:
    """Whether the checkpoint at ``path`` loads into ``case``'s layout with exactly its values;
    if not, what happened instead."""
    state = blank_state(case)
    outcome = call_outcome(lambda: backend.run_load(state, path), limit=1500)
    if outcome["raised"]:
        # the last line names the cause (DCP's CheckpointException carries whole tracebacks)
        lines = [line for line in outcome["text"].strip().splitlines() if line.strip()]
        return False, f"raised {outcome['type']}: {lines[-1].strip() if lines else ''}"
    wrong = compare_state(case, state)
    if wrong:
        return False, f"loaded {len(wrong)} wrong value(s) without an error, first: {wrong[0]}"
    return True, ""


def load_states(
    backend: Backend, old: SaveLoadCase | None, new: SaveLoadCase, paths: list[str]
) -> list[dict[str, Any]]:
    """Load each crash state at ``paths`` as ``new`` (B) and, if given, as ``old`` (A): per state,
    ``holds`` "B", "A", or "neither", with what each load did (``as_b``, ``as_a``)."""
    out = []
    for path in paths:
        is_b, as_b = _load(backend, new, path)
        is_a, as_a = _load(backend, old, path) if old is not None else (False, "")
        holds = "B" if is_b else "A" if is_a else "neither"
        out.append({"holds": holds, "as_b": as_b, "as_a": as_a, "raised": "raised" in as_b})
    return out
