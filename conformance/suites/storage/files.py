"""A saved checkpoint's files: where each chunk's bytes lie in them, and changing those bytes.

Backend files are opaque to the suite: the saved bytes of a chunk are found by searching
the files for the value-encoded bytes of that chunk (see :mod:`ckptconf.conformance.kit.cases`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...kit.cases import SaveLoadCase, encoded_tensor

__all__ = [
    "DataSpan",
    "checkpoint_files",
    "data_spans",
    "describe_offset",
    "find_all",
    "nonempty_files",
    "set_byte",
    "truncate_file",
]

MIN_PATTERN = 8  # bytes: shorter chunk data could match anywhere


@dataclass(frozen=True)
class DataSpan:
    """Where the saved bytes of one chunk were found in a file of the checkpoint."""

    file: str
    start: int
    end: int
    label: str
    unique: bool  # the only place these bytes were found: a reader cannot get them elsewhere


def checkpoint_files(path: str) -> list[str]:
    """Every regular file under ``path``, relative, sorted."""
    out = []
    for root, _, names in os.walk(path):
        out += [os.path.relpath(os.path.join(root, n), path) for n in names]
    return sorted(f for f in out if os.path.isfile(os.path.join(path, f)))


def find_all(data: bytes, pattern: bytes) -> list[int]:
    found, start = [], data.find(pattern)
    while start >= 0:
        found.append(start)
        start = data.find(pattern, start + 1)
    return found


def data_spans(path: str, files: list[str], case: SaveLoadCase, summary: dict) -> list[DataSpan]:
    """The saved bytes of every chunk the metadata lists, found in the files by their value."""
    import torch

    contents = {f: Path(path, f).read_bytes() for f in files}
    spans = []
    for spec in case.tensors:
        entry = summary.get(spec.key, {})
        if entry.get("kind") != "tensor" or entry.get("size") != tuple(spec.shape):
            continue
        full = encoded_tensor(spec.shape, spec.dtype, spec.salt)
        for offsets, sizes in entry["chunks"]:
            piece = full[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))]
            pattern = piece.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if len(pattern) < MIN_PATTERN:
                continue
            hits = [(f, i) for f, data in contents.items() for i in find_all(data, pattern)]
            label = f"the saved bytes of {spec.key!r} (chunk at offsets {tuple(offsets)}, sizes {tuple(sizes)})"
            spans += [DataSpan(f, i, i + len(pattern), label, len(hits) == 1) for f, i in hits]
    return spans


def describe_offset(spans: list[DataSpan], file: str, offset: int) -> str:
    for s in spans:
        if s.file == file and s.start <= offset < s.end:
            return f"byte {offset - s.start} of {s.label}"
    return "outside every chunk's saved bytes found"


def set_byte(path: str, file: str, offset: int, change: Callable[[int], int]) -> int:
    """Replace byte ``offset`` of ``file`` by ``change(old)``; return the old byte."""
    target = Path(path, file)
    data = bytearray(target.read_bytes())
    old = data[offset]
    data[offset] = change(old)
    target.write_bytes(bytes(data))
    return old


def nonempty_files(path: str, files: list[str]) -> list[str]:
    return [f for f in files if os.path.getsize(os.path.join(path, f))]


def truncate_file(path: str, file: str, size: int) -> int:
    target = Path(path, file)
    before = target.stat().st_size
    os.truncate(target, size)
    return before
