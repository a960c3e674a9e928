"""The on-disk metadata format: versioned JSON, no pickle, parsed as untrusted input.

A checkpoint's metadata is one JSON document. Each tensor chunk and each object
names the data region that holds it (file, byte offset, length) and a checksum per
block of the region (XXH3-64, or CRC-32 in checkpoints written before 2026-11-30, the
document's ``checksum``), so a reader can verify just the blocks a ranged read touches.
:func:`parse_metadata` rejects anything that is not exactly this format, naming the
key and the field, and never constructs anything but plain data and DCP dataclasses.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from .checksums import ALGORITHMS, DEFAULT_ALGORITHM
from .compat import metadata_version, new_metadata, new_storage_meta, storage_meta_modules
from .errors import MetadataFormatError
from .serialization import from_json_data, to_json_data
from .validation import chunk_layout_problems

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Region",
    "DTYPES",
    "dtype_name",
    "dump_metadata",
    "parse_metadata",
]

FORMAT_NAME = "ckptconf-checkpoint"
FORMAT_VERSION = 1
_MAX_ELEMENTS = 2**62
_MAX_BYTES = 2**62
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")

DTYPES: dict[str, torch.dtype] = {
    str(v).removeprefix("torch."): v for v in vars(torch).values() if isinstance(v, torch.dtype)
}
"""Every dtype this torch knows, by name; the only dtypes metadata may name."""


def dtype_name(dtype: torch.dtype) -> str:
    """The name a dtype is stored under."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Region:
    """Where one stored item lies: ``length`` bytes at ``offset`` of ``file``, and the checksum
    by ``algorithm`` (a key of :data:`~ckptconf.reference.checksums.ALGORITHMS`) of each block of
    ``block_size`` bytes."""

    file: str
    offset: int
    length: int
    block_size: int
    checksums: tuple[int, ...]
    algorithm: str

    def blocks(self, start: int, end: int) -> range:
        """Indices of the checksum blocks that hold bytes ``[start, end)`` of the region."""
        if end <= start:
            return range(0)
        return range(start // self.block_size, (end - 1) // self.block_size + 1)


def _region_json(region: Region) -> dict[str, Any]:
    return {
        "file": region.file,
        "offset": region.offset,
        "length": region.length,
        "block_size": region.block_size,
        "checksums": list(region.checksums),
    }


def dump_metadata(metadata: Metadata) -> bytes:
    """Encode ``metadata`` (its ``storage_data`` mapping each index to a :class:`Region`, all by
    one checksum algorithm)."""
    regions: dict[MetadataIndex, Region] = metadata.storage_data or {}
    algorithms = {r.algorithm for r in regions.values()}
    if len(algorithms) > 1:
        raise MetadataFormatError(f"regions use several checksum algorithms: {sorted(algorithms)}")
    algorithm = algorithms.pop() if algorithms else DEFAULT_ALGORITHM
    tensors, objects = [], []
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            region = regions.get(MetadataIndex(key))
            if region is None:
                raise MetadataFormatError(
                    f"key {key!r}: no data region was written for this object"
                )
            objects.append({"key": key, "region": _region_json(region)})
            continue
        props = entry.properties
        chunks = []
        for chunk in entry.chunks:
            region = regions.get(MetadataIndex(key, chunk.offsets))
            if region is None:
                raise MetadataFormatError(
                    f"key {key!r}: no data region was written for the chunk at offsets {tuple(chunk.offsets)}"
                )
            chunks.append(
                {
                    "offsets": list(chunk.offsets),
                    "sizes": list(chunk.sizes),
                    "region": _region_json(region),
                }
            )
        tensors.append(
            {
                "key": key,
                "dtype": dtype_name(props.dtype),
                "size": list(entry.size),
                "requires_grad": bool(props.requires_grad),
                "chunks": chunks,
            }
        )
    meta = metadata.storage_meta
    document = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dcp_version": metadata_version(metadata),
        "byteorder": sys.byteorder,
        "checksum": algorithm,
        "tensors": tensors,
        "objects": objects,
        "planner_data": to_json_data(metadata.planner_data, "planner_data"),
        "storage_meta": None
        if meta is None
        else {
            "checkpoint_id": None if meta.checkpoint_id is None else str(meta.checkpoint_id),
            "save_id": meta.save_id,
            "load_id": meta.load_id,
            "modules": storage_meta_modules(meta),
        },
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


class _Fields:
    """Typed access to a JSON object with errors naming where a field is."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise MetadataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        self.obj, self.where = obj, where

    def get(self, name: str, kinds: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if name not in self.obj:
            if optional:
                return None
            raise MetadataFormatError(f"{self.where}: missing field {name!r}")
        value = self.obj[name]
        if value is None and optional:
            return None
        ok = isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in _as_tuple(kinds)
        )
        if not ok:
            raise MetadataFormatError(
                f"{self.where}.{name}: expected {_kind_names(kinds)}, got {type(value).__name__} {str(value)[:60]}"
            )
        return value

    def count(self, name: str, *, positive: bool = False) -> int:
        value = self.get(name, int)
        if value < (1 if positive else 0) or value > _MAX_BYTES:
            raise MetadataFormatError(
                f"{self.where}.{name}: expected an integer in [{1 if positive else 0}, 2**62], got {value}"
            )
        return value

    def counts(self, name: str, length: int | None = None) -> list[int]:
        values = self.get(name, list)
        if length is not None and len(values) != length:
            raise MetadataFormatError(
                f"{self.where}.{name}: expected {length} entries, got {len(values)}"
            )
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > _MAX_ELEMENTS:
                raise MetadataFormatError(
                    f"{self.where}.{name}: expected non-negative integers below 2**62, got {str(values)[:80]}"
                )
        return values


def _as_tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_names(kinds) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kinds))


def _parse_region(obj: Any, where: str, expected_length: int, algorithm: str) -> Region:
    f = _Fields(obj, where)
    file = f.get("file", str)
    if not _FILE_NAME.match(file) or ".." in file.split("/"):
        raise MetadataFormatError(
            f"{where}.file: {file!r} is not a relative data file name (letters, digits, '._-', at most one '/')"
        )
    offset, length = f.count("offset"), f.count("length")
    block_size = f.count("block_size", positive=True)
    if length != expected_length:
        raise MetadataFormatError(
            f"{where}.length: {length} bytes, but the item's shape and dtype need {expected_length}"
        )
    # CRC-32 checkpoints written before 2026-11-30 name the list "crc32"
    name = "crc32" if algorithm == "crc32" and "checksums" not in f.obj else "checksums"
    sums = f.get(name, list)
    blocks = -(-length // block_size)
    if len(sums) != blocks:
        raise MetadataFormatError(
            f"{where}.{name}: expected {blocks} block checksums, got {len(sums)}"
        )
    bits = ALGORITHMS[algorithm][1]
    for c in sums:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < 2**bits:
            raise MetadataFormatError(
                f"{where}.{name}: {algorithm} checksums must be integers in [0, 2**{bits})"
            )
    return Region(file, offset, length, block_size, tuple(sums), algorithm)


def parse_metadata(data: bytes, *, source: str = "metadata") -> Metadata:
    """Parse and check untrusted metadata bytes; ``MetadataFormatError`` names what is wrong."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetadataFormatError(f"{source}: not valid UTF-8 JSON ({exc})") from None
    top = _Fields(document, source)
    if top.get("format", str) != FORMAT_NAME:
        raise MetadataFormatError(
            f"{source}.format: expected {FORMAT_NAME!r}, got {document['format']!r}"
        )
    version = top.get("format_version", int)
    if version != FORMAT_VERSION:
        raise MetadataFormatError(
            f"{source}.format_version: this reader supports version {FORMAT_VERSION}, the file has {version}"
        )
    if top.get("byteorder", str) != sys.byteorder:
        raise MetadataFormatError(
            f"{source}.byteorder: data is {document['byteorder']}-endian, this machine is {sys.byteorder}-endian"
        )
    algorithm = top.get("checksum", str)
    if algorithm not in ALGORITHMS:
        raise MetadataFormatError(
            f"{source}.checksum: expected one of {sorted(ALGORITHMS)}, got {algorithm!r}"
        )
    entries: dict[str, Any] = {}
    regions: dict[MetadataIndex, Region] = {}
    for i, obj in enumerate(top.get("tensors", list)):
        where = f"{source}.tensors[{i}]"
        f = _Fields(obj, where)
        key = f.get("key", str)
        where = f"{where} (key {key!r})"
        f.where = where
        if key in entries:
            raise MetadataFormatError(f"{where}: key appears more than once")
        dtype_text = f.get("dtype", str)
        if dtype_text not in DTYPES:
            raise MetadataFormatError(f"{where}.dtype: unknown dtype {dtype_text!r}")
        dtype = DTYPES[dtype_text]
        size = f.counts("size")
        if math.prod(size) > _MAX_ELEMENTS:
            raise MetadataFormatError(f"{where}.size: {size} holds more than 2**62 elements")
        requires_grad = f.get("requires_grad", bool)
        itemsize = torch.empty((), dtype=dtype).element_size()
        chunks = []
        for j, chunk_obj in enumerate(f.get("chunks", list)):
            cw = f"{where}.chunks[{j}]"
            cf = _Fields(chunk_obj, cw)
            offsets, sizes = cf.counts("offsets", len(size)), cf.counts("sizes", len(size))
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
            for d, (o, s, n) in enumerate(zip(offsets, sizes, size)):
                if o + s > n:
                    raise MetadataFormatError(
                        f"{cw}: dim {d} spans [{o}, {o + s}) outside the tensor's size {n}"
                    )
            index = MetadataIndex(key, chunk.offsets)
            if index in regions:
                raise MetadataFormatError(f"{cw}: two chunks start at offsets {offsets}")
            regions[index] = _parse_region(
                cf.get("region", dict), f"{cw}.region", math.prod(sizes) * itemsize, algorithm
            )
            chunks.append(chunk)
        overlaps = chunk_layout_problems(key, size, chunks, require_cover=False)
        if overlaps:
            raise MetadataFormatError(f"{where}: {'; '.join(overlaps)}")
        entries[key] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype, requires_grad=requires_grad),
            size=torch.Size(size),
            chunks=chunks,
        )
    for i, obj in enumerate(top.get("objects", list)):
        where = f"{source}.objects[{i}]"
        f = _Fields(obj, where)
        key = f.get("key", str)
        if key in entries:
            raise MetadataFormatError(f"{where} (key {key!r}): key appears more than once")
        region_obj = _Fields(f.get("region", dict), f"{where}.region")
        regions[MetadataIndex(key)] = _parse_region(
            region_obj.obj, f"{where} (key {key!r}).region", region_obj.count("length"), algorithm
        )
        entries[key] = BytesStorageMetadata()
    _check_disjoint_regions(regions, source)
    try:
        planner_data = from_json_data(document.get("planner_data"), f"{source}.planner_data")
    except ValueError as exc:
        raise MetadataFormatError(str(exc)) from None
    storage_meta = None
    if top.get("storage_meta", dict, optional=True) is not None:
        m = _Fields(document["storage_meta"], f"{source}.storage_meta")
        modules = m.get("modules", list)
        if not all(isinstance(x, str) for x in modules):
            raise MetadataFormatError(f"{source}.storage_meta.modules: expected a list of strings")
        storage_meta = new_storage_meta(
            checkpoint_id=m.get("checkpoint_id", str, optional=True),
            save_id=m.get("save_id", str, optional=True),
            load_id=m.get("load_id", str, optional=True),
            modules=modules,
        )
    return new_metadata(
        state_dict_metadata=entries,
        planner_data=planner_data,
        storage_data=regions,
        storage_meta=storage_meta,
        version=top.get("dcp_version", str, optional=True),
    )


def _check_disjoint_regions(regions: dict[MetadataIndex, Region], source: str) -> None:
    by_file: dict[str, list[tuple[int, int, MetadataIndex]]] = {}
    for index, r in regions.items():
        if r.length:
            by_file.setdefault(r.file, []).append((r.offset, r.offset + r.length, index))
    for file, spans in by_file.items():
        spans.sort(key=lambda s: s[0])
        for (_, a_end, a), (b_start, _, b) in zip(spans, spans[1:]):
            if b_start < a_end:
                raise MetadataFormatError(
                    f"{source}: data of key {a.fqn!r} and key {b.fqn!r} overlap in file {file!r} "
                    f"at bytes [{b_start}, {a_end})"
                )
