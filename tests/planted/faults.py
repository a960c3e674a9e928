"""Planted bugs in failure handling: errors lost, hidden or reported on some ranks only, and
commits that are not atomic."""

from __future__ import annotations

import dataclasses
import json

import torch.distributed as dist
from ckptconf.conformance import Backend
from ckptconf.harness.forwarding import ForwardingStorageReader, ForwardingStorageWriter
from ckptconf.reference import CheckpointError, FileSystemWriter
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.filesystem import METADATA_FILE, DirectoryStore
from ckptconf.reference.metadata_format import FORMAT_NAME
from ckptconf.reference.storage import ReferenceStorageWriter

from . import _common
from ._common import completed, log, planted_backend

__all__ = [
    "exception_swallowed_on_non_coordinator",
    "failed_write_future_ignored",
    "error_raised_only_on_coordinator",
    "hang_on_non_coordinator_after_failure",
    "metadata_before_data_no_atomic_rename",
    "data_overwritten_in_place",
]


WriterProxy = ForwardingStorageWriter
ReaderProxy = ForwardingStorageReader


# --- exception swallowed on a non-coordinator rank -----------------------------------------------


def _logged_on_workers(hook: str, call, fallback):
    """The mistake: on ranks other than the coordinator, a storage error is logged, not raised."""
    try:
        return call()
    except Exception as exc:
        if _common.current_rank() == 0:
            raise
        log.warning(
            "storage %s failed on a worker rank (the coordinator reports errors): %s", hook, exc
        )
        return fallback


class WorkerErrorsLoggedWriter(WriterProxy):
    """Raises storage errors on the coordinator only; other ranks log them and go on."""

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        _logged_on_workers(
            "set_up",
            lambda: super(WorkerErrorsLoggedWriter, self).set_up_storage_writer(
                is_coordinator, *args, **kwargs
            ),
            None,
        )

    def prepare_local_plan(self, plan):
        return _logged_on_workers(
            "prepare_local_plan", lambda: self.inner.prepare_local_plan(plan), plan
        )

    def write_data(self, plan, planner):
        return _logged_on_workers(
            "write_data", lambda: self.inner.write_data(plan, planner), completed([])
        )


class WorkerErrorsLoggedReader(ReaderProxy):
    """Raises storage errors on the coordinator only; other ranks log them and go on."""

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs):
        _logged_on_workers(
            "set_up",
            lambda: super(WorkerErrorsLoggedReader, self).set_up_storage_reader(
                metadata, is_coordinator, *args, **kwargs
            ),
            None,
        )

    def prepare_local_plan(self, plan):
        return _logged_on_workers(
            "prepare_local_plan", lambda: self.inner.prepare_local_plan(plan), plan
        )

    def read_data(self, plan, planner):
        return _logged_on_workers(
            "read_data", lambda: self.inner.read_data(plan, planner), completed(None)
        )


def _save_logging_worker_errors(state_dict, *, storage_writer, **kwargs):
    return reference_driver.save(
        state_dict, storage_writer=WorkerErrorsLoggedWriter(storage_writer), **kwargs
    )


def _load_logging_worker_errors(state_dict, *, storage_reader, **kwargs):
    reference_driver.load(
        state_dict, storage_reader=WorkerErrorsLoggedReader(storage_reader), **kwargs
    )


def exception_swallowed_on_non_coordinator() -> Backend:
    """Storage errors on non-coordinator ranks are logged and swallowed by the drivers."""
    return planted_backend(
        "exception_swallowed_on_non_coordinator",
        "storage exceptions on non-coordinator ranks are logged and swallowed ('rank 0 reports')",
        save_driver=_save_logging_worker_errors,
        load_driver=_load_logging_worker_errors,
    )


# --- failed write future ignored -----------------------------------------------------------------


class FailedFutureIgnoredWriter(WriterProxy):
    """Waits on the write future but treats a failed one as "nothing written"."""

    def write_data(self, plan, planner):
        future = self.inner.write_data(plan, planner)
        try:
            future.wait()
        except Exception as exc:
            log.warning("write future failed, continuing with no results: %s", exc)
            return completed([])
        return future


def _save_ignoring_failed_futures(state_dict, *, storage_writer, **kwargs):
    return reference_driver.save(
        state_dict, storage_writer=FailedFutureIgnoredWriter(storage_writer), **kwargs
    )


