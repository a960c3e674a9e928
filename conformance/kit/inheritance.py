"""Which parts of its parent a backend takes: the entries of the parent's expectations it may
inherit.

A backend that ``inherits`` a built-in (``torch-dcp``) inherits its known failures, example by
example (:mod:`.verdicts`). An entry with a ``part`` (:data:`~..expectations.PARTS`) describes a
failure of that part of the parent, DCP's ``FileSystemWriter`` say; a backend that brings its own
storage writer and reader must not have its own storage defects excused by it, however alike
they look. So each part is *taken* or *own*:

- declared: :attr:`~..backend.Backend.inherited_parts`;
- else found out on a rank, where the backend is built as in every step (:func:`probe`):
  ``storage`` is taken when every storage writer and reader the backend gives is an instance of
  the parent's classes (subclasses included); ``planner`` likewise for the planners the steps
  plan with; ``staging`` when the writer does not stage (``async_save`` then stages with DCP's
  own stager) or stages with torch's code (``FileSystemWriter``, ``BlockingAsyncStager``);
  ``driver`` is always taken unless declared. A part the backend does not show (a
  whole-system ``save``) is taken: its docs say what it is built on, and ``inherited_parts``
  says otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from ..expectations import PARTS, Expectation

__all__ = ["Inheritance", "inheritance_of", "probe"]


@dataclass(frozen=True)
class Inheritance:
    """What a backend takes from its parent: ``taken`` parts, and for each part why."""

    parent: str
    taken: frozenset[str]
    why: dict[str, str]

    def entries(self, entries: list[Expectation]) -> list[Expectation]:
        """The parent's ``entries`` this backend inherits: those without a part, or of a part
        it takes."""
        return [e for e in entries if e.part is None or e.part in self.taken]

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent, "taken": sorted(self.taken), "why": self.why}


def inheritance_of(backend: Any, parent: str, ranks: Any, timeout: float = 120.0) -> Inheritance:
    """The parts ``backend`` takes from the built-in ``parent``: declared, or found on one rank of
    ``ranks`` (a :class:`~.running.Ranks`); every part, with no probe, where no entry of the
    parent's names one. A probe that fails takes every part it could not look at (with why)."""
    declared = backend.inherited_parts
    if declared is not None:
        why = {p: "declared" if p in declared else "declared its own" for p in PARTS}
        return Inheritance(parent, frozenset(declared), why)
    if not any(e.part for e in _entries_of(parent)):
        why = dict.fromkeys(PARTS, "no entry of the parent's names a part")
        return Inheritance(parent, frozenset(PARTS), why)
    outcome = ranks.run(backend, probe, (parent,), world=1, timeout=timeout)[0]
    if outcome.raised:
        why = {p: f"could not look ({outcome.error_type}: {outcome.message[:200]})" for p in PARTS}
        return Inheritance(parent, frozenset(PARTS), why)
    own: dict[str, str] = outcome.value
    why = {p: own.get(p) or "taken" for p in PARTS}
    return Inheritance(parent, frozenset(p for p in PARTS if p not in own), why)


def _entries_of(parent: str) -> list[Expectation]:
    from ..builtin import expectations_file
    from ..expectations import Expectations

    path = expectations_file(parent)
    return Expectations.load(path).entries if path else []


def probe(backend: Any, parent_name: str) -> dict[str, str]:
    """On a rank: the parts ``backend`` does not take from the built-in ``parent_name``, each
    with why (``"ZipWriter is no FileSystemWriter"``)."""
    from ckptconf.conformance import select_backend

    parent = select_backend(parent_name)
    folder = tempfile.mkdtemp(prefix="ckptconf-probe-")
    path = os.path.join(folder, "probe")
    try:
        own: dict[str, str] = {}
        mine = _built(backend, path)
        theirs = _built(parent, path)
        for part, roles in (
            ("storage", ("storage_writer", "storage_reader")),
            ("planner", ("save_planner", "load_planner")),
        ):
            differs = [
                f"{type(mine[r]).__qualname__} is no {type(theirs[r]).__qualname__}"
                for r in roles
                if r in mine and r in theirs and not isinstance(mine[r], type(theirs[r]))
            ]
            if differs:
                own[part] = "; ".join(differs)
        stager = _own_stager(mine.get("storage_writer"))
        if stager:
            own["staging"] = stager
        return own
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _built(backend: Any, path: str) -> dict[str, Any]:
    """The writer, reader and planners ``backend`` has steps use, built (what it does not show
    is left out)."""
    built = {}
    if backend.storage_writer is not None:
        built["storage_writer"] = backend.storage_writer(path)
    if backend.storage_reader is not None:
        built["storage_reader"] = backend.storage_reader(path)
    for role, factory in (
        ("save_planner", backend.used_save_planner()),
        ("load_planner", backend.used_load_planner()),
    ):
        if factory is not None:
            built[role] = factory()
    return built


def _own_stager(writer: Any) -> str | None:
    """Why ``writer`` stages with code of its own (an ``AsyncStager`` whose ``stage`` is not
    torch's), or ``None``."""
    if writer is None:
        return None
    from torch.distributed.checkpoint.staging import AsyncStager

    if not isinstance(writer, AsyncStager):
        return None
    stage = getattr(type(writer), "stage", None)
    module = getattr(stage, "__module__", "") or ""
    if module.startswith("torch."):
        return None
    return f"{type(writer).__qualname__}.stage is its own ({module})"
