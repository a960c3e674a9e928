"""Inspect and verify a checkpoint on disk without trusting it: ckptconf's format and torch DCP's.

:func:`open_checkpoint` reads what a checkpoint folder says it holds: the reference format
(``ckptconf.json``, JSON with per-block checksums) or torch DCP's filesystem layout
(``.metadata``, a pickle read by :func:`~.dcp_metadata.load_dcp_metadata`, which runs no
code, and ``*.distcp`` data files), or DCP's HuggingFace layout (``*.safetensors`` files, their
JSON headers and the ``DCP_SHARDING_INFO`` offsets in them). :func:`verify` checks that it is whole: every tensor
tiled by its chunks with no gap or overlap, every stored item inside an existing file,
checksums where the format has them (ckptconf), every DCP tensor item readable with
``torch.load(weights_only=True)`` as the shape and dtype its chunk says, and returns every
problem found. A training job can call ``verify`` before it deletes the previous checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)

from .checksums import checksum
from .dcp_metadata import load_dcp_metadata
from .errors import MetadataFormatError, UnknownFormatError
from .filesystem import METADATA_FILE
from .metadata_format import Region, dtype_name, parse_metadata
from .validation import chunk_layout_problems

__all__ = [
    "CheckpointView",
    "ChunkView",
    "EntryView",
    "Problem",
    "Read",
    "layout_reads",
    "open_checkpoint",
    "parse_layout",
    "render_layout",
    "render_tree",
    "verify",
]

DCP_METADATA_FILE = ".metadata"


@dataclass(frozen=True)
class ChunkView:
    """One stored item: a tensor chunk (``offsets``, ``sizes``) or a bytes entry (both
    ``None``), at bytes ``[start, start + length)`` of ``file`` (relative to the checkpoint)."""

    offsets: tuple[int, ...] | None
    sizes: tuple[int, ...] | None
    file: str | None
    start: int | None
    length: int | None
    checksums: tuple[int, ...] = ()
    """Checksum per block of ``block_size`` bytes by ``algorithm`` (ckptconf format), else empty."""
    block_size: int | None = None
    algorithm: str | None = None


@dataclass(frozen=True)
class EntryView:
    """One key of the checkpoint: a tensor (``dtype``, ``shape``) or ``bytes``."""

    key: str
    kind: str
    dtype: str | None
    shape: tuple[int, ...] | None
    chunks: tuple[ChunkView, ...]


@dataclass(frozen=True)
class CheckpointView:
    """What a checkpoint folder says it holds."""

    path: str
    format: str
    """``"ckptconf"``, ``"torch-dcp"`` or ``"safetensors"`` (DCP's HuggingFace layout)."""
    version: str
    entries: tuple[EntryView, ...]
    files: dict[str, int] = field(default_factory=dict)
    """Every regular file under the folder, relative name -> size in bytes."""

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "path": self.path,
            "format": self.format,
            "version": self.version,
            "files": dict(sorted(self.files.items())),
            "entries": [
                {
                    "key": e.key,
                    "kind": e.kind,
                    "dtype": e.dtype,
                    "shape": list(e.shape) if e.shape is not None else None,
                    "chunks": [
                        {
                            "offsets": list(c.offsets) if c.offsets is not None else None,
                            "sizes": list(c.sizes) if c.sizes is not None else None,
                            "file": c.file,
                            "start": c.start,
                            "length": c.length,
                        }
                        for c in e.chunks
                    ],
                }
                for e in self.entries
            ],
        }


@dataclass(frozen=True)
class Problem:
    """Something that keeps a checkpoint from being whole, with where it is."""

    what: str
    key: str | None = None
    chunk: tuple[int, ...] | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.key is not None:
            where.append(f"key {self.key!r}")
        if self.chunk is not None:
            where.append(f"chunk at {self.chunk}")
        if self.file is not None:
            where.append(f"file {self.file!r}")
        return f"{', '.join(where) or 'checkpoint'}: {self.what}"


def _files(root: Path) -> dict[str, int]:
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = Path(folder, name)
            if full.is_file():
                found[full.relative_to(root).as_posix()] = full.stat().st_size
    return found


