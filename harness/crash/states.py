"""Crash states: the folder a crash would leave after each prefix of a save's operations.

Two models (:data:`MODELS`): a process crash keeps every operation of the prefix, synced
or not; a power loss keeps what the prefix made durable (:mod:`.filetree`), in two
views: nothing unsynced reached the disk, or every change of names did but no unsynced
data (the reordering behind zero-length files after a rename). The states around every
rename, create, unlink, truncate and fsync are built first, then as many others as the
budget allows, evenly spread; equal states are built once. A state is
described in words for a failure: the operations that led to it, and for every file
whether it holds A's bytes (the checkpoint before), B's (the one being saved), a cut
copy of either, or neither.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .filetree import Files, FileTree, Operation, Truncate

__all__ = ["MODELS", "CrashState", "crash_points", "crash_states", "describe_files", "materialise"]

MODELS: dict[str, str] = {
    "process_crash": "a process crash (every write so far stays, synced or not)",
    "power_loss": "a power loss (only what fsync made durable stays)",
}
"""The crash models, by name."""


@dataclass(frozen=True)
class CrashState:
    """The folder after the first ``after`` of ``total`` operations, under ``model``."""

    model: str
    after: int
    total: int
    files: Files
    view: str = ""
    """For a power loss: which unsynced changes reached the disk (none, or the names)."""

    @property
    def returned(self) -> bool:
        """Whether every operation of the save had been made (it returned)."""
        return self.after == self.total

    def headline(self, operations: Sequence[Operation]) -> str:
        """When the crash happened, in words."""
        what = "crash" if self.model == "process_crash" else "power loss"
        if self.after == 0:
            when = f"{what} before the first of {self.total} operations"
        else:
            last = operations[self.after - 1]
            when = f"{what} after operation {self.after} of {self.total} ({last.words}, rank {last.rank})"
        if self.after < self.total:
            upcoming = operations[self.after]
            when += f", before {upcoming.words} (rank {upcoming.rank})"
        elif self.model == "power_loss":
            when += ", after the save returned"
        if self.view:
            when += f" ({self.view})"
        return when

    def history(self, operations: Sequence[Operation], *, last: int = 12) -> str:
        """The operations that led to this state (the last ``last``), numbered."""
        start = max(0, self.after - last)
        lines = [
            f"  {i + 1}. rank {op.rank}: {op.words}"
            for i, op in enumerate(operations[start : self.after], start)
        ]
        if start:
            lines.insert(0, f"  ... {start} earlier operation(s)")
        return "\n".join(lines) or "  (none)"


def crash_points(operations: Sequence[Operation], budget: int | None) -> list[int]:
    """Which prefixes to build: the states just before and after every naming or durability
    operation, the first and the last, then an even spread up to ``budget`` (``None``: all)."""
    total = len(operations)
    if budget is None:
        return list(range(total + 1))
    key = {0, total}
    for i, operation in enumerate(operations):
        if operation.naming or operation.durability or isinstance(operation, Truncate):
            key.update((i, i + 1))
    points = _spread(sorted(key), max(budget, 2))
    others = [k for k in range(total + 1) if k not in set(points)]
    points += _spread(others, budget - len(points)) if budget > len(points) else []
    return sorted(points)


def _spread(items: list[int], count: int) -> list[int]:
    """``count`` of ``items``, evenly spaced, the first and last always among them."""
    if count >= len(items):
        return list(items)
    if count <= 1:
        return items[:count]
    step = (len(items) - 1) / (count - 1)
    return sorted({items[round(i * step)] for i in range(count)})


def _digest(files: Files) -> str:
    digest = hashlib.sha256()
    for path, data in sorted(files.items()):
        digest.update(path.encode() + b"\0" + (b"D" if data is None else b"F" + data) + b"\0")
    return digest.hexdigest()


def crash_states(
    start: FileTree, operations: Sequence[Operation], model: str, budget: int | None
) -> list[CrashState]:
    """The distinct states of ``model`` at the :func:`crash_points` (the final state always)."""
    if model not in MODELS:
        raise ValueError(f"unknown crash model {model!r}; expected one of {sorted(MODELS)}")
    points = set(crash_points(operations, budget))
    tree, seen, states = start.copy(), set(), []
    for after in range(len(operations) + 1):
        if after:
            operations[after - 1].apply(tree)
        if after not in points:
            continue
        if model == "process_crash":
            views = [("", tree.visible())]
        else:
            views = [
                ("nothing unsynced reached the disk", tree.durable()),
                (
                    "unsynced changes of names reached the disk, unsynced data did not",
                    tree.names_first(),
                ),
            ]
        for view, files in views:
            digest = _digest(files)
            if digest in seen and after != len(operations):
                continue
            seen.add(digest)
            states.append(CrashState(model, after, len(operations), files, view))
    return states


def _origin(data: bytes | None, a: bytes | None, b: bytes | None) -> str:
    if data is None:
        owners = " and ".join(n for n, d in (("A", a), ("B", b)) if d is not None)
        return (
            f"missing ({owners} {'have' if ' and ' in owners else 'has'} it)"
            if owners
            else "missing"
        )
    if data == a and data == b:
        return "A's and B's (the same bytes)"
    if data == a:
        return "A's"
    if data == b:
        return "B's"
    for name, whole in (("B", b), ("A", a)):
        if whole is not None and len(data) < len(whole) and whole.startswith(data):
            return f"{name}'s, cut at {len(data)} of {len(whole)} bytes"
    return f"{len(data)} bytes, neither A's nor B's"


def describe_files(files: Files, a: Files | None, b: Files) -> str:
    """Each file of a state (and each of A's and B's that it lacks) and whose bytes it holds."""
    a = a or {}
    folders = {p for tree in (files, a, b) for p, data in tree.items() if data is None}
    paths = sorted({*files, *a, *b} - folders)
    return "\n".join(f"  {p}: {_origin(files.get(p), a.get(p), b.get(p))}" for p in paths)


def materialise(states: Sequence[CrashState], folder: str | os.PathLike) -> list[str]:
    """Write each state into ``folder/s<i>``; the folders, in order."""
    out = []
    for i, state in enumerate(states):
        root = Path(folder) / f"s{i}"
        root.mkdir(parents=True)
        for path, data in sorted(state.files.items()):
            if data is None:
                (root / path).mkdir(parents=True, exist_ok=True)
            else:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
        out.append(str(root))
    return out
