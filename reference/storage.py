"""Storage writer and reader of the reference format, over any :class:`BlobStore`.

A save writes each rank's items as raw bytes into one data file per rank under a
fresh *generation* folder, records where each item lies and a checksum per block, and
only then (coordinator, in ``finish``) commits the metadata document atomically. The
previous metadata, and so the previous checkpoint, stays whole until that commit;
afterwards older generations are removed. A reader verifies the blocks it reads.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import io
import math
import os
import threading
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from functools import partial
from itertools import accumulate
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .checksums import ALGORITHMS, DEFAULT_ALGORITHM, block_checksums, checksum
from .errors import IntegrityError
from .metadata_format import Region, dump_metadata, parse_metadata
from .state_values import tensor_bytes

__all__ = [
    "BlobStore",
    "BlobSink",
    "ReferenceStorageWriter",
    "ReferenceStorageReader",
    "DEFAULT_BLOCK_SIZE",
]

DEFAULT_BLOCK_SIZE = 4 << 20
_GENERATION_PREFIX = "gen-"


class BlobSink(abc.ABC):
    """An open data file being written: appended to with ``write``, or, where ``positional`` is
    true, written at offsets with ``write_at`` from several threads at once (never both)."""

    positional: bool = False

    @abc.abstractmethod
    def write(self, data: memoryview | bytes) -> None:
        """Append ``data``."""

    def write_at(self, offset: int, data: memoryview | bytes) -> None:
        """Write ``data`` at byte ``offset``; called from several threads for disjoint ranges.
        Only where ``positional`` is true."""
        raise NotImplementedError(f"{type(self).__name__} writes in order only")


class BlobStore(abc.ABC):
    """Where one checkpoint lives: data files in generation folders and one metadata document.

    Where ``concurrent_reads`` is true, ``read_into`` and ``read_range`` are called from several
    threads at once (the reader's ``threads``); a store that cannot take that leaves it false.
    """

    concurrent_reads: bool = False
    concurrent_writes: bool = False
    """Where true, sinks of different files may be open and written from several threads at
    once (a writer then spreads a rank's items over several data files)."""

    location: str

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create the checkpoint's container if needed (coordinator, before any write)."""

    @abc.abstractmethod
    def create_generation(self, generation: str) -> None:
        """Create the folder for a new generation's data files."""

    @abc.abstractmethod
    def open_sink(self, name: str) -> AbstractContextManager[BlobSink]:
        """Open data file ``name`` for writing; it is durable when the context exits cleanly."""

    def seal_generation(self, generation: str) -> None:
        """Make the data files of ``generation`` durable as a set, before metadata naming them
        is committed: in a folder, their names (an fsync of the folder; each file's bytes were
        synced when its sink closed). Default: nothing, for stores where a closed sink is
        durable and listed (object stores)."""
        return None

    @abc.abstractmethod
    def read_range(self, name: str, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)`` of data file ``name`` in a writable buffer (shorter if the file is)."""

    def read_into(self, name: str, start: int, buffer: memoryview) -> int:
        """Read bytes of data file ``name`` from ``start`` into ``buffer`` (a writable byte view);
        return how many were read (fewer if the file is shorter). Override to read without the
        intermediate copy this default makes."""
        data = self.read_range(name, start, start + len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @abc.abstractmethod
    def size(self, name: str) -> int:
        """Size in bytes of data file ``name``; ``FileNotFoundError`` if absent."""

    @abc.abstractmethod
    def read_metadata(self) -> bytes:
        """The committed metadata document; ``FileNotFoundError`` if there is none."""

    @abc.abstractmethod
    def commit_metadata(self, data: bytes) -> None:
        """Replace the metadata document atomically: readers see the old or the new one whole."""

    @abc.abstractmethod
    def generations(self) -> list[str]:
        """Names of the generation folders present."""

    @abc.abstractmethod
    def remove_generation(self, generation: str) -> None:
        """Delete a generation folder and its files."""


@dataclasses.dataclass(frozen=True)
class _PlanStorageData:
    generation: str
    file: str


def plan_storage(generation: str, rank: int) -> _PlanStorageData:
    """What :meth:`ReferenceStorageWriter.prepare_global_plan` puts in rank ``rank``'s plan:
    its data file in ``generation``."""
    return _PlanStorageData(generation, f"{generation}/r{rank}.bin")


def _threads(threads: int | None) -> int:
    """``threads``, or the CPU count up to 4 when ``None``; ``ValueError`` below 1."""
    if threads is None:
        return max(1, min(4, os.cpu_count() or 1))
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return threads


_PIECE_BYTES = 32 << 20  # a thread's share of a large item, rounded to whole checksum blocks
_SPREAD_BYTES = 64 << 20  # a rank writing this much spreads its items over several files
_THREADED_BYTES = 1 << 20  # less than this is read or written on the calling thread: handing
# items to pool threads costs more than copying and checksumming them


_POOLS: dict[tuple[int, str], tuple[int, ThreadPoolExecutor]] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int, name: str) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` threads for ``name`` (``"write"``, ``"read"``), kept
    between saves and loads: a pool per call started some 8,000 threads in one ci run of the
    suite. A forked child (whose copy has no threads) gets a pool of its own. Tasks on these
    pools never wait for each other, so callers sharing one (an async save beside a load)
    share its threads and cannot deadlock."""
    with _POOLS_LOCK:
        pid, pool = _POOLS.get((threads, name), (None, None))
        if pool is None or pid != os.getpid():
            pool = ThreadPoolExecutor(threads, thread_name_prefix=f"ckptconf-{name}")
            _POOLS[(threads, name)] = (os.getpid(), pool)
        return pool


def _stop(futures) -> None:
    """Cancel the ``futures`` not started and wait for the others (nothing of a failed call
    runs on once it raises)."""
    for future in futures:
        future.cancel()
    wait(futures)


def row_major_strides(shape) -> list[int]:
    """Element strides of a row-major (contiguous) tensor of ``shape``."""
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return strides


def item_spans(items: list[ReadItem], strides: list[int]) -> list[tuple[ReadItem, int, int]]:
    """``(item, first, end)`` per non-empty item: the row-major elements of its saved chunk (of
    ``strides``) from the first it reads to one past the last. The reader reads the span from
    the least ``first`` to the greatest ``end``, in whole checksum blocks."""
    spans = []
    for item in items:
        if math.prod(item.lengths) == 0:
            continue
        first = sum(o * s for o, s in zip(item.storage_offsets, strides))
        last = sum((o + n - 1) * s for o, n, s in zip(item.storage_offsets, item.lengths, strides))
        spans.append((item, first, last + 1))
    return spans


def _pieces(length: int, block_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that cut ``length`` bytes at multiples of ``block_size``."""
    step = max(block_size, _PIECE_BYTES // block_size * block_size)
    return [(a, min(length, a + step)) for a in range(0, length, step)] or [(0, 0)]


def _completed(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class ReferenceStorageWriter(StorageWriter):
    """Writes raw bytes with block checksums and commits metadata last, atomically.

    Args:
        store: where the checkpoint lives.
        block_size: bytes per checksum block (a ranged read verifies whole blocks).
        keep_old_generations: keep the data files of earlier saves after the commit.
        checksum: block checksum algorithm, a key of
            :data:`~ckptconf.reference.checksums.ALGORITHMS`.
        threads: threads writing one rank's file where the store takes positional writes
            (default: the CPU count, at most 4); 1 writes in order on the calling thread.
    """

    def __init__(
        self,
        store: BlobStore,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        keep_old_generations: bool = False,
        checksum: str = DEFAULT_ALGORITHM,
        threads: int | None = None,
    ):
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if checksum not in ALGORITHMS:
            raise ValueError(f"checksum must be one of {sorted(ALGORITHMS)}, got {checksum!r}")
        self.store = store
        self.block_size = block_size
        self.keep_old_generations = keep_old_generations
        self.checksum = checksum
        self.threads = _threads(threads)
        self.is_coordinator = False
        self.rank = 0
        self._save_id: str | None = None

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        """Start a new save; a ``checkpoint_id`` is accepted only if it names this store."""
        self._save_id = None
        if checkpoint_id is not None and str(checkpoint_id) != self.store.location:
            raise ValueError(
                f"this writer writes to {self.store.location!r}; create a new writer for {str(checkpoint_id)!r}"
            )

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """Stores are explicit objects; no id is claimed implicitly."""
        return False

    def storage_meta(self) -> StorageMeta | None:
        """The checkpoint's location and a fresh save id."""
        self._save_id = uuid.uuid4().hex
        return StorageMeta(checkpoint_id=self.store.location, save_id=self._save_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Record this rank's role; the coordinator prepares the container."""
        self.is_coordinator = is_coordinator
        self.rank = int(kwargs.get("rank", 0))
        if is_coordinator:
            self.store.prepare()

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Nothing to change locally."""
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Create this save's generation and name each rank's data file in it."""
        generation = self.new_generation()
        return [
            dataclasses.replace(plan, storage_data=plan_storage(generation, rank))
            for rank, plan in enumerate(plans)
        ]

    def new_generation(self) -> str:
        """Create this save's generation folder (coordinator) and return its name: what
        :meth:`prepare_global_plan` does, for a driver that sends plans as arrays."""
        generation = _GENERATION_PREFIX + (self._save_id or uuid.uuid4().hex)
        self.store.create_generation(generation)
        return generation

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        """Write every item of ``plan`` to this rank's data file(s), tensors as raw bytes.

        Items lie in a file in plan order. A rank with at least 64 MiB to write, on a store
        whose sinks may be written at once (``concurrent_writes``), spreads its items over up to
        ``threads`` files, one thread each, largest items first to the least-filled file (a
        file system serialises writes to one file: Linux takes the inode lock). Else, where
        the sink takes positional writes and the rank writes at least 1 MiB, ``threads``
        threads checksum and write pieces of the items into the one file at once (both
        release the GIL); less is written on the calling thread. Tensors that need a copy first
        (on a GPU, not contiguous) are copied by the thread writing them, so at most
        ``threads`` such copies exist at a time.
        """
        target = plan.storage_data
        if not isinstance(target, _PlanStorageData):
            raise ValueError(
                "the save plan carries no storage data from prepare_global_plan of this writer"
            )
        # objects are encoded now (small); a tensor's byte count is its chunk's
        values, lengths = [], []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                data = data.getbuffer() if isinstance(data, io.BytesIO) else memoryview(bytes(data))
                lengths.append(len(data))
            else:
                lengths.append(_planned_bytes(item))
            values.append(data)
        spread = self._spread(lengths)
        if len(spread) > 1:
            written = self._write_spread(target.file, spread, plan.items, values)
        else:
            with self.store.open_sink(target.file) as sink:
                positional = getattr(sink, "positional", False)  # sinks may be duck-typed
                threaded = None not in lengths and sum(lengths) >= _THREADED_BYTES  # type: ignore[arg-type]
                if positional and self.threads > 1 and threaded:
                    sums = self._write_positional(sink, plan.items, values, lengths)
                else:
                    sums = self._write_in_order(sink, plan.items, values)
            written = _laid_out(target.file, sums)
        results = []
        for item, (file, offset, length, checksums) in zip(plan.items, written):
            region = Region(file, offset, length, self.block_size, checksums, self.checksum)
            results.append(WriteResult(index=item.index, size_in_bytes=length, storage_data=region))
        return _completed(results)

    def _spread(self, lengths: list[int | None]) -> list[list[int]]:
        """Item positions per file, in plan order within a file: one file unless the store
        takes concurrent writes and the rank writes at least ``_SPREAD_BYTES``."""
        one = [list(range(len(lengths)))]
        if None in lengths or self.threads < 2 or not self.store.concurrent_writes:
            return one
        if sum(lengths) < _SPREAD_BYTES:  # type: ignore[arg-type]
            return one
        files: list[list[int]] = [[] for _ in range(self.threads)]
        filled = [0] * self.threads
        for position in sorted(range(len(lengths)), key=lambda p: (-lengths[p], p)):  # type: ignore[operator]
            least = min(range(self.threads), key=lambda f: (filled[f], f))
            files[least].append(position)
            filled[least] += lengths[position]  # type: ignore[operator]
        return [sorted(f) for f in files if f]

    def _write_spread(self, name: str, spread, items, values) -> list[tuple[str, int, int, tuple]]:
        """Write file ``k`` of ``spread`` (``name``, then ``name`` with ``-k`` before ``.bin``)
        on a thread of its own; each item's file, offset, length and checksums."""
        stem = name.removesuffix(".bin")
        names = [name] + [f"{stem}-{k}.bin" for k in range(1, len(spread))]

        def write_file(file: str, positions: list[int]) -> list[tuple[str, int, int, tuple]]:
            with self.store.open_sink(file) as sink:
                sums = self._write_in_order(
                    sink, [items[p] for p in positions], [values[p] for p in positions]
                )
            return _laid_out(file, sums)

        written: list = [None] * len(items)
        pool = _pool(len(spread), "write")
        futures = [pool.submit(write_file, f, positions) for f, positions in zip(names, spread)]
        try:
            for positions, future in zip(spread, futures):
                for p, where in zip(positions, future.result()):
                    written[p] = where
        except BaseException:
            _stop(futures)
            raise
        return written

    def _payload(self, item, value) -> memoryview:
        """The bytes of one resolved item, checked against the byte count the plan gives."""
        if item.type == WriteItemType.BYTE_IO:
            return value
        where = f"write item {item.index.fqn!r} at offsets {tuple(item.index.offset or ())}"
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{where}: the planner resolved a {type(value).__name__}, not a tensor"
            )
        planned = item.tensor_data.properties.dtype if item.tensor_data else value.dtype
        if value.dtype != planned:
            raise ValueError(
                f"{where}: the planner resolved {value.dtype}, the plan says {planned}"
            )
        payload = tensor_bytes(value)
        expected = _planned_bytes(item)
        if expected is not None and len(payload) != expected:
            raise ValueError(
                f"{where}: the planner resolved {len(payload)} bytes, the plan says {expected}"
            )
        return payload

    def _write_in_order(self, sink, items, values) -> list[tuple[int, tuple[int, ...]]]:
        out = []
        for item, value in zip(items, values):
            payload = self._payload(item, value)
            sink.write(payload)
            out.append((len(payload), block_checksums(self.checksum, payload, self.block_size)))
        return out

    def _write_positional(self, sink, items, values, lengths) -> list[tuple[int, tuple[int, ...]]]:
        starts = [0, *accumulate(lengths[:-1])]

        def write_piece(payload, at: int, a: int, b: int) -> tuple[int, ...]:
            view = payload[a:b]
            sink.write_at(at + a, view)
            return block_checksums(self.checksum, view, self.block_size)

        def write_item(item, value, at: int) -> tuple[int, ...]:
            payload = self._payload(item, value)
            return sum(
                (write_piece(payload, at, a, b) for a, b in _pieces(len(payload), self.block_size)),
                (),
            )

        tasks = []  # per item: futures of its pieces, in order
        pool = _pool(self.threads, "write")
        try:
            for item, value, at, length in zip(items, values, starts, lengths):
                if isinstance(value, torch.Tensor):
                    value = value.detach()  # a Parameter's bytes are a view as well
                if isinstance(value, memoryview) or _is_plain_cpu(value):
                    payload = self._payload(item, value)  # a view: nothing is copied here
                    pieces = _pieces(length, self.block_size)
                    tasks.append([pool.submit(write_piece, payload, at, a, b) for a, b in pieces])
                else:
                    tasks.append([pool.submit(write_item, item, value, at)])
            checksums = [sum((f.result() for f in futures), ()) for futures in tasks]
        except BaseException:
            _stop([f for futures in tasks for f in futures])  # no more writes after a failure
            raise
        return list(zip(lengths, checksums))

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Commit the metadata (the checkpoint becomes visible), then drop older generations."""
        regions = {r.index: r.storage_data for rank_results in results for r in rank_results}
        committed = dataclasses.replace(metadata, storage_data=regions)
        current = {r.file.split("/", 1)[0] for r in regions.values()}
        for generation in sorted(current):
            self.store.seal_generation(generation)
        self.store.commit_metadata(dump_metadata(committed))
        if not self.keep_old_generations:
            for generation in self.store.generations():
                if generation not in current:
                    self.store.remove_generation(generation)


class ReferenceStorageReader(StorageReader):
    """Reads the reference format: only the byte ranges a plan needs, checksums verified.

    Args:
        store: where the checkpoint lives.
        verify_checksums: verify every block read against its checksum (default).
        threads: threads reading whole chunks where the store allows concurrent reads
            (default: the CPU count, at most 4).
    """

    def __init__(
        self, store: BlobStore, *, verify_checksums: bool = True, threads: int | None = None
    ):
        self.store = store
        self.verify_checksums = verify_checksums
        self.threads = _threads(threads)
        self.metadata: Metadata | None = None

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        """Forget the metadata read before; a ``checkpoint_id`` must name this store."""
        self.metadata = None
        if checkpoint_id is not None and str(checkpoint_id) != self.store.location:
            raise ValueError(
                f"this reader reads {self.store.location!r}; create a new reader for {str(checkpoint_id)!r}"
            )

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """Stores are explicit objects; no id is claimed implicitly."""
        return False

    def read_metadata(self) -> Metadata:
        """Read and parse the committed metadata as untrusted input."""
        try:
            data = self.store.read_metadata()
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"no committed checkpoint at {self.store.location}: {exc}"
            ) from None
        self.metadata = parse_metadata(data, source=f"{self.store.location} metadata")
        return self.metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Check that every region lies inside its data file before anything is read."""
        self.metadata = metadata
        regions: dict[MetadataIndex, Region] = metadata.storage_data or {}
        sizes: dict[str, int] = {}
        for index, region in regions.items():
            if region.file not in sizes:
                try:
                    sizes[region.file] = self.store.size(region.file)
                except FileNotFoundError:
                    raise IntegrityError(
                        f"{self.store.location}: data file {region.file!r} of key {index.fqn!r} is missing"
                    ) from None
            if region.offset + region.length > sizes[region.file]:
                raise IntegrityError(
                    f"{self.store.location}: key {index.fqn!r} at offsets {_offsets(index)} needs bytes "
                    f"[{region.offset}, {region.offset + region.length}) of {region.file!r}, "
                    f"which has {sizes[region.file]} bytes (truncated?)"
                )
        self._chunk_sizes = {
            MetadataIndex(key, chunk.offsets): tuple(chunk.sizes)
            for key, entry in metadata.state_dict_metadata.items()
            if isinstance(entry, TensorStorageMetadata)
            for chunk in entry.chunks
        }

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Nothing to change locally."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """Nothing to change globally."""
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        """Read each stored item once (the span the plan needs of it) and hand pieces to the planner.

        Objects are read first and, where the planner has ``check_bytes`` (the reference
        planner), decoded before any tensor is written; they reach the planner's
        ``load_bytes`` last, once every tensor has loaded. What can still fail after a
        destination tensor was written: a checksum or length mismatch found in a later chunk
        (each chunk is verified as it is read in place, with no second copy).

        Whole saved chunks read into contiguous CPU destinations are read and verified in place
        by ``threads`` threads where the store allows concurrent reads and the plan reads at
        least 1 MiB (else on this thread);
        the planner is only called from this thread (``resolve_tensor`` before,
        ``commit_tensor`` after, in plan order). At most ``2 * threads`` such chunks are in
        flight, and a destination that shares memory with one in flight (tied weights) waits
        for it, so the last key read wins as in a read in order.
        """
        assert self.metadata is not None, "read_metadata and set_up_storage_reader come first"
        regions: dict[MetadataIndex, Region] = self.metadata.storage_data
        by_item: dict[MetadataIndex, list[ReadItem]] = defaultdict(list)
        for item in plan.items:
            by_item[item.storage_index].append(item)
        threads = self.threads if self.store.concurrent_reads else 1
        if _bytes_to_read(plan, regions) < _THREADED_BYTES:
            threads = 1
        for storage_index in by_item:
            if storage_index not in regions:
                raise IntegrityError(
                    f"{self.store.location}: no data recorded for key {storage_index.fqn!r} at offsets {_offsets(storage_index)}"
                )
        # objects first, and checked (decoded) by a planner that can, before any tensor is
        # written; handed to the planner last, once every tensor has loaded
        objects = {
            storage_index: bytes(
                self._read(regions[storage_index], 0, regions[storage_index].length, storage_index)
            )
            for storage_index, items in by_item.items()
            if items[0].type == LoadItemType.BYTE_IO
        }
        check = getattr(planner, "check_bytes", None)
        for storage_index, data in objects.items():
            for item in by_item[storage_index] if check is not None else ():
                check(item, io.BytesIO(data))
        with _WholeChunkReads(threads, planner) as reads:
            for storage_index, items in by_item.items():
                if storage_index in objects:
                    continue
                region = regions[storage_index]
                shape, dtype = self._stored_as(storage_index)
                target = None  # a destination is resolved once only: a planner may keep state
                if (
                    len(items) == 1
                    and shape is not None
                    and self._whole_chunk(region, items[0], shape, dtype)
                ):
                    target = planner.resolve_tensor(items[0]).detach()
                if target is None or not _fits(target, shape, dtype):
                    reads.drain()
                    self._read_tensor_items(storage_index, region, items, planner, target)
                    continue
                buffer = memoryview(target.reshape(-1).view(torch.uint8).numpy())
                reads.add(
                    items[0],
                    target,
                    [
                        partial(self._read_piece_into, storage_index, region, buffer, a, b)
                        for a, b in _pieces(region.length, region.block_size)
                    ],
                )
        for storage_index, data in objects.items():
            for item in by_item[storage_index]:
                planner.load_bytes(item, io.BytesIO(data))
        return _completed(None)

    def _stored_as(self, storage_index: MetadataIndex) -> tuple[tuple[int, ...] | None, Any]:
        """Shape and dtype of a saved chunk (shape ``None`` if no chunk starts there)."""
        entry = self.metadata.state_dict_metadata[storage_index.fqn]  # type: ignore[union-attr]
        return self._chunk_sizes.get(storage_index), entry.properties.dtype

    def _read_tensor_items(
        self,
        storage_index,
        region: Region,
        items: list[ReadItem],
        planner: LoadPlanner,
        resolved=None,
    ) -> None:
        """Read the span of a saved chunk that ``items`` need and copy each piece out
        (``resolved``: the destination of a single item, if already resolved)."""
        shape, dtype = self._stored_as(storage_index)
        itemsize = dtype.itemsize
        if shape is None:
            raise IntegrityError(
                f"key {storage_index.fqn!r}: no saved chunk starts at offsets {_offsets(storage_index)}"
            )
        strides = row_major_strides(shape)
        spans = item_spans(items, strides)
        if not spans:
            return
        start = min(s[1] for s in spans) * itemsize
        end = max(s[2] for s in spans) * itemsize
        data = self._read(region, start, end, storage_index)
        base = torch.frombuffer(data, dtype=torch.uint8)
        if base.data_ptr() % dtype.itemsize:
            # a span starting inside a block whose size is no multiple of the element size: an
            # element view of it is misaligned, which some kernels (complex copies) crash on
            base = base.clone()
        base = base.view(dtype)
        for item, first, _ in spans:
            source = base.as_strided(tuple(item.lengths), strides, first - start // itemsize)
            target = resolved if resolved is not None else planner.resolve_tensor(item).detach()
            if tuple(target.shape) != tuple(item.lengths):
                raise IntegrityError(
                    f"key {item.dest_index.fqn!r}: planner gave a destination of shape {tuple(target.shape)} "
                    f"for a read of {tuple(item.lengths)}"
                )
            target.copy_(source)
            planner.commit_tensor(item, target)

    def _whole_chunk(self, region: Region, item: ReadItem, shape, dtype) -> bool:
        """Whether ``item`` reads its whole saved chunk, by the reader's own region reads (a
        subclass that reads regions its own way, overriding ``_read``, must see every read)."""
        return (
            type(self)._read is ReferenceStorageReader._read
            and not any(item.storage_offsets)
            and tuple(item.lengths) == tuple(shape)
            and region.length > 0
            and region.length == math.prod(shape) * dtype.itemsize
        )

    def _read_piece_into(self, index, region: Region, buffer: memoryview, a: int, b: int) -> None:
        """Read bytes ``[a, b)`` of a whole saved chunk into ``buffer[a:b]`` (its destination's
        bytes) and verify them: every block that fails its checksum, or the whole piece after a
        short read, is zeroed before the error is raised, so no unverified byte stays in the
        destination (a failed load may leave other, verified pieces there)."""
        piece = buffer[a:b]
        got = self.store.read_into(region.file, region.offset + a, piece)
        if got != b - a:
            piece[:] = bytes(b - a)
            self._check_length(index, region, a, got, b - a)
        if not self.verify_checksums:
            return
        bad = []
        for block in range(a // region.block_size, -(-b // region.block_size)):
            lo = block * region.block_size
            hi = min(region.length, lo + region.block_size)
            if checksum(region.algorithm, buffer[lo:hi]) != region.checksums[block]:
                buffer[lo:hi] = bytes(hi - lo)
                bad.append(block)
        if bad:
            self._raise_corrupt(index, region, bad[0])

    def _check_length(self, index, region: Region, at: int, got: int, expected: int) -> None:
        """Raise if ``got`` bytes were read of the ``expected`` ones from ``at`` in the region."""
        if got != expected:
            raise IntegrityError(
                f"{self.store.location}: key {index.fqn!r} at offsets {_offsets(index)}: read {got} "
                f"bytes of {region.file!r} at {region.offset + at}, expected {expected} (truncated?)"
            )

    def _check_block(self, index, region: Region, block: int, data) -> None:
        """Raise if ``data`` (checksum block ``block`` of the region) does not match its checksum."""
        if checksum(region.algorithm, data) != region.checksums[block]:
            self._raise_corrupt(index, region, block)

    def _raise_corrupt(self, index, region: Region, block: int) -> None:
        raise IntegrityError(
            f"{self.store.location}: checksum mismatch for key {index.fqn!r} at offsets "
            f"{_offsets(index)}: block {block} of its data in {region.file!r} "
            f"(bytes {region.offset + block * region.block_size}..) is corrupt"
        )

    def _read(self, region: Region, start: int, end: int, index: MetadataIndex) -> memoryview:
        """Bytes ``[start, end)`` of a region, reading whole checksum blocks and verifying them."""
        blocks = region.blocks(start, end)
        if not blocks:
            return memoryview(b"")
        lo = blocks.start * region.block_size
        hi = min(region.length, blocks.stop * region.block_size)
        raw = self.store.read_range(region.file, region.offset + lo, region.offset + hi)
        self._check_length(index, region, lo, len(raw), hi - lo)
        if self.verify_checksums:
            for block in blocks:
                a = block * region.block_size - lo
                self._check_block(index, region, block, raw[a : a + region.block_size])
        return raw[start - lo : end - lo]


def _bytes_to_read(plan: LoadPlan, regions: dict[MetadataIndex, Region]) -> int:
    """At most the stored bytes ``plan`` reads (each stored item's whole region, once)."""
    indices = {item.storage_index for item in plan.items}
    return sum(regions[i].length for i in indices if i in regions)


class _WholeChunkReads:
    """Whole-chunk reads in flight: pieces run on a thread pool (or at once on this thread when
    ``threads`` is 1), items are committed to the planner on this thread in the order added.

    At most ``2 * threads`` items are in flight: a planner that stages each destination (a
    dtype cast) holds that many staging tensors at most. A destination whose memory overlaps
    one in flight waits until those are done. On an error nothing more is started.
    """

    def __init__(self, threads: int, planner: LoadPlanner):
        self.pool = _pool(threads, "read") if threads > 1 else None
        self.limit = 2 * threads
        self.planner = planner
        # (item, destination, its bytes in memory, futures of its pieces), in the order added
        self.pending: deque[tuple[ReadItem, Any, tuple[int, int], list]] = deque()
        self.spans: list[tuple[int, int]] = []  # destination bytes in flight, sorted, disjoint

    def __enter__(self) -> _WholeChunkReads:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                self.drain()
        finally:
            _stop([f for *_, futures in self.pending for f in futures])

    def add(self, item: ReadItem, target, pieces: list) -> None:
        """Read ``pieces`` (callables) into ``target``, then commit ``item``."""
        span = (target.data_ptr(), target.data_ptr() + target.numel() * target.element_size())
        if self._overlaps(span):
            self.drain()
        while len(self.pending) >= self.limit:
            self._commit_oldest()
        if self.pool is None:
            for piece in pieces:
                piece()
            self.planner.commit_tensor(item, target)
            return
        self.pending.append((item, target, span, [self.pool.submit(piece) for piece in pieces]))
        bisect.insort(self.spans, span)

    def drain(self) -> None:
        """Wait for every read in flight and commit its item."""
        while self.pending:
            self._commit_oldest()

    def _commit_oldest(self) -> None:
        item, target, span, futures = self.pending[0]
        for future in futures:
            future.result()
        self.pending.popleft()
        self.spans.remove(span)
        self.planner.commit_tensor(item, target)

    def _overlaps(self, span: tuple[int, int]) -> bool:
        at = bisect.bisect_left(self.spans, span)
        before = self.spans[at - 1] if at > 0 else None
        after = self.spans[at] if at < len(self.spans) else None
        return (before is not None and before[1] > span[0]) or (
            after is not None and after[0] < span[1]
        )


def _laid_out(
    file: str, sums: list[tuple[int, tuple[int, ...]]]
) -> list[tuple[str, int, int, tuple]]:
    """``(file, offset, length, checksums)`` of items written one after another into ``file``,
    from each one's ``(length, checksums)``."""
    starts = [0, *accumulate(length for length, _ in sums)]
    return [(file, at, length, checksums) for at, (length, checksums) in zip(starts, sums)]


def _planned_bytes(item) -> int | None:
    """Bytes of a tensor write item by its chunk (``None`` if it carries no tensor data)."""
    data = item.tensor_data
    if data is None:
        return item.tensor_storage_size()
    return math.prod(data.chunk.sizes) * data.properties.dtype.itemsize


def _is_plain_cpu(value) -> bool:
    """Whether a resolved tensor's bytes are a view of it (no copy to make)."""
    return (
        isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and value.is_contiguous()
        and not value.is_conj()
        and not value.is_neg()
        and type(value) is torch.Tensor
    )


def _fits(target, shape, dtype) -> bool:
    """Whether a destination can take a saved chunk's bytes as they are."""
    return (
        target.device.type == "cpu"
        and target.dtype == dtype
        and target.is_contiguous()
        and tuple(target.shape) == tuple(shape)
        # a size-1 dim keeps any stride through is_contiguous(): a one-element slice of
        # step 2 cannot be viewed as bytes
        and target.reshape(-1).stride(0) == 1
    )


def _offsets(index: MetadataIndex) -> tuple[int, ...] | None:
    return tuple(index.offset) if index.offset is not None else None


def iter_generations(names: Iterator[str]) -> list[str]:
    """The generation folder names among ``names``."""
    return sorted(n for n in names if n.startswith(_GENERATION_PREFIX))