def _entries(metadata: Metadata, location) -> tuple[EntryView, ...]:
    """Entries of ``metadata``; ``location(index)`` gives a stored item's ChunkView fields."""
    entries = []
    for key, meta in sorted(metadata.state_dict_metadata.items()):
        if isinstance(meta, TensorStorageMetadata):
            chunks = tuple(
                ChunkView(
                    tuple(c.offsets), tuple(c.sizes), **location(MetadataIndex(key, c.offsets, i))
                )
                for i, c in enumerate(meta.chunks)
            )
            entries.append(
                EntryView(
                    key, "tensor", dtype_name(meta.properties.dtype), tuple(meta.size), chunks
                )
            )
        elif isinstance(meta, BytesStorageMetadata):
            chunk = ChunkView(None, None, **location(MetadataIndex(key)))
            entries.append(EntryView(key, "bytes", None, None, (chunk,)))
        else:
            entries.append(EntryView(key, type(meta).__name__, None, None, ()))
    return tuple(entries)


def _lookup(storage: dict, index: MetadataIndex):
    """The storage entry of ``index``: exact, else by fqn and offset (DCP's index hint may
    differ), else ``None``."""
    if index in storage:
        return storage[index]
    for other, value in storage.items():
        if other.fqn == index.fqn and other.offset == index.offset:
            return value
    return None


def _reference_location(storage: dict):
    def location(index: MetadataIndex) -> dict[str, Any]:
        region: Region | None = _lookup(storage, index)
        if region is None:
            return {"file": None, "start": None, "length": None}
        return {
            "file": region.file,
            "start": region.offset,
            "length": region.length,
            "checksums": tuple(region.checksums),
            "block_size": region.block_size,
            "algorithm": region.algorithm,
        }

    return location


def _dcp_location(storage: dict):
    def location(index: MetadataIndex) -> dict[str, Any]:
        info = _lookup(storage, index)
        if info is None:
            return {"file": None, "start": None, "length": None}
        return {
            "file": str(getattr(info, "relative_path", None)),
            "start": int(getattr(info, "offset", 0)),
            "length": int(getattr(info, "length", 0)),
        }

    return location


