"""save, load and async_save: the steps of DCP's protocol, run with cross-rank failure reporting."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

from .compact_plan import (
    decode_global_plan,
    decode_save_plans,
    encode_global_plan,
    encode_save_plan,
    finish_save_plan,
)
from .compat import (
    object_collective_device,
    set_up_save_planner,
    set_up_storage_reader,
    set_up_storage_writer,
)
from .coordination import Coordination
from .filesystem import FileSystemReader, FileSystemWriter
from .load_planner import ReferenceLoadPlanner
from .save_planner import ReferenceSavePlanner
from .shared_reads import RelayPlanner, Round, SharedReads, plan_shared_reads
from .staging import StagingPool, stage_state_dict
from .stateful import StatefulLoad, saved_state
from .storage import ReferenceStorageReader, ReferenceStorageWriter, plan_storage

__all__ = ["save", "load", "async_save"]


def _writer(path: str | os.PathLike | None, storage_writer: StorageWriter | None) -> StorageWriter:
    if storage_writer is not None:
        if path is not None:
            storage_writer.reset(path)
        return storage_writer
    if path is None:
        raise ValueError("save needs a path or a storage_writer")
    return FileSystemWriter(path)


def _reader(path: str | os.PathLike | None, storage_reader: StorageReader | None) -> StorageReader:
    if storage_reader is not None:
        if path is not None:
            storage_reader.reset(path)
        return storage_reader
    if path is None:
        raise ValueError("load needs a path or a storage_reader")
    return FileSystemReader(path)


def _location(storage: Any) -> str | None:
    """Where a storage writer or reader keeps its checkpoint (through forwarding wrappers), for
    errors to name: a reference store's location, else a ``path`` or ``checkpoint_id``."""
    for _ in range(8):
        store = getattr(storage, "store", None)
        for found in (getattr(store, "location", None), getattr(storage, "path", None)):
            if isinstance(found, (str, os.PathLike)):
                return str(found)
        checkpoint_id = getattr(storage, "checkpoint_id", None)
        if isinstance(checkpoint_id, (str, os.PathLike)):
            return str(checkpoint_id)
        storage = getattr(storage, "inner", None)
        if storage is None:
            return None
    return None


def _plans_as_arrays(planner: SavePlanner, writer: StorageWriter) -> bool:
    """Whether a save's plans can travel as arrays (:mod:`.compact_plan`): the reference's
    planner and storage writer, their planning steps not overridden. Any other planner or
    writer gets DCP's ``SavePlan`` objects, gathered and scattered as DCP does."""
    return (
        isinstance(planner, ReferenceSavePlanner)
        and isinstance(writer, ReferenceStorageWriter)
        and all(
            getattr(type(planner), name) is getattr(ReferenceSavePlanner, name)
            for name in ("create_local_plan", "create_global_plan", "create_global_plan_compact")
        )
        and all(
            getattr(type(writer), name) is getattr(ReferenceStorageWriter, name)
            for name in ("prepare_local_plan", "prepare_global_plan", "new_generation")
        )
    )


def save(
    state_dict: dict[str, Any],
    path: str | os.PathLike | None = None,
    *,
    process_group: dist.ProcessGroup | None = None,
    coordinator_rank: int = 0,
    planner: SavePlanner | None = None,
    storage_writer: StorageWriter | None = None,
    no_dist: bool | None = None,
) -> Metadata:
    """Save ``state_dict`` from every rank of ``process_group`` (one process if none is initialised).

    Any planner and storage writer following DCP's protocol works. A Stateful value (DCP's
    protocol: ``state_dict()``/``load_state_dict()``, at any depth) is saved as what its
    ``state_dict()`` returns now. A failure on any rank raises the same ``CheckpointError`` on
    every rank, naming every failing rank.
    """
    return _save(
        lambda: saved_state(state_dict),
        path,
        process_group,
        coordinator_rank,
        planner,
        storage_writer,
        no_dist,
    )


