"""Planted bugs in storage writers and readers, and in the metadata they commit."""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemReader, FileSystemWriter, IntegrityError
from ckptconf.reference.filesystem import METADATA_FILE, DirectoryStore
from ckptconf.reference.metadata_format import parse_metadata
from ckptconf.reference.storage import BlobSink, ReferenceStorageReader, ReferenceStorageWriter
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.storage import WriteResult

from ._common import HookedSavePlanner, log, planted_backend

__all__ = [
    "ranged_read_off_by_bytes",
    "last_chunk_skipped",
    "empty_shards_dropped",
    "truncated_final_write",
    "reader_ignores_storage_offsets",
    "checksum_not_verified",
    "overwrites_in_place",
    "prefix_listing",
    "zero_fill_short_read",
    "read_errors_become_zeros",
    "stale_metadata_cache",
    "resave_leaves_old_keys",
    "metadata_missing_bytes_entries",
]

PAGE = 4096


# --- ranged read off by some bytes ---------------------------------------------------------------


class PageAlignedReader(FileSystemReader):
    """Reads from the page boundary below a range's start, and forgets to skip to the start."""

    def _read(self, region, start, end, index) -> memoryview:
        aligned = start - start % PAGE
        data = super()._read(region, aligned, end, index)
        return data[: end - start]


def ranged_read_off_by_bytes() -> Backend:
    """A partial read returns bytes from the page boundary below its start: shifted by start % 4096 bytes."""
    return planted_backend(
        "ranged_read_off_by_bytes",
        "page-aligned ranged read that does not skip to the requested start (off by start % 4096 bytes)",
        reader=PageAlignedReader,
    )


# --- last chunk skipped --------------------------------------------------------------------------


class SkipLastReader(FileSystemReader):
    """Loops over the stored items of a read plan with ``range(len(items) - 1)``."""

    def read_data(self, plan, planner):
        order = list(dict.fromkeys(item.storage_index for item in plan.items))
        wanted = {order[i] for i in range(len(order) - 1)}
        items = [item for item in plan.items if item.storage_index in wanted]
        return super().read_data(dataclasses.replace(plan, items=items), planner)


def last_chunk_skipped() -> Backend:
    """The reader never reads the last stored item of its plan (an off-by-one loop bound)."""
    return planted_backend(
        "last_chunk_skipped",
        "reader loops over stored items with range(len - 1): the last chunk of each rank's plan is never read",
        reader=SkipLastReader,
    )


# --- empty shards dropped ------------------------------------------------------------------------


class SkipEmptyWriter(FileSystemWriter):
    """Skips items with no bytes ("nothing to write") and so records no data for them."""

    def write_data(self, plan, planner):
        items = [
            item
            for item in plan.items
            if item.tensor_data is None or math.prod(item.tensor_data.chunk.sizes) > 0
        ]
        return super().write_data(dataclasses.replace(plan, items=items), planner)


def empty_shards_dropped() -> Backend:
    """Empty local shards are not written and get no write result: the checkpoint lacks their chunks."""
    return planted_backend(
        "empty_shards_dropped",
        "writer skips empty shards (no write result): metadata cannot describe their chunks",
        writer=SkipEmptyWriter,
    )


# --- truncated final write reported as success ---------------------------------------------------


class _BlockSink(BlobSink):
    def __init__(self, file, block: int = PAGE):
        self.file, self.block, self.pending = file, block, bytearray()

    def write(self, data) -> None:
        self.pending += bytes(data)
        while len(self.pending) >= self.block:
            self.file.write(self.pending[: self.block])
            del self.pending[: self.block]


class BlockBufferedStore(DirectoryStore):
    """Writes data files in whole 4 KiB blocks and never writes the last partial block."""

    @contextmanager
    def open_sink(self, name: str) -> Iterator[BlobSink]:
        with open(self.path / name, "wb") as file:
            yield _BlockSink(file)
            file.flush()
            os.fsync(file.fileno())


class TailLostWriter(ReferenceStorageWriter):
    """The reference writer over a store that drops each data file's final partial block."""

    def __init__(self, path):
        super().__init__(BlockBufferedStore(path))


def truncated_final_write() -> Backend:
    """Data files lose their final partial 4 KiB block, and the save reports success."""
    return planted_backend(
        "truncated_final_write",
        "buffered writer never flushes its final partial block: truncated data files, save succeeds",
        writer=TailLostWriter,
    )


# --- reader ignores storage offsets --------------------------------------------------------------


