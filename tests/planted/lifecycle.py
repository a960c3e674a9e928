"""Planted bugs that need two or more operations to show: what the lifecycle suite is for.

Each passes a single save and load: the defect shows only in a sequence (a load while a
save commits, a retry after a failed save, a re-save with other keys in the same process,
two async saves overlapping).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemReader, FileSystemWriter
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.filesystem import DirectoryStore
from ckptconf.reference.plan_cache import PlanCache
from ckptconf.reference.staging import StagingPool, stage_state_dict
from ckptconf.reference.stateful import saved_state
from ckptconf.reference.storage import ReferenceStorageReader
from torch.distributed.checkpoint.planner import SavePlan

from ._common import VerifiedSavePlanner, current_rank, planted_backend

__all__ = [
    "async_staging_buffers_reused",
    "racing_load_refused_on_one_rank",
    "lock_left_by_failed_save",
    "reads_newest_generation",
    "save_plan_cached",
    "plan_cache_ignores_dtype",
]


# --- a load reads the data of a save that committed after it read the metadata -------------------


class _NewestGenerationStore(DirectoryStore):
    """Reads each data file from the newest generation folder, not the one the metadata names."""

    def _newest(self, name: str) -> str:
        generation, rest = name.split("/", 1)
        folders = sorted(self.path.glob("gen-*"), key=lambda p: p.stat().st_mtime_ns)
        return f"{folders[-1].name}/{rest}" if folders else name

    def _read_file_into(self, name: str, start: int, buffer: memoryview) -> int:
        return super()._read_file_into(self._newest(name), start, buffer)

    def size(self, name: str) -> int:
        return super().size(self._newest(name))


class NewestGenerationReader(FileSystemReader):
    """A reader opening the data files again by the newest generation, checksums unverified."""

    def __init__(self, path, **_: Any):
        ReferenceStorageReader.__init__(self, _NewestGenerationStore(path), verify_checksums=False)


def reads_newest_generation() -> Backend:
    """A load reads its data from the newest save's files, not those its metadata names: a save committing meanwhile gives new bytes at old offsets."""
    return planted_backend(
        "reads_newest_generation",
        "reader resolves data files by the newest generation folder (and skips checksums)",
        reader=NewestGenerationReader,
    )


# --- one rank notices a newer save and raises, the others return ----------------------------------


def _keeping_writer(path) -> FileSystemWriter:
    return FileSystemWriter(path, keep_old_generations=True)


class _SeenReader(FileSystemReader):
    """Remembers the metadata document it read."""

    def read_metadata(self):
        self.seen = self.store.read_metadata()
        return super().read_metadata()


def _load_then_check_on_rank_1(
    state_dict, *, process_group=None, planner=None, storage_reader=None
):
    reference_driver.load(
        state_dict, process_group=process_group, planner=planner, storage_reader=storage_reader
    )
    reader = storage_reader
    while not hasattr(reader, "seen") and hasattr(reader, "inner"):
        reader = reader.inner
    # the mistake: a check after the load's last collective, on one rank, not shared
    if current_rank() == 1 and reader.store.read_metadata() != reader.seen:
        raise RuntimeError(f"{reader.store.location}: a newer save committed meanwhile")


def racing_load_refused_on_one_rank() -> Backend:
    """A load overtaken by a save is refused on rank 1 after the load's last collective, and returns on the other ranks: the job's ranks hold different states."""
    return planted_backend(
        "racing_load_refused_on_one_rank",
        "rank 1 checks for a newer save after loading and raises alone",
        writer=_keeping_writer,
        reader=_SeenReader,
        load_driver=_load_then_check_on_rank_1,
    )


# --- a lock file a failed save leaves in the checkpoint blocks every later save ---------------------


class LockingWriter(FileSystemWriter):
    """Takes ``<path>/save.lock`` for the save; drops it in ``finish`` only."""

    def _lock(self) -> Path:
        return Path(self.store.location) / "save.lock"

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        if is_coordinator:
            if self._lock().exists():
                raise RuntimeError(f"another save holds {self._lock()}")
            self._lock().parent.mkdir(parents=True, exist_ok=True)
            self._lock().write_text(str(os.getpid()))

    def finish(self, metadata, results) -> None:
        super().finish(metadata, results)
        self._lock().unlink(missing_ok=True)


