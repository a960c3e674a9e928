"""A saved checkpoint's stored objects: where each chunk's bytes lie in them, and changing them.

Backend objects are opaque to the suite: the saved bytes of a chunk are found by searching
the objects for the value-encoded bytes of that chunk (see
:mod:`ckptconf.conformance.kit.cases`). Objects are reached through the backend's
:class:`~ckptconf.conformance.StoredObjects` (files under the path by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...kit.cases import SaveLoadCase, encoded_tensor
from ...stored import StoredObjects

__all__ = [
    "DataSpan",
    "data_spans",
    "describe_offset",
    "find_all",
    "nonempty_files",
    "truncate_file",
]

MIN_PATTERN = 8  # bytes: shorter chunk data could match anywhere


@dataclass(frozen=True)
class DataSpan:
    """Where the saved bytes of one chunk were found in an object of the checkpoint."""

    file: str
    start: int
    end: int
    label: str
    unique: bool  # the only place these bytes were found: a reader cannot get them elsewhere


def find_all(data: bytes, pattern: bytes) -> list[int]:
    found, start = [], data.find(pattern)
    while start >= 0:
        found.append(start)
        start = data.find(pattern, start + 1)
    return found


def data_spans(
    store: StoredObjects, files: list[str], case: SaveLoadCase, summary: dict
) -> list[DataSpan]:
    """The saved bytes of every chunk the metadata lists, found in the objects by their value."""
    import torch

    contents = {f: store.read(f) for f in files}
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


def nonempty_files(store: StoredObjects, files: list[str]) -> list[str]:
    return [f for f in files if store.size(f)]


def truncate_file(store: StoredObjects, file: str, size: int) -> int:
    """Cut ``file`` to its first ``size`` bytes; return its size before."""
    data = store.read(file)
    store.write(file, data[:size])
    return len(data)