class ChunkStartReader(FileSystemReader):
    """Reads every piece from the start of its saved chunk."""

    def read_data(self, plan, planner):
        items = [
            dataclasses.replace(item, storage_offsets=torch.Size([0] * len(item.storage_offsets)))
            for item in plan.items
        ]
        return super().read_data(dataclasses.replace(plan, items=items), planner)


def reader_ignores_storage_offsets() -> Backend:
    """The reader ignores read items' storage offsets: resharded pieces come from the chunk's start."""
    return planted_backend(
        "reader_ignores_storage_offsets",
        "reader ignores ReadItem.storage_offsets and reads each piece from the saved chunk's start",
        reader=ChunkStartReader,
    )


# --- checksum computed but not verified ----------------------------------------------------------


class UnverifiedReader(FileSystemReader):
    """Computes a CRC-32 of what it reads, and never compares it with the recorded one."""

    def __init__(self, path):
        super().__init__(path, verify_checksums=False)
        self.computed: list[int] = []

    def _read(self, region, start, end, index) -> memoryview:
        data = super()._read(region, start, end, index)
        self.computed.append(zlib.crc32(data))
        return data


def checksum_not_verified() -> Backend:
    """Block checksums are recorded and computed on read, but never compared."""
    return planted_backend(
        "checksum_not_verified",
        "checksums computed on read but never compared with the recorded ones",
        reader=UnverifiedReader,
    )


# --- read errors swallowed -----------------------------------------------------------------------


class ZeroFillReader(FileSystemReader):
    """Logs a corrupt, short or missing data file and reads zeros instead of failing."""

    def set_up_storage_reader(self, metadata, is_coordinator, *args, **kwargs) -> None:
        try:
            super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        except IntegrityError as exc:
            log.warning("checkpoint damaged, reading what is there: %s", exc)
            self._chunk_sizes = _chunk_sizes(metadata)

    def _read(self, region, start, end, index) -> memoryview:
        try:
            return super()._read(region, start, end, index)
        except (IntegrityError, OSError) as exc:
            log.warning("unreadable data, using zeros: %s", exc)
            return memoryview(bytearray(end - start))


def _chunk_sizes(metadata: Metadata) -> dict:
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    return {
        MetadataIndex(key, chunk.offsets): tuple(chunk.sizes)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
        for chunk in entry.chunks
    }


def read_errors_become_zeros() -> Backend:
    """Integrity errors (bad checksum, truncated or missing file) are logged and read as zeros."""
    return planted_backend(
        "read_errors_become_zeros",
        "reader logs checksum, truncation and missing-file errors and fills zeros instead of raising",
        reader=ZeroFillReader,
    )


# --- stale data from a previous generation -------------------------------------------------------

_METADATA_CACHE: dict[str, Metadata] = {}


class CachedMetadataReader(FileSystemReader):
    """Caches each checkpoint's parsed metadata by path for the life of the process."""

    def read_metadata(self) -> Metadata:
        location = self.store.location
        if location not in _METADATA_CACHE:
            _METADATA_CACHE[location] = super().read_metadata()
        self.metadata = _METADATA_CACHE[location]
        return self.metadata


def _keep_generations_writer(path) -> FileSystemWriter:
    return FileSystemWriter(path, keep_old_generations=True)


def stale_metadata_cache() -> Backend:
    """Metadata cached by path: after a re-save, a load reads the previous generation's data."""
    return planted_backend(
        "stale_metadata_cache",
        "metadata cached per path: a load after a re-save reads the previous generation (kept on disk)",
        writer=_keep_generations_writer,
        reader=CachedMetadataReader,
    )


# --- re-save leaves old keys ---------------------------------------------------------------------


class MergingWriter(FileSystemWriter):
    """Merges a save into the checkpoint already at its path ("incremental" save)."""

    def __init__(self, path):
        super().__init__(path, keep_old_generations=True)

    def finish(self, metadata, results) -> None:
        try:
            old = parse_metadata(self.store.read_metadata())
        except FileNotFoundError:
            old = None
        if old is not None:
            new_keys = metadata.state_dict_metadata
            entries = {k: v for k, v in old.state_dict_metadata.items() if k not in new_keys}
            carried = [
                WriteResult(index=i, size_in_bytes=r.length, storage_data=r)
                for i, r in (old.storage_data or {}).items()
                if i.fqn in entries
            ]
            metadata = dataclasses.replace(metadata, state_dict_metadata={**entries, **new_keys})
            results = list(results) + [carried]
        super().finish(metadata, results)


