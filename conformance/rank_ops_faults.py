"""Rank-side steps of the faulty-storage suite."""

from __future__ import annotations

from typing import Any

from .backend import BackendRef
from .cases import SaveLoadCase
from .faults import FaultyStorageReader, FaultyStorageWriter
from .rank_ops import blank_state, build_state, compare_state

__all__ = [
    "save_with_fault",
    "load_with_fault",
    "load_and_compare",
    "load_expecting_failure",
    "save_killed",
]


def _outcome(fn) -> dict[str, Any]:
    try:
        fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        return {"raised": True, "type": type(exc).__name__, "text": str(exc)[-6000:]}
    return {"raised": False}


def save_with_fault(
    backend_ref: BackendRef, case: SaveLoadCase, path: str, hook: str, fault_rank: int
) -> dict:
    """Save through a writer failing at ``hook`` on ``fault_rank``; report what this rank saw."""
    backend = backend_ref.resolve()
    writer = FaultyStorageWriter(backend.storage_writer(path), hook=hook, rank=fault_rank)
    state = build_state(case, for_load=False)
    return _outcome(lambda: backend.run_save(state, path, storage_writer=writer))


def load_with_fault(
    backend_ref: BackendRef, case: SaveLoadCase, path: str, hook: str, fault_rank: int
) -> dict:
    """Load through a reader failing at ``hook`` on ``fault_rank``; report what this rank saw."""
    backend = backend_ref.resolve()
    reader = FaultyStorageReader(backend.storage_reader(path), hook=hook, rank=fault_rank)
    state = blank_state(case)
    return _outcome(lambda: backend.run_load(state, path, storage_reader=reader))


def load_and_compare(backend_ref: BackendRef, case: SaveLoadCase, path: str) -> list:
    """Load normally and return every mismatch with the case's values."""
    state = blank_state(case)
    backend_ref.resolve().run_load(state, path)
    return compare_state(case, state)


def load_expecting_failure(backend_ref: BackendRef, case: SaveLoadCase, path: str) -> dict:
    """Load a path where no complete checkpoint should be; report whether it raised."""
    state = blank_state(case)
    outcome = _outcome(lambda: backend_ref.resolve().run_load(state, path))
    if not outcome["raised"]:
        outcome["mismatches"] = [str(m) for m in compare_state(case, state)][:5]
    return outcome


def save_killed(
    backend_ref: BackendRef, case: SaveLoadCase, path: str, rank: int, point: str
) -> None:
    """Save through a writer that SIGKILLs ``rank`` at ``point`` (run in fresh processes)."""
    from ckptconf.harness.faults import KillingWriter

    backend = backend_ref.resolve()
    writer = KillingWriter(backend.storage_writer(path), rank=rank, point=point)
    backend.run_save(build_state(case, for_load=False), path, storage_writer=writer)
