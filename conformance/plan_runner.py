"""Running a backend's planners on simulated worlds, with failures that name what raised.

The planners are the backend's ``save_planner()``/``load_planner()``, or DCP's
``DefaultSavePlanner``/``DefaultLoadPlanner`` when it gives none (what
:meth:`Backend.run_save` uses). A whole-system backend, whose own ``save``/``load``
replace the driver and which exposes no planner, cannot be tested at this level.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from ckptconf.harness.simulated import (
    SimulatedSave,
    simulate_load,
    simulate_save,
    simulate_save_planning,
)
from ckptconf.reference._compat import accepts_parameter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner

from .backend import Backend
from .plugin import UNSUPPORTED_PREFIX
from .runner import ConformanceFailure, _failure

__all__ = [
    "save_planner_factory",
    "load_planner_factory",
    "raised_text",
    "plan_save",
    "global_plan_of",
    "save_then_load_in_memory",
    "failure",
]


def save_planner_factory(backend: Backend) -> Callable[[], SavePlanner]:
    """The backend's save planner factory, DCP's default if it has none; skips whole-system backends."""
    if backend.save_planner is not None:
        return backend.save_planner
    if backend.save is not None:
        pytest.skip(
            UNSUPPORTED_PREFIX + "its own save replaces the driver and it exposes no save "
            "planner, so there is nothing to run at the planner level"
        )
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    return DefaultSavePlanner


def load_planner_factory(backend: Backend) -> Callable[[], LoadPlanner]:
    """The backend's load planner factory, DCP's default if it has none; skips whole-system backends."""
    if backend.load_planner is not None:
        return backend.load_planner
    if backend.load is not None:
        pytest.skip(
            UNSUPPORTED_PREFIX + "its own load replaces the driver and it exposes no load "
            "planner, so there is nothing to run at the planner level"
        )
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    return DefaultLoadPlanner


def raised_text(exc: BaseException, frames: int = 3) -> str:
    """``Type: message`` and the innermost frames (function, file:line) of where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(
        f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in reversed(tb)
    )
    message = str(exc)
    if len(message) > 1500:
        message = message[:1500] + " ... (truncated)"
    return f"{type(exc).__name__}: {message}\n  raised in {where}"


def plan_save(
    backend: Backend,
    states: Sequence[dict[str, Any]],
    factory: Callable[[], SavePlanner],
    case_text: str,
    repro: str | None,
) -> SimulatedSave:
    """Plan a save of every simulated rank's state; a raise is a ConformanceFailure naming it."""
    try:
        result, _ = simulate_save_planning(states, factory)
    except Exception as exc:  # noqa: BLE001 - any planner error is the finding
        raise _failure(
            backend,
            f"planning a save on {len(states)} simulated ranks raised",
            case_text,
            raised_text(exc),
            repro,
        ) from None
    return result


def _set_up(planner: SavePlanner, state: dict[str, Any], is_coordinator: bool) -> None:
    if accepts_parameter(planner.set_up_planner, "storage_meta"):
        planner.set_up_planner(state, None, is_coordinator)
    else:  # older planners: set_up_planner(state_dict, is_coordinator)
        planner.set_up_planner(state, is_coordinator)  # type: ignore[call-arg]


def global_plan_of(
    factory: Callable[[], SavePlanner], plans: Callable[[Any], list[SavePlan]]
) -> tuple[list[SavePlan], Metadata]:
    """The coordinator's ``create_global_plan`` of hand-built local plans.

    The coordinator planner is set up with an empty state, and the plans carry the
    ``planner_data`` its own (empty) local plan has, as every rank's would.
    """
    planner = factory()
    _set_up(planner, {}, True)
    template = planner.create_local_plan().planner_data
    return planner.create_global_plan(plans(template))


def save_then_load_in_memory(
    saved_states: Sequence[dict[str, Any]],
    dest_states: Sequence[dict[str, Any]],
    save_factory: Callable[[], SavePlanner],
    load_factory: Callable[[], LoadPlanner],
) -> tuple[Metadata, list[LoadPlan]]:
    """Save on ``len(saved_states)`` simulated ranks into the reference in-memory storage, load
    into ``dest_states`` in place; the stored metadata and the load plans (``ConformanceFailure``
    text is the caller's: this raises what the planners raise, with the step in a note)."""
    from ckptconf.reference import InMemoryReader, InMemoryWriter, MemoryStore

    store = MemoryStore("plans")
    try:
        simulate_save(saved_states, save_factory, lambda rank: InMemoryWriter(store))
    except Exception as exc:
        exc.add_note("step: simulated save")
        raise
    try:
        metadata = InMemoryReader(store).read_metadata()
        plans = simulate_load(dest_states, load_factory, lambda rank: InMemoryReader(store))
    except Exception as exc:
        exc.add_note("step: simulated load")
        raise
    return metadata, plans


def failure(
    backend: Backend, what: str, case_text: str, problems: Sequence[str], repro: str | None
) -> ConformanceFailure:
    """A ConformanceFailure listing up to 8 problems."""
    shown = ["found:"] + [f"  {p}" for p in problems[:8]]
    if len(problems) > 8:
        shown.append(f"  ... {len(problems) - 8} more")
    return _failure(backend, what, case_text, "\n".join(shown), repro)
