"""What a lifecycle run saves: job-shaped cases (:mod:`...kit.jobs`) with the values of one save,
and the pinned runs every profile runs first.

Each save of a run is numbered; its tensors' salts move by :data:`SALT_STEP` per number and
its objects are tagged with it, so a load returning another save's values shows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import TensorSpec
from ...kit.jobs import (
    Holding,
    PerRankCase,
    PerRankObject,
    expert_cases,
    pipeline_cases,
    some_ranks_cases,
)
from .runner import as_saved
from .steps import FailedSave, Load, RacingLoad, Save, Step, Wait

__all__ = ["PinnedRun", "SALT_STEP", "job_cases", "numbered_save", "pinned_runs"]

SALT_STEP = 10_000
"""How far each save's salts move: values of different saves never coincide (float32 is
exact below 2**24: 1,600 saves)."""


def numbered_save(case: PerRankCase, number: int) -> PerRankCase:
    """``case`` with the values of save ``number``: salts moved, objects tagged."""
    return replace(
        case,
        tensors=tuple(
            replace(s, salt=s.salt % SALT_STEP + number * SALT_STEP) for s in case.tensors
        ),
        objects=tuple(
            replace(o, value=f"save {number}: {_untagged(o.value)}") for o in case.objects
        ),
    )


def _untagged(value) -> str:
    """The object's text without a save's tag, and without quotes and characters a shell
    treats specially (the value only tells saves apart: the steps print as a command)."""
    if isinstance(value, str) and value.startswith("save ") and ": " in value:
        return value.split(": ", 1)[1]
    text = value if isinstance(value, str) else ascii(value)
    return "".join(c for c in text if c not in "'\"$`\\!")


def job_cases(backend: Backend) -> st.SearchStrategy[PerRankCase]:
    """Pipeline stages, expert parallelism, keys held by some ranks: the families of
    :mod:`...kit.jobs` the backend supports."""
    return st.one_of(pipeline_cases(backend), expert_cases(backend), some_ranks_cases(backend))


@dataclass(frozen=True)
class PinnedRun:
    """A fixed run: its name and its steps (a backend runs it where it can take every step)."""

    name: str
    steps: tuple[Step, ...]


def _stages(backend: Backend, number: int) -> PerRankCase:
    """Three layers in two pipeline stages, loaded on three (one rank where worlds stay)."""
    other = backend.supports("world_size_change")
    specs = (
        TensorSpec("layers.0.w", (4, 3), "float32", 1),
        TensorSpec("layers.1.w", (5,), "int64", 1001),
        TensorSpec("layers.2.w", (2, 2), "float64", 2001),
    )
    objects = ()
    if backend.supports("objects"):
        objects = tuple(
            PerRankObject(
                f"loader.rank{r}", f"state of rank {r}", (r,), ((r + 1) % (3 if other else 2),)
            )
            for r in range(2)
        )
    case = PerRankCase(
        "pipeline stages",
        specs,
        2,
        3 if other else 2,
        (Holding((0,)), Holding((0,)), Holding((1,))),
        (Holding((0,)), Holding((1,)), Holding((2,))) if other else (Holding((1,)),) * 3,
        objects,
    )
    return numbered_save(case, number)


def _experts(backend: Backend, number: int) -> PerRankCase:
    """A router every rank holds and four experts round-robin over three ranks."""
    router = Holding((0, 1, 2))
    if backend.supports("dtensor"):
        router = Holding((0, 1, 2), "dtensor", (0, 1, 2), "S0")
    specs = (TensorSpec("router.w", (5, 2), "float32", 1),) + tuple(
        TensorSpec(f"experts.{e}.w", (3,), "float64", 1 + 1000 * (e + 1)) for e in range(4)
    )
    holdings = (router,) + tuple(Holding((e % 3,)) for e in range(4))
    case = PerRankCase("expert parallel", specs, 3, 3, holdings, holdings)
    return numbered_save(case, number)


def _layout_changes(backend: Backend) -> tuple[Step, ...]:
    """One layout saved twice (a backend caching plans reuses its plan for the second), then
    saves that each change one thing a cached plan depends on: a dtype, a shape, the key set,
    which rank holds a key, the world size; each loaded back."""
    base = as_saved(_stages(backend, 1))
    tensors = base.tensors
    changes = (
        replace(base, tensors=tensors[:2] + (replace(tensors[2], dtype="float32"),)),
        replace(base, tensors=(replace(tensors[0], shape=(4, 4)),) + tensors[1:]),
        replace(base, tensors=tensors[:2] + (replace(tensors[2], key="layers.3.w"),)),
        replace(
            base, saved=(Holding((1,)),) + base.saved[1:], loaded=(Holding((1,)),) + base.loaded[1:]
        ),
        replace(
            base,
            save_world=3,
            load_world=3,
            saved=tuple(Holding((r,)) for r in range(3)),
            loaded=tuple(Holding((r,)) for r in range(3)),
        ),
    )
    steps: list[Step] = [Save(0, base), Save(0, numbered_save(base, 2)), Load(0)]
    for number, case in enumerate(changes, start=3):
        steps += [Save(0, numbered_save(case, number)), Load(0)]
    return tuple(steps)


def pinned_runs(backend: Backend) -> list[PinnedRun]:
    """The runs pinned in every profile: a re-save with other keys and worlds; one layout
    re-saved, then changed in each way a cached plan depends on; a load paused while a save
    commits; an async save overlapped by a save and loads; two async saves of the same keys in
    flight at once (drawn runs wait for one before starting another); a failed re-save then a
    retry; a failed first save."""
    return [
        PinnedRun(
            "re-save with other keys",
            (
                Save(0, _stages(backend, 1)),
                Load(0),
                Save(0, _experts(backend, 2)),
                Load(0),
                Save(0, _stages(backend, 3)),
                Load(0, other_world=True),
            ),
        ),
        PinnedRun("one layout re-saved, then each change", _layout_changes(backend)),
        PinnedRun(
            "load while a save commits",
            (Save(0, _stages(backend, 1)), RacingLoad(0, _experts(backend, 2)), Load(0)),
        ),
        PinnedRun(
            "an async save overlapped by a save and loads",
            (
                Save(0, _stages(backend, 1), background=True),
                Save(1, _experts(backend, 2)),
                Load(1),
                Load(0),
                Wait(0),
                Load(0),
            ),
        ),
        PinnedRun(
            "two async saves in flight",
            (
                Save(0, _stages(backend, 1), background=True),
                Save(1, _stages(backend, 2), background=True),
                Load(0),
                Wait(1),
                Wait(0),
                Load(0),
                Load(1),
            ),
        ),
        PinnedRun(
            "failed re-save, then a retry",
            (
                Save(0, _stages(backend, 1)),
                FailedSave(0, _experts(backend, 2), "write_data", 1),
                Load(0),
                Save(0, _experts(backend, 3)),
                Load(0),
            ),
        ),
        PinnedRun(
            "failed first save",
            (
                FailedSave(1, _stages(backend, 1), "finish", 0),
                Load(1),
                Save(1, _stages(backend, 2)),
                Load(1),
            ),
        ),
    ]