def _save(prepare, path, process_group, coordinator_rank, planner, storage_writer, no_dist):
    """``save`` of what ``prepare()`` returns, called in the first step every rank takes part in
    (a ``state_dict()`` or staging failing on one rank fails every rank instead of leaving the
    others waiting)."""
    writer = _writer(path, storage_writer)
    planner = planner or ReferenceSavePlanner()
    coord = Coordination(process_group, coordinator_rank, no_dist, where=_location(writer))
    metadata_box: dict[str, Metadata] = {}

    def local_plan():
        state_dict = prepare()
        set_up_save_planner(planner, state_dict, coord.is_coordinator, writer.storage_meta())
        set_up_storage_writer(writer, coord.is_coordinator, coord.rank)
        return writer.prepare_local_plan(planner.create_local_plan())

    def global_plan(all_plans):
        plans, metadata = planner.create_global_plan(all_plans)
        metadata_box["metadata"] = metadata
        return writer.prepare_global_plan(plans)

    if coord.use_dist and _plans_as_arrays(planner, writer):
        # the reference's own planner and writer: plans travel as arrays, never pickled (one
        # process has no wire: its plans stay the objects, as before issue 30)
        local_box: dict[str, SavePlan] = {}

        def local_bytes() -> bytes:
            local_box["plan"] = local_plan()
            return encode_save_plan(local_box["plan"])

        def global_bytes(blobs: list[bytes]) -> list[bytes]:
            kept, metadata = planner.create_global_plan_compact(decode_save_plans(blobs))
            metadata_box["metadata"] = metadata
            generation = writer.new_generation()
            return [encode_global_plan(k, generation) for k in kept]

        blob = coord.reduce_scatter_bytes("save planning", local_bytes, global_bytes)

        def central_plan() -> SavePlan:  # in the writing step: a bad plan fails every rank
            kept, generation = decode_global_plan(blob, len(local_box["plan"].items))
            storage = plan_storage(generation, coord.rank)
            return finish_save_plan(local_box["plan"], kept, storage)
    else:
        plan = coord.reduce_scatter("save planning", local_plan, global_plan)

        def central_plan() -> SavePlan:
            return plan

    def write():
        future = writer.write_data(planner.finish_plan(central_plan()), planner)
        future.wait()
        return future.value()

    def finish(all_results):
        writer.finish(metadata=metadata_box["metadata"], results=all_results)
        return metadata_box["metadata"]

    return coord.all_reduce("save writing", write, finish)


def load(
    state_dict: dict[str, Any],
    path: str | os.PathLike | None = None,
    *,
    process_group: dist.ProcessGroup | None = None,
    coordinator_rank: int = 0,
    planner: LoadPlanner | None = None,
    storage_reader: StorageReader | None = None,
    no_dist: bool | None = None,
    share_reads: bool = True,
) -> None:
    """Load into ``state_dict`` in place; its tensors define the layout read into.

    A Stateful value is loaded into what its ``state_dict()`` returns, then given to its
    ``load_state_dict``; the dict keeps the same object. Checks run on every rank before any
    destination tensor is written, and objects are decoded before any is (see the reader); a
    failure on any rank raises the same ``CheckpointError`` on every rank.

    With ``share_reads`` (the default) and the reference's reader, a saved chunk that several
    ranks need strided parts of (a resharding load) is read once, by one rank, and the parts
    sent to the others over ``process_group`` (:mod:`.shared_reads`), in rounds of at most
    256 MiB a rank; ``share_reads=False`` has each rank read what it needs. The coordinator's
    ``share_reads`` decides for every rank.
    """
    reader = _reader(path, storage_reader)
    planner = planner or ReferenceLoadPlanner()
    coord = Coordination(process_group, coordinator_rank, no_dist, where=_location(reader))
    loading: list[StatefulLoad] = []

    def local_plan():
        # the Statefuls' state_dict() run here: one failing on one rank fails every rank
        loading.append(StatefulLoad(state_dict))
        metadata = reader.read_metadata()
        planner.set_up_planner(loading[0].destination, metadata, coord.is_coordinator)
        set_up_storage_reader(reader, metadata, coord.is_coordinator, coord.rank)
        return reader.prepare_local_plan(planner.create_local_plan())

    def global_plan(all_plans):
        # the coordinator decides for every rank (its share_reads and its reader)
        plans = planner.create_global_plan(all_plans)
        if share_reads and _reads_shareable(reader):
            plans, shared = plan_shared_reads(plans, reader.metadata)
        else:
            shared = [SharedReads() for _ in plans]
        return list(zip(reader.prepare_global_plan(plans), shared))

    central_plan, shared = coord.reduce_scatter("load planning", local_plan, global_plan)
    if shared.rounds:
        _read_shared(coord, reader, planner, central_plan, shared)
    else:

        def read():
            future = reader.read_data(planner.finish_plan(central_plan), planner)
            future.wait()

        coord.run_all("load reading", read)
    # load_state_dict may run collectives of its own (set_state_dict): outside any step
    loading[0].finish()