def lock_left_by_failed_save() -> Backend:
    """A save takes a lock file in the checkpoint folder and drops it only when it succeeds: after one failed save, every retry fails."""
    return planted_backend(
        "lock_left_by_failed_save",
        "writer's lock file in the checkpoint folder is removed by finish() only",
        writer=LockingWriter,
    )


# --- a local save plan cached by the backend --------------------------------------------------------


class PlanCachingSavePlanner(VerifiedSavePlanner):
    """Reuses its backend's last local plan when the number of items is the same."""

    def __init__(self, plans: dict[int, SavePlan]):
        super().__init__()
        self.plans = plans

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        cached = self.plans.get(current_rank())
        if cached is not None and len(cached.items) == len(plan.items):
            return cached  # the mistake: the same count of items taken for the same items
        self.plans[current_rank()] = plan
        return plan


class _CachingPlanners:
    """The backend's planner factory; the plans it caches live as long as the backend."""

    def __init__(self):
        self.plans: dict[int, SavePlan] = {}

    def __call__(self) -> PlanCachingSavePlanner:
        return PlanCachingSavePlanner(self.plans)


def save_plan_cached() -> Backend:
    """The backend caches its local save plan and reuses it while the item count stays: a re-save with other keys writes the old plan."""
    return planted_backend(
        "save_plan_cached",
        "save planner reuses the backend's previous local plan when the item count matches",
        save_planner=_CachingPlanners(),
    )


# --- a global plan cache whose key leaves out the dtype -------------------------------------------


class DtypeBlindPlanCache(PlanCache):
    """The reference's plan cache keyed as DCP's ``_compare_save_plans`` compares plans: keys,
    kinds, global sizes, chunks and paths, not the dtypes."""

    def key(self, plans, options) -> bytes:
        digest = hashlib.sha256(repr((options, len(plans))).encode())
        for plan in plans:
            table = plan.table
            digest.update(repr((table.keys, table.kinds, table.sizes, plan.paths)).encode())
            for array in (plan.item_keys, plan.offsets, plan.lengths):
                digest.update(array.tobytes())
        return digest.digest()


class _DtypeBlindPlanners:
    """The backend's planner factory; its plan cache lives as long as the backend."""

    def __init__(self):
        self.cache = DtypeBlindPlanCache()

    def __call__(self) -> VerifiedSavePlanner:
        planner = VerifiedSavePlanner()
        planner.plan_cache = self.cache
        return planner


def plan_cache_ignores_dtype() -> Backend:
    """The coordinator caches its global plan keyed on the layout without the dtypes: a re-save whose only change is a tensor's dtype commits the old dtype's metadata over the new data."""
    return planted_backend(
        "plan_cache_ignores_dtype",
        "global plan cache keyed without dtypes (as DCP's _compare_save_plans compares plans)",
        save_planner=_DtypeBlindPlanners(),
    )


# --- overlapping async saves share staging buffers ------------------------------------------------

_POOL = StagingPool()


class _LaterSave:
    """The future of an upload that runs when its result is asked for."""

    def __init__(self, run):
        self._run, self._done, self._value = run, False, None

    def result(self):
        if not self._done:
            self._value, self._done = self._run(), True
        return self._value


def _async_save_reusing_buffers(state_dict, path, *, process_group=None, storage_writer=None):
    staged = stage_state_dict(saved_state(state_dict), _POOL)
    _POOL.release_all()  # the mistake: buffers handed back before the upload read them
    writer = storage_writer or FileSystemWriter(path)
    return _LaterSave(
        lambda: reference_driver.save(
            staged,
            process_group=process_group,
            planner=VerifiedSavePlanner(),
            storage_writer=writer,
        )
    )


def async_staging_buffers_reused() -> Backend:
    """async_save hands its staging buffers back to the process's pool before uploading: a second async save started meanwhile overwrites the first one's data."""
    return planted_backend(
        "async_staging_buffers_reused",
        "async_save releases staging buffers before its deferred upload",
        async_save=_async_save_reusing_buffers,
    )
