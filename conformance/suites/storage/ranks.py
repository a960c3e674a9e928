"""What the ranks of the storage suite run.

What a backend's reader says is in a checkpoint (a plain summary of its ``Metadata``),
loads whose outcome is reported rather than raised (for corrupted checkpoints), two
saves run at once on two process groups, and DCP's storage protocol driven by hand:
the test is the planner, so what the storage must write and read back is known
exactly, independent of any planner.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist
from ckptconf.harness.world import per_group
from ckptconf.reference.compat import set_up_storage_reader, set_up_storage_writer

from ...backend import Backend
from ...kit.cases import SaveLoadCase, encoded_tensor
from ...kit.failures import Mismatch
from ...kit.oracle import summarise_metadata
from ...kit.values import blank_state, build_state, call_outcome, compare_state
from .cases import HandCase

__all__ = [
    "read_metadata_summary",
    "files_metadata_depends_on",
    "accepted_metadata_changes",
    "load_outcome",
    "save_siblings_concurrently",
    "write_by_hand",
    "read_by_hand",
]

_MAX_MISMATCHES = 20


# --- metadata summaries ------------------------------------------------------------------------


def read_metadata_summary(backend: Backend, path: str) -> dict[str, dict[str, Any]]:
    """The summary of ``storage_reader(path).read_metadata()`` on this rank."""
    reader = backend.storage_reader(path)
    return summarise_metadata(reader.read_metadata())


def _summary_or_error(backend: Backend, path: str) -> tuple[str, Any]:
    try:
        return "ok", read_metadata_summary(backend, path)
    except Exception as exc:  # noqa: BLE001 - any failure to read counts
        return "error", type(exc).__name__


def files_metadata_depends_on(backend: Backend, path: str, files: list[str]) -> list[str]:
    """The stored objects of the checkpoint without which ``read_metadata`` raises or says
    something else.

    Each object is read, deleted and written back in turn.
    """
    if dist.is_initialized() and dist.get_rank() != 0:
        return []
    baseline = _summary_or_error(backend, path)
    if baseline[0] != "ok":
        return []
    store = backend.objects_at(path)
    found = []
    for name in files:  # every object is whole here: no cap needed
        content = store.read(name)
        store.delete(name)
        try:
            now = _summary_or_error(backend, path)
        finally:
            store.write(name, content)
        if now != baseline:
            found.append(name)
    return found


# --- reading corrupted checkpoints safely ------------------------------------------------------

_EXTRA_MEMORY = 2 << 30


@contextlib.contextmanager
def _memory_capped(extra: int = _EXTRA_MEMORY):
    """Cap this process's address space at its current size plus ``extra`` bytes, meanwhile.

    Corrupted metadata can name absurd sizes (a pickle frame length, a chunk of 2**40
    elements); without a cap one such allocation takes the machine's memory, and the OOM
    killer picks any process. With it, the allocation fails and the load raises. (Not
    with CUDA initialised: its address-space reservations would hit the cap.)
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        yield
        return
    try:
        import resource

        with open("/proc/self/status") as status:
            used = next(
                int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:")
            )
    except (ImportError, OSError, StopIteration):
        yield  # not Linux: no cap
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + extra
    for limit in (soft, hard):
        if limit != resource.RLIM_INFINITY:
            cap = min(cap, limit)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _signature(backend: Backend, path: str) -> tuple[str, Any]:
    """What the reader says: the summary and where it says each item lies, or the error type."""
    try:
        metadata = backend.storage_reader(path).read_metadata()
        storage = metadata.storage_data
        where = (
            sorted((repr(k), repr(v)) for k, v in storage.items())
            if isinstance(storage, dict)
            else repr(storage)
        )
        return "ok", (summarise_metadata(metadata), where)
    except Exception as exc:  # noqa: BLE001 - any failure to read counts
        return "error", type(exc).__name__


