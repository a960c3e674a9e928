"""What the ranks of the faults suite run: saves and loads through faulty storage, and kills."""

from __future__ import annotations

from typing import Any

from ...backend import Backend
from ...kit.cases import SaveLoadCase
from ...kit.injection import FaultyStorageReader, FaultyStorageWriter
from ...kit.values import blank_state, build_state, call_outcome, compare_state

__all__ = ["load_expecting_failure", "load_with_fault", "save_killed", "save_with_fault"]


def save_with_fault(
    backend: Backend, case: SaveLoadCase, path: str, hook: str, fault_rank: int
) -> dict[str, Any]:
    """Save through a writer failing at ``hook`` on ``fault_rank``: what this rank saw, and
    whether the fault was injected here."""
    writer = FaultyStorageWriter(backend.storage_writer(path), hook=hook, rank=fault_rank)
    state = build_state(case, for_load=False)
    outcome = call_outcome(lambda: backend.run_save(state, path, storage_writer=writer))
    return {**outcome, "fired": writer.fired}


def load_with_fault(
    backend: Backend, case: SaveLoadCase, path: str, hook: str, fault_rank: int
) -> dict[str, Any]:
    """Load through a reader failing at ``hook`` on ``fault_rank``: what this rank saw, and
    whether the fault was injected here."""
    reader = FaultyStorageReader(backend.storage_reader(path), hook=hook, rank=fault_rank)
    state = blank_state(case)
    outcome = call_outcome(lambda: backend.run_load(state, path, storage_reader=reader))
    return {**outcome, "fired": reader.fired}


def load_expecting_failure(backend: Backend, case: SaveLoadCase, path: str) -> dict[str, Any]:
    """Load a path where no complete checkpoint should be: whether it raised, and if not,
    how the loaded values differ from the case."""
    state = blank_state(case)
    outcome = call_outcome(lambda: backend.run_load(state, path))
    if not outcome["raised"]:
        outcome["mismatches"] = [str(m) for m in compare_state(case, state)][:5]
    return outcome


def save_killed(backend: Backend, case: SaveLoadCase, path: str, rank: int, point: str) -> None:
    """Save through a writer that SIGKILLs ``rank`` at ``point`` (run on fresh ranks)."""
    from ckptconf.harness.faults import KillingWriter

    writer = KillingWriter(backend.storage_writer(path), rank=rank, point=point)
    backend.run_save(build_state(case, for_load=False), path, storage_writer=writer)
