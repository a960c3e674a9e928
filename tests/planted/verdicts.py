"""Backends that test the suite's verdicts rather than the contract: each once drew a wrong
verdict from it (a pass for a backend that could not even plan, a failure for a backend that
starts processes, a hang shrunk for minutes, an own defect filed as DCP's). Used by
tests/conformance/test_verdicts.py and test_verdicts_by_failure.py.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import tempfile
import threading
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from ckptconf.conformance import Backend
from ckptconf.reference import (
    FileSystemReader,
    FileSystemWriter,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

__all__ = [
    "dcp_hangs_on_four",
    "dcp_inheriting",
    "own_storage_in_place",
    "dcp_resembling_error",
    "dcp_row_offset",
    "dcp_planners",
    "dcp_planners_inheriting",
    "fails_every_save",
    "hangs_on_save",
    "starts_child_processes",
    "stored_elsewhere",
    "stored_elsewhere_listed",
    "unbuildable_planner",
]

ATTEMPTS = "CKPTCONF_TEST_ATTEMPTS"
"""Environment variable naming a file: every save attempt of ``hangs_on_save`` appends a line."""


class _HangingWriter(FileSystemWriter):
    """Rank 1 waits forever in ``write_data``, as a writer blocked on a lost peer would."""

    def write_data(self, plan, planner):
        if os.environ.get(ATTEMPTS) and dist.get_rank() == 0:
            with open(os.environ[ATTEMPTS], "a") as attempts:
                attempts.write("save\n")
        if dist.get_rank() == 1:
            threading.Event().wait()
        return super().write_data(plan, planner)


def hangs_on_save() -> Backend:
    """A save that hangs on rank 1: the test must fail once, not be shrunk hang by hang."""
    return Backend(
        name="hangs_on_save",
        storage_writer=_HangingWriter,
        storage_reader=FileSystemReader,
        save_planner=ReferenceSavePlanner,
        load_planner=ReferenceLoadPlanner,
    )


def _missing_planner():
    raise AttributeError("module 'mypkg.planners' has no attribute 'SavePlanner'")


def unbuildable_planner() -> Backend:
    """A save planner factory that cannot build a planner (as an adapter with a wrong import):
    no test that expects an error may pass on it."""
    return Backend(
        name="unbuildable_planner",
        storage_writer=FileSystemWriter,
        storage_reader=FileSystemReader,
        save_planner=_missing_planner,
        load_planner=ReferenceLoadPlanner,
    )


def _helper(path: str) -> None:
    with open(path, "w") as done:
        done.write("helper ran\n")


class _ChildProcessWriter(FileSystemWriter):
    """Starts a helper process on every rank before it writes (as async writers do) and
    waits for it: impossible in a daemonic rank process."""

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        marker = os.path.join(tempfile.gettempdir(), f"ckptconf-helper-{os.getpid()}")
        child = multiprocessing.get_context("spawn").Process(target=_helper, args=(marker,))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the helper process failed with exit code {child.exitcode}")
        os.remove(marker)


def starts_child_processes() -> Backend:
    """Not broken: its writer starts a child process on every rank."""
    return Backend(
        name="starts_child_processes",
        storage_writer=_ChildProcessWriter,
        storage_reader=FileSystemReader,
        save_planner=ReferenceSavePlanner,
        load_planner=ReferenceLoadPlanner,
    )


def dcp_planners() -> Backend:
    """Not broken itself: the reference storage under DCP's default planners and driver, so
    DCP's planner defects are its failures too."""
    return Backend(
        name="dcp_planners",
        storage_writer=FileSystemWriter,
        storage_reader=FileSystemReader,
    )


def dcp_planners_inheriting() -> Backend:
    """The same, declaring what it is built on: DCP's defects are reported as inherited."""
    return dataclasses.replace(dcp_planners(), name="dcp_planners_inheriting", inherits="torch-dcp")


class _RefusingWriter(FileSystemWriter):
    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        raise PermissionError("access denied to the bucket (an adapter configured wrongly)")


def fails_every_save() -> Backend:
    """Every save raises at once: the run must stop after its preflight, in seconds."""
    return Backend(
        name="fails_every_save", storage_writer=_RefusingWriter, storage_reader=FileSystemReader
    )


def _elsewhere(path: str) -> str:
    """Where the "object store" backends keep the checkpoint the suite calls ``path``."""
    return f"{path}.store"