def failed_write_future_ignored() -> Backend:
    """A write future that fails is taken as an empty result: the error is never reported."""
    return planted_backend(
        "failed_write_future_ignored",
        "failed write_data future ignored: its error is dropped and the save goes on with no results",
        save_driver=_save_ignoring_failed_futures,
    )


# --- error raised only on the coordinator --------------------------------------------------------


def _coordinator_raises(call):
    try:
        return call()
    except CheckpointError as exc:
        if _common.current_rank() == 0:
            raise
        log.error("checkpoint failed (reported by the coordinator): %s", exc)
        return None


def _save_raising_on_coordinator(state_dict, **kwargs):
    return _coordinator_raises(lambda: reference_driver.save(state_dict, **kwargs))


def _load_raising_on_coordinator(state_dict, **kwargs):
    _coordinator_raises(lambda: reference_driver.load(state_dict, **kwargs))


def error_raised_only_on_coordinator() -> Backend:
    """A failed save or load raises on the coordinator; the other ranks log it and return normally."""
    return planted_backend(
        "error_raised_only_on_coordinator",
        "a failed save/load raises on the coordinator only; other ranks log and return normally",
        save_driver=_save_raising_on_coordinator,
        load_driver=_load_raising_on_coordinator,
    )


# --- hang on a non-coordinator after a failure ---------------------------------------------------


def _barrier_then_raise(call):
    try:
        return call()
    except CheckpointError:
        if dist.is_initialized() and _common.current_rank() != 0:
            # waits for the coordinator's cleanup barrier, which the coordinator skips when it raises
            dist.barrier()
        raise


def _save_hanging_on_workers(state_dict, **kwargs):
    return _barrier_then_raise(lambda: reference_driver.save(state_dict, **kwargs))


def _load_hanging_on_workers(state_dict, **kwargs):
    _barrier_then_raise(lambda: reference_driver.load(state_dict, **kwargs))


def hang_on_non_coordinator_after_failure() -> Backend:
    """After a failure, non-coordinator ranks wait at a barrier the coordinator never reaches."""
    return planted_backend(
        "hang_on_non_coordinator_after_failure",
        "after a failure non-coordinators wait at a cleanup barrier the raising coordinator skips: hang",
        save_driver=_save_hanging_on_workers,
        load_driver=_load_hanging_on_workers,
    )


# --- metadata written before data, no atomic rename ----------------------------------------------

IN_PROGRESS = json.dumps({"format": FORMAT_NAME, "state": "writing"}).encode()


class InPlaceMetadataStore(DirectoryStore):
    """Writes the metadata file in place (no temporary name, no rename)."""

    def commit_metadata(self, data: bytes) -> None:
        (self.path / METADATA_FILE).write_bytes(data)


class MetadataFirstWriter(ReferenceStorageWriter):
    """Marks the checkpoint "in progress" in its metadata file before writing data, in place."""

    def __init__(self, path):
        super().__init__(InPlaceMetadataStore(path))

    def prepare_global_plan(self, plans):
        plans = super().prepare_global_plan(plans)
        self.store.commit_metadata(IN_PROGRESS)
        return plans


def metadata_before_data_no_atomic_rename() -> Backend:
    """The metadata file is rewritten in place before the data: a failed save destroys the previous checkpoint."""
    return planted_backend(
        "metadata_before_data_no_atomic_rename",
        "metadata file rewritten in place before the data, no staging name and rename: "
        "a failed save leaves no loadable checkpoint",
        writer=MetadataFirstWriter,
    )


# --- data overwritten in place -------------------------------------------------------------------


class ReusedGenerationStore(DirectoryStore):
    """Lets a generation folder be created again."""

    def create_generation(self, generation: str) -> None:
        (self.path / generation).mkdir(parents=True, exist_ok=True)


class FixedGenerationWriter(FileSystemWriter):
    """Every save of a path writes the same data files (``gen-current/r<N>.bin``)."""

    def __init__(self, path):
        super().__init__(path)
        self.store = ReusedGenerationStore(path)

    def storage_meta(self):
        meta = super().storage_meta()
        self._save_id = "current"
        return dataclasses.replace(meta, save_id="current")


def data_overwritten_in_place() -> Backend:
    """A re-save overwrites the previous data files in place before committing its metadata."""
    return planted_backend(
        "data_overwritten_in_place",
        "data files reuse fixed names and are overwritten in place: a failed re-save corrupts the previous checkpoint",
        writer=FixedGenerationWriter,
    )
