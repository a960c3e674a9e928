"""The coverage oracle: does a set of chunks tile a tensor, and does metadata describe a state.

Coverage is checked by counting: every chunk adds one to the elements it covers (a numpy
slice), then an element counted twice is an overlap and one counted zero times a gap.
This is simple enough to be obviously right, which is what an oracle for planners and
storage needs; shapes in the suites stay small (a few million elements at most). It
uses nothing of the reference implementation, which the suites also judge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "Box",
    "box_text",
    "cover_problems",
    "in_bounds",
    "metadata_problems",
    "summarise_metadata",
]

Box = tuple[tuple[int, ...], tuple[int, ...]]
"""A chunk as ``(offsets, sizes)``."""


def box_text(offsets: Sequence[int], sizes: Sequence[int]) -> str:
    """``offsets (..) sizes (..)``."""
    return f"offsets {tuple(offsets)} sizes {tuple(sizes)}"


def in_bounds(size: Sequence[int], offsets: Sequence[int], sizes: Sequence[int]) -> bool:
    """Whether the chunk ``offsets``+``sizes`` lies inside a tensor of ``size``, dims agreeing."""
    return len(offsets) == len(size) == len(sizes) and all(
        o >= 0 and s >= 0 and o + s <= n for o, s, n in zip(offsets, sizes, size)
    )


def _empty(sizes: Sequence[int]) -> bool:
    return len(sizes) > 0 and math.prod(sizes) == 0


def cover_problems(
    key: str, size: Sequence[int], chunks: Sequence[tuple[Box, str]], what: str = "chunks"
) -> list[str]:
    """Problems with ``(box, owner)`` chunks tiling a tensor of ``size`` exactly once, in bounds.

    Chunks with no element are ignored (DCP places empty shards anywhere). Each problem
    names the key, how many elements, the first global index and the chunks involved.
    """
    problems = []
    counts = np.zeros(tuple(size), dtype=np.int32)
    inside = []
    for (offsets, sizes), owner in chunks:
        if _empty(sizes):
            continue
        if not in_bounds(size, offsets, sizes):
            problems.append(
                f"key {key!r}: {what[:-1]} {box_text(offsets, sizes)} ({owner}) is out of bounds "
                f"of global size {tuple(size)}"
            )
            continue
        inside.append(((offsets, sizes), owner))
        counts[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] += 1
    twice = np.argwhere(counts > 1)
    if len(twice):
        where = tuple(int(i) for i in twice[0])
        owners = [
            f"{box_text(o, s)} ({owner})"
            for (o, s), owner in inside
            if all(oo <= i < oo + ss for oo, ss, i in zip(o, s, where))
        ]
        problems.append(
            f"key {key!r}: {len(twice)} element(s) covered by more than one of the {what}, "
            f"first at index {where}, by {'; '.join(owners)}"
        )
    never = np.argwhere(counts == 0)
    if len(never):
        problems.append(
            f"key {key!r}: {len(never)} of {math.prod(size)} element(s) covered by none of "
            f"the {what}, first at index {tuple(int(i) for i in never[0])}"
        )
    return problems


def summarise_metadata(metadata: Any) -> dict[str, dict[str, Any]]:
    """DCP ``Metadata`` as plain data: per key its ``kind`` (``tensor``, ``bytes`` or a type
    name) and, for tensors, ``size``, ``dtype`` (a name such as ``float32``) and ``chunks``."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    out: dict[str, dict[str, Any]] = {}
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            out[key] = {
                "kind": "tensor",
                "size": tuple(int(n) for n in entry.size),
                "dtype": str(entry.properties.dtype).removeprefix("torch."),
                "chunks": tuple(
                    (tuple(int(o) for o in c.offsets), tuple(int(s) for s in c.sizes))
                    for c in entry.chunks
                ),
            }
        elif isinstance(entry, BytesStorageMetadata):
            out[key] = {"kind": "bytes"}
        else:
            out[key] = {"kind": type(entry).__name__}
    return out


def metadata_problems(
    expected: dict[str, tuple[tuple[int, ...], str] | None], summary: dict[str, dict[str, Any]]
) -> list[str]:
    """Every way metadata (as :func:`summarise_metadata` gives it) fails to describe a state:
    keys missing or extra, objects not recorded as bytes, tensors of another kind, global
    size or dtype, and chunks that do not tile each tensor exactly once.

    ``expected`` maps each key to ``(global shape, dtype name)`` for a tensor, ``None`` for
    an object.
    """
    problems = []
    missing = sorted(set(expected) - set(summary))
    extra = sorted(set(summary) - set(expected))
    if missing:
        problems.append(f"the metadata lacks key(s) of the state: {missing}")
    if extra:
        problems.append(f"the metadata has key(s) the state does not: {extra}")
    for key in sorted(set(expected) & set(summary)):
        entry, want = summary[key], expected[key]
        if want is None:
            if entry["kind"] != "bytes":
                problems.append(
                    f"key {key!r}: an object is recorded as {entry['kind']}, expected bytes"
                )
            continue
        shape, dtype = want
        if entry["kind"] != "tensor":
            problems.append(f"key {key!r}: a tensor is recorded as {entry['kind']}")
            continue
        if tuple(entry["size"]) != tuple(shape):
            problems.append(
                f"key {key!r}: metadata global size {tuple(entry['size'])}, the state's is "
                f"{tuple(shape)}"
            )
            continue
        if entry["dtype"] != dtype:
            problems.append(f"key {key!r}: metadata dtype {entry['dtype']}, the state's is {dtype}")
        chunks = [(chunk, "metadata") for chunk in entry["chunks"]]
        problems += cover_problems(key, shape, chunks, "metadata chunks")
    return problems