def accepted_metadata_changes(
    backend: Backend,
    path: str,
    file: str,
    positions: list[int],
    mask: int = 1,
    seconds: float = math.inf,
) -> list[tuple[int, dict[str, dict[str, Any]]]]:
    """The positions of ``file`` where XOR-ing ``mask`` into the byte gives metadata the reader
    accepts but that says something else, each with the summary the reader then gives (the
    same summary: only where the data lies changed).

    ``positions`` are probed in order for at most ``seconds`` (at least one is). ``mask`` 1
    keeps an ASCII digit a digit and changes a binary integer by one; 2 turns most digits
    into other digits. The file is restored before returning.
    """
    found: list[tuple[int, dict[str, dict[str, Any]]]] = []
    if dist.is_initialized() and dist.get_rank() != 0:
        return found
    store = backend.objects_at(path)
    with _memory_capped():
        baseline = _signature(backend, path)
        if baseline[0] != "ok":
            return found
        until = time.monotonic() + seconds
        for position in positions:  # one byte changed, then put back (XOR undoes itself)
            if time.monotonic() > until and position != positions[0]:
                break
            store.change_byte(file, position, lambda b: b ^ mask)
            try:
                now = _signature(backend, path)
            finally:
                store.change_byte(file, position, lambda b: b ^ mask)
            if now[0] == "ok" and now != baseline:
                found.append((position, now[1][0]))
    return found


# --- loads with an outcome ---------------------------------------------------------------------


def load_outcome(backend: Backend, case: SaveLoadCase, path: str) -> dict[str, Any]:
    """Load the case's state: ``{"raised": True, "error": ...}`` or the mismatches found."""
    state = blank_state(case)

    def load() -> None:
        with _memory_capped():
            backend.run_load(state, path)

    outcome = call_outcome(load, limit=1500)
    if outcome["raised"]:
        return {"raised": True, "error": f"{outcome['type']}: {outcome['text']}"}
    return {"raised": False, "mismatches": compare_state(case, state)[:_MAX_MISMATCHES]}


# --- two saves at once -------------------------------------------------------------------------

_SIBLING_GROUPS: dict[Any, Any] = {}


def _sibling_groups() -> list[Any]:
    # new_group is collective over the default group: every rank creates both, in order, once
    groups = per_group(_SIBLING_GROUPS)
    if "siblings" not in groups:
        groups["siblings"] = [dist.new_group(backend="gloo") for _ in range(2)]
    return groups["siblings"]


def save_siblings_concurrently(
    backend: Backend,
    first: SaveLoadCase,
    first_path: str,
    second: SaveLoadCase,
    second_path: str,
) -> None:
    """Save two states to two paths at the same time: one thread and one process group each.

    Each save gets its own gloo group, so the collectives of the two saves never
    interleave on one communicator (on a shared group they would pair up wrongly);
    gloo groups are independent, so using two from two threads is safe. States are
    built before the threads start (building a DTensor uses the default group).
    """
    groups = _sibling_groups()
    jobs = [
        (build_state(first, for_load=False), first_path, groups[0]),
        (build_state(second, for_load=False), second_path, groups[1]),
    ]
    start = threading.Barrier(len(jobs))
    errors: list[str | None] = [None] * len(jobs)

    def run(number: int) -> None:
        state, path, group = jobs[number]
        try:
            start.wait(timeout=60)
            backend.run_save(state, path, process_group=group)
        except BaseException:  # noqa: BLE001 - reported below, with its traceback
            errors[number] = traceback.format_exc()

    threads = [threading.Thread(target=run, args=(n,), name=f"sibling-save-{n}") for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [
        f"save to {jobs[n][1]} raised:\n{text}" for n, text in enumerate(errors) if text is not None
    ]
    if failed:
        raise RuntimeError("\n".join(failed))


# --- the storage protocol driven by hand -------------------------------------------------------


def _box(offsets, sizes) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


class _HandSavePlanner:
    """Resolves the hand-made write items to their data (the only call a writer makes)."""

    def __init__(self, case: HandCase):
        self.tensors = {t.spec.key: t.spec for t in case.tensors}
        self.objects = {key: payload for key, payload, _ in case.objects}

    def resolve_data(self, item):
        key = item.index.fqn
        if key in self.objects:
            return io.BytesIO(self.objects[key])
        spec = self.tensors[key]
        chunk = item.tensor_data.chunk
        full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
        return full[_box(chunk.offsets, chunk.sizes)].contiguous().clone()


def _save_planner(case: HandCase):
    from torch.distributed.checkpoint.planner import SavePlanner

    class HandSavePlanner(_HandSavePlanner, SavePlanner):
        def set_up_planner(self, *args, **kwargs) -> None:
            pass

        def create_local_plan(self):
            raise NotImplementedError("the test makes the plans")

        def create_global_plan(self, all_plans):
            raise NotImplementedError("the test makes the plans")

        def finish_plan(self, new_plan):
            return new_plan

    return HandSavePlanner(case)


def _write_items(case: HandCase, rank: int) -> list:
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    items = []
    for t in case.tensors:
        dtype = getattr(torch, t.spec.dtype)
        for p in t.pieces:
            if p.rank != rank:
                continue
            whole = tuple(p.sizes) == tuple(t.spec.shape)
            items.append(
                WriteItem(
                    index=MetadataIndex(t.spec.key, torch.Size(p.offsets)),
                    type=WriteItemType.TENSOR if whole else WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(torch.Size(p.offsets), torch.Size(p.sizes)),
                        properties=TensorProperties(dtype=dtype),
                        size=torch.Size(t.spec.shape),
                    ),
                )
            )
    for key, _, writer in case.objects:
        if writer == rank:
            items.append(WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO))
    return items