def open_checkpoint(path: str | os.PathLike) -> CheckpointView:
    """Read what the checkpoint folder ``path`` holds, without loading tensor data.

    Raises:
        FileNotFoundError: nothing at ``path``, or an empty folder.
        UnknownFormatError: ``path`` holds something, but not a format this reads (a single
            file, another layout).
        MetadataFormatError: the metadata is malformed (``UnsafeMetadataError`` for a DCP
            pickle referencing anything but DCP's metadata classes).
    """
    root = Path(path)
    if root.is_file():
        raise UnknownFormatError(
            f"{root}: a single file; the formats ckptconf reads are folders (the ckptconf "
            f"format's {METADATA_FILE}, torch DCP's {DCP_METADATA_FILE}, DCP's safetensors shards)"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such checkpoint folder")
    files = _files(root)
    if (root / METADATA_FILE).is_file():
        data = (root / METADATA_FILE).read_bytes()
        metadata = parse_metadata(data, source=str(root / METADATA_FILE))
        entries = _entries(metadata, _reference_location(metadata.storage_data or {}))
        return CheckpointView(str(root), "ckptconf", "1", entries, files)
    if (root / DCP_METADATA_FILE).is_file():
        data = (root / DCP_METADATA_FILE).read_bytes()
        metadata = load_dcp_metadata(data, source=str(root / DCP_METADATA_FILE))
        storage = metadata.storage_data if isinstance(metadata.storage_data, dict) else {}
        version = str(getattr(metadata, "version", None) or "unversioned")
        return CheckpointView(
            str(root), "torch-dcp", version, _entries(metadata, _dcp_location(storage)), files
        )
    if any(name.endswith(".safetensors") for name in files):
        return _open_safetensors(root, files)
    if not files:
        raise FileNotFoundError(f"{root}: an empty folder, no checkpoint")
    raise UnknownFormatError(
        f"{root}: not a checkpoint format ckptconf reads (no {METADATA_FILE} of the ckptconf "
        f"format, no {DCP_METADATA_FILE} of torch DCP's filesystem layout, no safetensors "
        f"shards); files: {sorted(files)[:10]}"
    )


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
_MAX_HEADER = 100 << 20  # bytes: the safetensors library's own limit


def _bad(file: str, message: str) -> MetadataFormatError:
    """A format error about ``file`` (relative), which :func:`verify` reports as its file."""
    error = MetadataFormatError(message)
    error.file = file
    return error


def _safetensors_header(root: Path, name: str, size: int) -> tuple[int, dict]:
    """``(data start, header)`` of a safetensors file, checked as untrusted input."""
    where = f"{root / name}"
    with open(root / name, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise _bad(name, f"{where}: {size} bytes, too short for a safetensors header")
        length = int.from_bytes(head, "little")
        if length > min(_MAX_HEADER, size - 8):
            raise _bad(
                name, f"{where}: header length {length} exceeds the file ({size} bytes) or 100 MiB"
            )
        try:
            header = json.loads(file.read(length))
        except ValueError as exc:
            raise _bad(name, f"{where}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad(name, f"{where}: header is a {type(header).__name__}, not an object")
    return 8 + length, header


def _sharding_offsets(header: dict, name: str, where: str) -> dict[str, list[int]]:
    info = header.get("__metadata__", {}).get("DCP_SHARDING_INFO")
    if info is None:
        return {}
    try:
        return {key: list(v["saved_offsets"]) for key, v in json.loads(info).items()}
    except (ValueError, TypeError, KeyError) as exc:
        raise _bad(name, f"{where}: DCP_SHARDING_INFO unreadable ({exc})") from exc


def _open_safetensors(root: Path, files: dict[str, int]) -> CheckpointView:
    """DCP's HuggingFace layout: tensors in ``*.safetensors`` files, each a chunk at the offsets
    its header's ``DCP_SHARDING_INFO`` gives (zeros without it); a global shape is the end of
    the furthest chunk (the layout does not store it)."""
    chunks: dict[str, list[ChunkView]] = {}
    dtypes: dict[str, str] = {}
    versions = set()
    for name in sorted(n for n in files if n.endswith(".safetensors")):
        where = f"{root / name}"
        start, header = _safetensors_header(root, name, files[name])
        versions.add(str(header.get("__metadata__", {}).get("DCP_VERSION", "none")))
        offsets = _sharding_offsets(header, name, where)
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            try:
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                shape = tuple(int(n) for n in entry["shape"])
                begin, end = (int(n) for n in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad(name, f"{where}: entry {key!r} malformed ({exc!r})") from exc
            if dtypes.setdefault(key, dtype) != dtype:
                raise _bad(
                    name, f"{where}: {key!r} is {dtype} here and {dtypes[key]} in another file"
                )
            at = tuple(offsets.get(key, [0] * len(shape)))
            if len(at) != len(shape) or min(shape + at, default=0) < 0:
                raise _bad(name, f"{where}: {key!r} offsets {at} do not fit shape {shape}")
            itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
            if end - begin != math.prod(shape) * itemsize or begin < 0:
                raise _bad(
                    name,
                    f"{where}: {key!r} data_offsets [{begin}, {end}) do not hold {dtype}{list(shape)}",
                )
            chunks.setdefault(key, []).append(
                ChunkView(at, shape, name, start + begin, end - begin)
            )
    entries = []
    for key, pieces in sorted(chunks.items()):
        shape = tuple(
            max(c.offsets[d] + c.sizes[d] for c in pieces) for d in range(len(pieces[0].sizes))
        )
        entries.append(EntryView(key, "tensor", dtypes[key], shape, tuple(pieces)))
    version = ",".join(sorted(versions))
    return CheckpointView(str(root), "safetensors", version, tuple(entries), files)


def _read(root: Path, chunk: ChunkView) -> bytes:
    with open(root / chunk.file, "rb") as file:
        file.seek(chunk.start)
        return file.read(chunk.length)


def _chunk_problems(view: CheckpointView, entry: EntryView, chunk: ChunkView) -> list[Problem]:
    root = Path(view.path)
    at = {"key": entry.key, "chunk": chunk.offsets, "file": chunk.file}
    if chunk.file is None:
        return [Problem("the metadata lists it but says nowhere where it is stored", **at)]
    if chunk.file not in view.files:
        return [Problem("the data file does not exist", **at)]
    end, size = chunk.start + chunk.length, view.files[chunk.file]
    if chunk.start < 0 or end > size:
        return [
            Problem(
                f"bytes [{chunk.start}, {end}) lie beyond the end of the file ({size} bytes)", **at
            )
        ]
    if chunk.checksums:
        data = _read(root, chunk)
        for block, expected in enumerate(chunk.checksums):
            piece = data[block * chunk.block_size : (block + 1) * chunk.block_size]
            if checksum(chunk.algorithm, piece) != expected:
                first = chunk.start + block * chunk.block_size
                return [
                    Problem(f"checksum mismatch in block {block} (file bytes from {first})", **at)
                ]
        return []
    if view.format == "torch-dcp" and entry.kind == "tensor":
        return _dcp_tensor_problems(_read(root, chunk), entry, chunk, at)
    return []


def _dcp_tensor_problems(data: bytes, entry: EntryView, chunk: ChunkView, at) -> list[Problem]:
    """A DCP tensor item is a ``torch.save`` archive of the chunk: it must load (weights only)
    as a tensor of the chunk's sizes and the entry's dtype."""
    try:
        tensor = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure to read is the problem reported
        return [
            Problem(
                f"its bytes do not load as a tensor ({type(exc).__name__}: {str(exc)[:200]})", **at
            )
        ]
    if not isinstance(tensor, torch.Tensor):
        return [Problem(f"its bytes hold a {type(tensor).__name__}, not a tensor", **at)]
    if tuple(tensor.shape) != chunk.sizes or dtype_name(tensor.dtype) != entry.dtype:
        return [
            Problem(
                f"its bytes hold {dtype_name(tensor.dtype)}{list(tensor.shape)}, the metadata "
                f"says {entry.dtype}{list(chunk.sizes)}",
                **at,
            )
        ]
    return []


def verify(path: str | os.PathLike) -> list[Problem]:
    """Every problem that keeps the checkpoint at ``path`` from being whole; empty when whole.

    Checks: the metadata reads (safely); each tensor's chunks tile it with no gap, overlap or
    chunk out of bounds; each stored item lies inside an existing file; block checksums
    (ckptconf format); each DCP tensor item loads as its chunk's shape and dtype. Never raises
    for a broken checkpoint: an unreadable one is one problem.

    Raises:
        UnknownFormatError: ``path`` is not in a format this reads, so nothing can be said of
            it (it is not reported as broken).
    """
    try:
        view = open_checkpoint(path)
    except (OSError, MetadataFormatError) as exc:
        return [Problem(str(exc), file=getattr(exc, "file", None))]
    problems: list[Problem] = []
    for entry in view.entries:
        if entry.kind == "tensor":
            chunks = [
                ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes))
                for c in entry.chunks
            ]
            problems += [
                Problem(p.removeprefix(f"key {entry.key!r}: "), key=entry.key)
                for p in chunk_layout_problems(entry.key, entry.shape, chunks)
            ]
        elif entry.kind != "bytes":
            problems.append(Problem(f"unknown entry kind {entry.kind}", key=entry.key))
        for chunk in entry.chunks:
            problems += _chunk_problems(view, entry, chunk)
    return problems


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _where(chunk: ChunkView) -> str:
    if chunk.file is None:
        return "(stored nowhere)"
    return f"{chunk.file} [{chunk.start}, {chunk.start + chunk.length})"


def render_tree(view: CheckpointView, *, key: str | None = None) -> str:
    """The checkpoint as text: a header, then per key its dtype and global shape and each chunk
    as a box of index ranges with the file and byte range holding it. ``key``: only keys
    matching this ``fnmatch`` pattern."""
    from fnmatch import fnmatchcase

    entries = [e for e in view.entries if key is None or fnmatchcase(e.key, key)]
    tensors = sum(e.kind == "tensor" for e in view.entries)
    lines = [
        f"{view.path}: {view.format} checkpoint, version {view.version}",
        f"{len(view.entries)} entries ({tensors} tensors, {len(view.entries) - tensors} bytes), "
        f"{_size(sum(view.files.values()))} in {len(view.files)} files",
    ]
    if key is not None:
        lines.append(f"{len(entries)} entries match {key!r}")
    for entry in entries:
        if entry.kind != "tensor":
            where = _where(entry.chunks[0]) if entry.chunks else ""
            lines.append(f"{entry.key}  {entry.kind}  {where}")
            continue
        count = len(entry.chunks)
        lines.append(
            f"{entry.key}  {entry.dtype}{list(entry.shape)}  {count} chunk{'s' * (count != 1)}"
        )
        for chunk in entry.chunks:
            box = ", ".join(f"{o}:{o + n}" for o, n in zip(chunk.offsets, chunk.sizes))
            lines.append(f"  [{box}]  {_where(chunk)}")
    return "\n".join(lines) + "\n"


_LAYOUT = re.compile(r"^\s*mesh=\(([\d,\s]+)\)\s+placements=\[(.*)\]\s*$")
_PLACEMENT = re.compile(r"^(?:Shard\((\d+)\)|S(\d+)|Replicate\(\)|R)$")


def parse_layout(text: str) -> tuple[tuple[int, ...], tuple[Any, ...]]:
    """``"mesh=(2,4) placements=[Shard(0),Replicate()]"`` -> mesh shape and DTensor placements
    (``Shard(d)``/``S<d>``, ``Replicate()``/``R``, one per mesh dim).

    Raises:
        ValueError: the text is not of that form; the message shows the form.
    """
    from torch.distributed.tensor import Replicate, Shard

    form = 'expected e.g. "mesh=(2,4) placements=[Shard(0),Replicate()]"'
    found = _LAYOUT.match(text)
    if not found:
        raise ValueError(f"layout {text!r}: {form}")
    mesh = tuple(int(n) for n in found.group(1).replace(" ", "").split(",") if n)
    names = [p.strip() for p in found.group(2).split(",") if p.strip()]
    placements = []
    for name in names:
        kind = _PLACEMENT.match(name)
        if not kind:
            raise ValueError(f"layout {text!r}: placement {name!r} is not Shard(d) or Replicate()")
        dim = kind.group(1) or kind.group(2)
        placements.append(Shard(int(dim)) if dim is not None else Replicate())
    if not mesh or len(placements) != len(mesh) or min(mesh) < 1:
        raise ValueError(f"layout {text!r}: one placement per mesh dim of size >= 1; {form}")
    return mesh, tuple(placements)


@dataclass(frozen=True)
class Read:
    """What one destination rank reads of one saved chunk for one key."""

    rank: int
    key: str
    box: tuple[tuple[int, int], ...]
    """The destination piece's index ranges that this chunk supplies."""
    chunk: ChunkView
    needed: int
    """Bytes of the chunk the rank needs."""


def layout_reads(
    view: CheckpointView,
    mesh: tuple[int, ...],
    placements: tuple[Any, ...],
    *,
    key: str | None = None,
) -> tuple[list[Read], list[str]]:
    """Which saved chunks each rank of a DTensor layout (``mesh`` shape, ``placements``) reads
    for every tensor (``key``: matching ``fnmatch`` pattern), and how many of their bytes it
    needs; and the keys the layout cannot place (a Shard dim beyond the tensor's dims)."""
    from fnmatch import fnmatchcase

    from .geometry import local_pieces, mesh_coordinates

    reads, skipped = [], []
    for entry in view.entries:
        if entry.kind != "tensor" or (key is not None and not fnmatchcase(entry.key, key)):
            continue
        dims = [getattr(p, "dim", None) for p in placements]
        if any(d is not None and d >= len(entry.shape) for d in dims):
            skipped.append(entry.key)
            continue
        itemsize = torch.empty((), dtype=getattr(torch, entry.dtype)).element_size()
        for rank, coordinate in enumerate(mesh_coordinates(mesh)):
            for piece in local_pieces(entry.shape, mesh, placements, coordinate):
                if 0 in piece.sizes and piece.sizes:
                    continue
                for chunk in entry.chunks:
                    box = []
                    for o, n, co, cn in zip(
                        piece.global_offsets, piece.sizes, chunk.offsets, chunk.sizes
                    ):
                        lo, hi = max(o, co), min(o + n, co + cn)
                        box.append((lo, hi))
                    if all(lo < hi for lo, hi in box):
                        volume = math.prod(hi - lo for lo, hi in box)
                        reads.append(Read(rank, entry.key, tuple(box), chunk, volume * itemsize))
    return reads, skipped


def render_layout(view: CheckpointView, text: str, *, key: str | None = None) -> str:
    """Per destination rank of the layout ``text`` (see :func:`parse_layout`): each saved chunk
    it reads, the bytes it needs of it, and per rank the bytes of the stored items it touches
    (what a reader that loads whole items reads; a ranged reader reads about ``needed``)."""
    mesh, placements = parse_layout(text)
    reads, skipped = layout_reads(view, mesh, placements, key=key)
    ranks = math.prod(mesh)
    lines = [f"{view.path}: read under mesh={mesh} placements={list(placements)}, {ranks} ranks"]
    total_needed = total_touched = 0
    for rank in range(ranks):
        mine = [r for r in reads if r.rank == rank]
        needed = sum(r.needed for r in mine)
        touched = sum({(r.chunk.file, r.chunk.start): r.chunk.length or 0 for r in mine}.values())
        total_needed, total_touched = total_needed + needed, total_touched + touched
        lines.append(
            f"rank {rank}: {len(mine)} read(s), needs {_size(needed)}, "
            f"items touched hold {_size(touched)}"
        )
        for r in mine:
            box = ", ".join(f"{lo}:{hi}" for lo, hi in r.box)
            lines.append(f"  {r.key}[{box}] <- {_where(r.chunk)}  {_size(r.needed)}")
    lines.append(
        f"all ranks: need {_size(total_needed)}, items touched hold {_size(total_touched)}"
    )
    if skipped:
        lines.append(f"not placeable under this layout (a Shard dim beyond their dims): {skipped}")
    return "\n".join(lines) + "\n"