def _reads_shareable(reader: StorageReader) -> bool:
    """Whether a load may share reads (:mod:`.shared_reads`): the reference's reader, whose
    reads the cost model describes (any planner: relays use only its ``resolve_tensor`` and
    ``commit_tensor``)."""
    return isinstance(reader, ReferenceStorageReader)


def _read_shared(
    coord: Coordination,
    reader: StorageReader,
    planner: LoadPlanner,
    central_plan: LoadPlan,
    shared: SharedReads,
) -> None:
    """A load's reads with shared reads: one step per round (:mod:`.shared_reads`)."""
    metadata = reader.metadata
    device = object_collective_device(coord.group)
    final: list[LoadPlan] = []
    objects: list = []
    # an owner reads its own items of a chunk in the round that relays the chunk: one span read
    relayed_in = {
        item.storage_index: number
        for number, one in enumerate(shared.rounds)
        for _, item in one.relays
    }

    def run_round(number: int, one: Round) -> None:
        failure = relay = None
        try:  # nothing may raise between here and the flag's all-reduce, or a rank is left waiting
            relay = RelayPlanner(
                planner, metadata, one.relays, one.receives, coord.world_size, objects
            )
            if number == 0:
                final.append(planner.finish_plan(central_plan))
            own = [i for i in final[0].items if relayed_in.get(i.storage_index, 0) == number]
            plan = dataclasses.replace(final[0], items=own + relay.items)
            reader.read_data(plan, relay).wait()
        except BaseException as exc:  # noqa: BLE001 - raised once every rank knows
            failure = exc
        failed = torch.tensor([failure is not None], dtype=torch.int32, device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=coord.group)
        if failure is not None:
            raise failure
        if failed.item():
            return  # no piece moves: the failing rank's error fails this step on every rank
        relay.exchange(coord.group, device)
        relay.commit_received()
        if number == len(shared.rounds) - 1:
            relay.load_objects()

    for number, one in enumerate(shared.rounds):
        coord.run_all("load reading", lambda number=number, one=one: run_round(number, one))


_executor: ThreadPoolExecutor | None = None


def async_save(
    state_dict: dict[str, Any],
    path: str | os.PathLike | None = None,
    *,
    process_group: dist.ProcessGroup | None = None,
    coordinator_rank: int = 0,
    planner: SavePlanner | None = None,
    storage_writer: StorageWriter | None = None,
    no_dist: bool | None = None,
    staging_pool: StagingPool | None = None,
) -> Future:
    """Stage ``state_dict`` to host memory, then save it in a background thread.

    Returns once staging is done (Stateful values give their ``state_dict()`` at the call;
    an object no safe load could read is refused here): changing the state afterwards does
    not change what is saved. The returned future gives the ``Metadata`` or raises the save's
    error. If staging fails on a rank, its background save still takes part in the first
    step and fails it, so every other rank's future raises a ``CheckpointError`` naming that
    rank instead of waiting; that rank raises the staging error at the call, once the step is
    done (no collective of the save is left running).
    The background save runs collectives on ``process_group``; if this process uses
    that group meanwhile, pass a separate group (for example a gloo ``new_group``).
    """
    global _executor
    planner = planner or ReferenceSavePlanner()
    if not isinstance(planner, ReferenceSavePlanner):
        raise TypeError(
            "async_save stages tensors into ckptconf StagedTensor values, which only "
            f"ReferenceSavePlanner (or a subclass) plans; got {type(planner).__name__}"
        )
    writer = _writer(path, storage_writer)
    pool = staging_pool or StagingPool()
    failure: BaseException | None = None
    try:
        staged = stage_state_dict(saved_state(state_dict), pool)
    except Exception as exc:  # noqa: BLE001 - raised at the call, and to the other ranks
        failure = exc
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptconf-async-save")

    def prepare() -> dict[str, Any]:
        if failure is not None:
            raise failure
        return staged

    def run() -> Metadata:
        try:
            return _save(prepare, None, process_group, coordinator_rank, planner, writer, no_dist)
        finally:
            pool.release_all()

    future = _executor.submit(run)
    if failure is not None:
        # its first step fails on every rank; raise once no collective of this save is left
        future.exception()
        raise failure
    return future