def _step(name: str, fn) -> Any:
    """Run ``fn`` on every rank; if any rank raised, raise on every rank naming them all."""
    try:
        outcome = ("ok", fn())
    except BaseException as exc:  # noqa: BLE001 - every rank must hear of it
        outcome = ("failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outcome[0] if outcome[0] == "ok" else outcome)
    failed = {r: o[1] for r, o in enumerate(gathered) if o != "ok"}
    if failed:
        text = "\n".join(f"  rank {r}: {message}" for r, message in failed.items())
        raise RuntimeError(f"{name} raised on rank(s) {sorted(failed)}:\n{text}")
    return outcome[1]


def _coordinated(name: str, local, central) -> Any:
    """``local()`` on every rank; rank 0 maps all results with ``central``; each rank gets its part."""
    mine = _step(f"{name} (local)", local)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    rank = dist.get_rank()
    parts = _step(f"{name} (global)", lambda: central(everyone) if rank == 0 else None)
    box = [parts]
    dist.broadcast_object_list(box, src=0)
    return box[0][rank]


def write_by_hand(backend: Backend, case: HandCase, path: str) -> None:
    """Drive the backend's StorageWriter through DCP's save protocol with hand-made plans.

    Metadata for ``finish`` is built from the write results: every planned item must
    have exactly one result, and the metadata lists one chunk per result.
    """
    from torch.distributed.checkpoint.planner import SavePlan

    rank = dist.get_rank()
    writer = backend.storage_writer(path)
    planner = _save_planner(case)
    box: dict[str, Any] = {}

    def local():
        box["storage_meta"] = writer.storage_meta()
        set_up_storage_writer(writer, rank == 0, rank)
        return writer.prepare_local_plan(SavePlan(_write_items(case, rank)))

    plan = _coordinated("write planning", local, writer.prepare_global_plan)

    def write():
        future = writer.write_data(plan, planner)
        future.wait()
        return list(future.value())

    results = _step("write_data", write)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, results)

    def finish():
        if rank == 0:
            writer.finish(_metadata_from_results(case, everyone, box["storage_meta"]), everyone)

    _step("finish", finish)


def _metadata_from_results(case: HandCase, results: list[list], storage_meta):
    from torch.distributed.checkpoint.metadata import (
        BytesStorageMetadata,
        ChunkStorageMetadata,
        Metadata,
        MetadataIndex,
        TensorProperties,
        TensorStorageMetadata,
    )

    planned = {
        MetadataIndex(t.spec.key, torch.Size(p.offsets)): (t.spec, p)
        for t in case.tensors
        for p in t.pieces
    }
    planned.update({MetadataIndex(key): None for key, _, _ in case.objects})
    seen: dict = {}
    for rank, rank_results in enumerate(results):
        for result in rank_results:
            if result.index in seen:
                raise AssertionError(
                    f"write_data returned two results for {result.index} (ranks {seen[result.index]} and {rank})"
                )
            if result.index not in planned:
                raise AssertionError(
                    f"write_data on rank {rank} returned a result for {result.index}, which no plan had"
                )
            seen[result.index] = rank
    missing = [index for index in planned if index not in seen]
    if missing:
        raise AssertionError(f"write_data returned no result for planned items {missing}")
    entries: dict[str, Any] = {key: BytesStorageMetadata() for key, _, _ in case.objects}
    for t in case.tensors:
        entries[t.spec.key] = TensorStorageMetadata(
            properties=TensorProperties(dtype=getattr(torch, t.spec.dtype)),
            size=torch.Size(t.spec.shape),
            chunks=[],
        )
    for index in seen:  # one chunk per write result
        value = planned[index]
        if value is not None:
            spec, piece = value
            entries[spec.key].chunks.append(
                ChunkStorageMetadata(torch.Size(piece.offsets), torch.Size(piece.sizes))
            )
    return Metadata(state_dict_metadata=entries, storage_meta=storage_meta)


