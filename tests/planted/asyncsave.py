"""Planted bugs in async save: what is staged, and when the returned future resolves."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemWriter
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.flatten import flatten_state_dict, set_by_path
from ckptconf.reference.staging import stage_state_dict
from ckptconf.reference.state_values import is_tensor_value

from ._common import VerifiedSavePlanner, planted_backend

__all__ = [
    "async_reads_live_tensors",
    "async_future_resolves_before_write",
    "async_objects_not_copied",
]

_executors: dict[str, ThreadPoolExecutor] = {}


def _executor(name: str) -> ThreadPoolExecutor:
    if name not in _executors:
        _executors[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"planted-{name}")
    return _executors[name]


def _save(state_dict: dict[str, Any], path: str, process_group) -> Any:
    return reference_driver.save(
        state_dict,
        process_group=process_group,
        planner=VerifiedSavePlanner(),
        storage_writer=FileSystemWriter(path),
    )


# --- async save reading live tensors -------------------------------------------------------------


def _async_save_live(state_dict: dict[str, Any], path: str, *, process_group=None) -> Future:
    """The mistake: the background save gets the caller's live state dict, not a staged copy."""
    return _executor("live").submit(_save, state_dict, path, process_group)


def async_reads_live_tensors() -> Backend:
    """async_save returns at once and saves the live tensors later: changes made after the call are saved."""
    return planted_backend(
        "async_reads_live_tensors",
        "async_save saves the caller's live tensors from a background thread (no staging copy)",
        async_save=_async_save_live,
    )


# --- the future resolves before the data is written ----------------------------------------------

_pending_uploads: list[tuple[dict[str, Any], str, Any]] = []


def flush_uploads() -> None:
    """Write every queued upload, oldest first (what the buggy backend's caller never does)."""
    while _pending_uploads:
        _save(*_pending_uploads.pop(0))


def _async_save_early_future(
    state_dict: dict[str, Any], path: str, *, process_group=None
) -> Future:
    """The mistake: returns the staging future; the upload waits in a batch until a flush."""
    # Queued, not threaded: the upload happens at flush_uploads() and never on its own, so
    # whether a check sees the data does not depend on timing.
    _pending_uploads.append((stage_state_dict(state_dict), path, process_group))
    staging_done: Future = Future()
    staging_done.set_result(None)
    return staging_done


def async_future_resolves_before_write() -> Backend:
    """async_save returns the staging future: it resolves before the data (or metadata) is written."""
    return planted_backend(
        "async_future_resolves_before_write",
        "async_save returns the staging future, which resolves before the upload has written anything",
        async_save=_async_save_early_future,
    )


# --- objects kept by reference -------------------------------------------------------------------


def stage_tensors_only(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The mistake: tensors are copied, but objects are kept by reference (no deep copy)."""
    staged = stage_state_dict(state_dict)
    flat, paths = flatten_state_dict(state_dict)
    for key, value in flat.items():
        if not is_tensor_value(value):
            set_by_path(staged, paths[key], value)
    return staged


def _async_save_objects_by_reference(
    state_dict: dict[str, Any], path: str, *, process_group=None
) -> Future:
    return _executor("objects").submit(_save, stage_tensors_only(state_dict), path, process_group)


def async_objects_not_copied() -> Backend:
    """async_save copies tensors but keeps objects by reference: objects changed in place after the call are saved."""
    return planted_backend(
        "async_objects_not_copied",
        "async_save stages tensors but keeps objects by reference: in-place changes after the call leak in",
        async_save=_async_save_objects_by_reference,
    )