def _elsewhere_writer(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemWriter(_elsewhere(path))


def _elsewhere_reader(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(_elsewhere(path))


def _elsewhere_objects(path: str):
    from ckptconf.conformance import LocalFiles

    return LocalFiles(_elsewhere(path))


def stored_elsewhere() -> Backend:
    """DCP's filesystem storage keeping each checkpoint away from the path it is given, as an
    object store does, and not saying where: the corruption tests cannot run."""
    return Backend(
        name="stored-elsewhere",
        storage_writer=_elsewhere_writer,
        storage_reader=_elsewhere_reader,
    )


def stored_elsewhere_listed() -> Backend:
    """:func:`stored_elsewhere` with ``stored_objects`` saying where: the corruption tests run
    on its objects (and DCP, without checksums, fails the flipped-bit test)."""
    return dataclasses.replace(
        stored_elsewhere(), name="stored-elsewhere-listed", stored_objects=_elsewhere_objects
    )


# --- backends built on DCP that declare inherits="torch-dcp" ------------------------------------
# Their verdicts must separate DCP's known failures from their own (tests/conformance/
# test_verdicts_by_failure.py): each has DCP's defects, some add one of their own.


def dcp_inheriting() -> Backend:
    """Correct: DCP's filesystem storage and planners under another name, declaring what it is
    built on; every failure it has is DCP's."""
    return Backend(
        name="dcp_inheriting",
        storage_writer=dcp.FileSystemWriter,
        storage_reader=dcp.FileSystemReader,
        inherits="torch-dcp",
    )


class _RowOffsetLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner reading a piece of a saved chunk one row early on 4 ranks or more: a
    read item whose storage offset on dim 0 is not 0 (a resharding load takes part of a saved
    chunk) starts a row before it. Loads of whole chunks, as a round trip makes, are right."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        if dist.get_world_size() < 4:
            return plan
        items = []
        for item in plan.items:
            offsets = item.storage_offsets
            if len(offsets) and offsets[0] > 0:
                offsets = torch.Size([offsets[0] - 1, *offsets[1:]])
                item = dataclasses.replace(item, storage_offsets=offsets)
            items.append(item)
        return dataclasses.replace(plan, items=items)


def dcp_row_offset() -> Backend:
    """DCP with a resharding read one row early on 4 ranks: its own defect sits in
    test_placement_change behind DCP's failure there (ShardedTensor shards past the end, whose
    pinned example on 3 ranks runs before those on 4)."""
    return dataclasses.replace(
        dcp_inheriting(), name="dcp_row_offset", load_planner=_RowOffsetLoadPlanner
    )


class _ResemblingWriter(dcp.FileSystemWriter):
    """DCP's writer refusing ShardedTensor saves whose last shard is empty with a message that
    resembles DCP's own validation error ("out of range chunk"), from its local plan."""

    def prepare_local_plan(self, plan):
        for item in plan.items:
            chunk = item.tensor_data.chunk if item.tensor_data else None
            if chunk is not None and 0 in chunk.sizes and any(chunk.offsets):
                raise RuntimeError(f"key:{item.index.fqn} has an out of range chunk")
        return super().prepare_local_plan(plan)


def dcp_resembling_error() -> Backend:
    """DCP whose writer rejects empty trailing shards itself, with another error than DCP's
    (same step, same wrapper exception, another message): its own failure, not DCP's."""
    return dataclasses.replace(
        dcp_inheriting(), name="dcp_resembling_error", storage_writer=_ResemblingWriter
    )


class _Delegating:
    """The steps a storage writer and reader share, handed to ``self.inner``."""

    inner: Any

    def reset(self, checkpoint_id=None):
        self.inner.reset(checkpoint_id)

    def prepare_local_plan(self, plan):
        return self.inner.prepare_local_plan(plan)

    def prepare_global_plan(self, plans):
        return self.inner.prepare_global_plan(plans)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return dcp.FileSystemReader.validate_checkpoint_id(checkpoint_id)


class _InPlaceWriter(_Delegating, StorageWriter):
    """A storage writer of its own (no FileSystemWriter), writing as DCP's does, by delegating to
    one: each rank's data file rewritten in place, no atomic commit. So its storage has DCP's
    storage defects while its classes are its own, as a user's object-store or zip writer that
    rewrites its files in place has."""

    def __init__(self, path: str):
        self.inner = dcp.FileSystemWriter(path)

    def set_up_storage_writer(self, is_coordinator, *args, **kwargs):
        return self.inner.set_up_storage_writer(is_coordinator, *args, **kwargs)

    def write_data(self, plan, planner):
        return self.inner.write_data(plan, planner)

    def finish(self, metadata, results):
        return self.inner.finish(metadata, results)

    def storage_meta(self):
        return self.inner.storage_meta()


class _InPlaceReader(_Delegating, StorageReader):
    """The reader of :class:`_InPlaceWriter`'s checkpoints: DCP's, delegated to."""

    def __init__(self, path: str):
        self.inner = dcp.FileSystemReader(path)

    def read_metadata(self, *args, **kwargs):
        return self.inner.read_metadata(*args, **kwargs)

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs):
        return self.inner.set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)

    def read_data(self, plan, planner):
        return self.inner.read_data(plan, planner)


def own_storage_in_place() -> Backend:
    """DCP's planners and driver with a storage of its own that rewrites files in place: a failed
    save loses the previous checkpoint, as DCP's does, but the storage is this backend's, so DCP's
    storage entries (no atomic commit) must not excuse it."""
    return Backend(
        name="own_storage_in_place",
        storage_writer=_InPlaceWriter,
        storage_reader=_InPlaceReader,
        inherits="torch-dcp",
    )


class _HangingOnFourWriter(dcp.FileSystemWriter):
    """DCP's writer whose rank 1 waits forever in ``prepare_local_plan`` on a 4-rank save."""

    def prepare_local_plan(self, plan):
        if dist.get_world_size() == 4 and dist.get_rank() == 1:
            threading.Event().wait()
        return super().prepare_local_plan(plan)


def dcp_hangs_on_four() -> Backend:
    """DCP whose save hangs on 4 ranks: in test_round_trip_strided_shard, where DCP's known
    failure is an exception, the hang is the backend's own."""
    return dataclasses.replace(
        dcp_inheriting(), name="dcp_hangs_on_four", storage_writer=_HangingOnFourWriter
    )