def _load_planner(destinations: dict[str, torch.Tensor], objects: dict[str, bytes]):
    from torch.distributed.checkpoint.planner import LoadPlanner

    class HandLoadPlanner(LoadPlanner):
        def set_up_planner(self, *args, **kwargs) -> None:
            pass

        def create_local_plan(self):
            raise NotImplementedError("the test makes the plans")

        def create_global_plan(self, global_plan):
            raise NotImplementedError("the test makes the plans")

        def finish_plan(self, central_plan):
            return central_plan

        def load_bytes(self, read_item, value) -> None:
            objects[read_item.dest_index.fqn] = value.read()

        def resolve_tensor(self, read_item):
            target = destinations[read_item.dest_index.fqn]
            return target[_box(read_item.dest_offsets, read_item.lengths)]

        def commit_tensor(self, read_item, tensor) -> None:
            pass  # resolve_tensor gave a view of the destination: the data is in place

    return HandLoadPlanner()


def _read_items(case: HandCase, summary: dict[str, dict[str, Any]]) -> list:
    """A read of every chunk the reader's metadata lists for the case's keys, into full tensors."""
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    items = []
    for t in case.tensors:
        entry = summary.get(t.spec.key, {})
        if entry.get("kind") != "tensor" or entry["size"] != tuple(t.spec.shape):
            continue  # the summary check reports it
        for offsets, sizes in entry["chunks"]:
            index = MetadataIndex(t.spec.key, torch.Size(offsets))
            items.append(
                ReadItem(
                    type=LoadItemType.TENSOR,
                    dest_index=index,
                    dest_offsets=torch.Size(offsets),
                    storage_index=index,
                    storage_offsets=torch.Size([0] * len(offsets)),
                    lengths=torch.Size(sizes),
                )
            )
    for key, _, _ in case.objects:
        if summary.get(key, {}).get("kind") != "bytes":
            continue
        index = MetadataIndex(key)
        items.append(
            ReadItem(
                type=LoadItemType.BYTE_IO,
                dest_index=index,
                dest_offsets=torch.Size([0]),
                storage_index=index,
                storage_offsets=torch.Size([0]),
                lengths=torch.Size([0]),
            )
        )
    return items


def read_by_hand(backend: Backend, case: HandCase, path: str) -> dict[str, Any]:
    """Read back through the backend's StorageReader, driven by hand, every chunk its metadata lists.

    Returns this rank's metadata summary and every element or object that differs.
    """
    from torch.distributed.checkpoint.planner import LoadPlan

    rank = dist.get_rank()
    reader = backend.storage_reader(path)
    metadata = _step("read_metadata", reader.read_metadata)
    summary = summarise_metadata(metadata)
    destinations = {
        t.spec.key: -encoded_tensor(t.spec.shape, t.spec.dtype, t.spec.salt) - 1
        for t in case.tensors
    }
    objects: dict[str, bytes] = {}
    planner = _load_planner(destinations, objects)

    def local():
        set_up_storage_reader(reader, metadata, rank == 0, rank)
        return reader.prepare_local_plan(LoadPlan(_read_items(case, summary)))

    plan = _coordinated("read planning", local, reader.prepare_global_plan)

    def read():
        future = reader.read_data(plan, planner)
        future.wait()

    _step("read_data", read)
    return {
        "summary": summary,
        "mismatches": _hand_mismatches(case, destinations, objects, rank),
    }


def _hand_mismatches(case: HandCase, destinations, objects, rank: int) -> list[Mismatch]:
    out: list[Mismatch] = []
    for t in case.tensors:
        want = encoded_tensor(t.spec.shape, t.spec.dtype, t.spec.salt)
        got = destinations[t.spec.key]
        differ = got != want
        if differ.any():
            first = tuple(int(i) for i in differ.nonzero()[0])
            out.append(
                Mismatch(
                    t.spec.key,
                    rank,
                    "read back through the reader (unread elements hold -(expected)-1)",
                    first,
                    want[first].item(),
                    got[first].item(),
                    int(differ.sum()),
                )
            )
    for key, payload, _ in case.objects:
        if objects.get(key) != payload:
            out.append(
                Mismatch(
                    key, rank, "object bytes differ", expected=payload, actual=objects.get(key)
                )
            )
    return out