def resave_leaves_old_keys() -> Backend:
    """A save into an existing checkpoint keeps the keys the new state no longer has."""
    return planted_backend(
        "resave_leaves_old_keys",
        "re-save merges with the existing checkpoint: keys the new state dropped are still there",
        writer=MergingWriter,
    )


# --- metadata without BytesStorageMetadata -------------------------------------------------------


class TensorOnlyMetadataPlanner(HookedSavePlanner):
    """Builds metadata (and validates it) from tensor write items only."""

    def metadata_for(self, plans, paths):
        metadata = super().metadata_for(plans, paths)
        metadata.state_dict_metadata = {
            k: v
            for k, v in metadata.state_dict_metadata.items()
            if not isinstance(v, BytesStorageMetadata)
        }
        return metadata

    def plan_problems(self, plans, metadata):
        return [
            p
            for p in super().plan_problems(plans, metadata)
            if "has no entry in the metadata" not in p
        ]


def metadata_missing_bytes_entries() -> Backend:
    """Objects are written but the metadata has no BytesStorageMetadata entry for them."""
    return planted_backend(
        "metadata_missing_bytes_entries",
        "metadata built from tensor items only: objects written but missing BytesStorageMetadata",
        save_planner=TensorOnlyMetadataPlanner,
    )


# --- in-place re-save, prefix listing, zero-filled short reads ---------------------------------


class _InPlaceStore(DirectoryStore):
    """Overwrites the same files in place: no generation folders, no truncation, no rename."""

    def create_generation(self, generation: str) -> None:
        (self.path / generation).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def open_sink(self, name: str):
        target = self.path / name
        with open(target, "r+b" if target.exists() else "wb") as file:
            yield _Sink(file)

    def commit_metadata(self, data: bytes) -> None:
        fd = os.open(self.path / METADATA_FILE, os.O_WRONLY | os.O_CREAT, 0o644)  # no O_TRUNC
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


class _Sink:
    def __init__(self, file):
        self.file = file

    def write(self, data) -> None:
        self.file.write(data)


class InPlaceWriter(ReferenceStorageWriter):
    """Writes every save into the same data files and the same metadata file, in place."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(_InPlaceStore(path))

    def storage_meta(self):
        meta = super().storage_meta()
        self._save_id = "in-place"  # the same generation folder for every save
        return meta


def overwrites_in_place() -> Backend:
    """A re-save overwrites files in place without truncating them: a shorter new metadata
    document keeps the old one's tail."""
    return planted_backend(
        "overwrites_in_place",
        "every save writes the same data and metadata files in place, never truncated",
        writer=InPlaceWriter,
    )


class PrefixGlobReader(FileSystemReader):
    """Finds metadata with ``glob(path + "*")``: a sibling whose name extends this one's
    (``step_1`` and ``step_10``) has its keys merged in."""

    def read_metadata(self):
        metadata = super().read_metadata()
        here = Path(self.store.location)
        for other in sorted(here.parent.glob(here.name + "*")):
            if other != here and (other / METADATA_FILE).exists():
                extra = FileSystemReader(other).read_metadata()
                for key, entry in extra.state_dict_metadata.items():
                    metadata.state_dict_metadata.setdefault(key, entry)
        self.metadata = metadata
        return metadata


def prefix_listing() -> Backend:
    """Reads the metadata of every checkpoint whose path starts with this one's."""
    return planted_backend(
        "prefix_listing",
        "metadata found with glob(path + '*'): step_10's keys merged into step_1's",
        reader=PrefixGlobReader,
    )


class _ZeroPaddingStore(DirectoryStore):
    """Pads a short read with zeros and claims every data file is long enough."""

    def read_range(self, name: str, start: int, end: int) -> memoryview:
        data = bytes(super().read_range(name, start, end))
        return memoryview(bytearray(data + b"\0" * (end - start - len(data))))

    def size(self, name: str) -> int:
        super().size(name)  # a missing file is still an error
        return 1 << 62


class ZeroPaddingReader(ReferenceStorageReader):
    """Fills what a short data file lacks with zeros (and verifies no checksum)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(_ZeroPaddingStore(path), verify_checksums=False)


def zero_fill_short_read() -> Backend:
    """A truncated data file loads with zeros where its missing bytes were."""
    return planted_backend(
        "zero_fill_short_read",
        "a short read is padded with zeros and every data file claims to be long enough",
        reader=ZeroPaddingReader,
    )
