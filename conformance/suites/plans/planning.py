"""Running a backend's planners on simulated worlds, with failures that name what raised.

The planners are the backend's ``save_planner()``/``load_planner()``, or DCP's
``DefaultSavePlanner``/``DefaultLoadPlanner`` when it gives none (what
:meth:`Backend.run_save` uses). A whole-system backend, whose own ``save``/``load``
replace the driver and which exposes no planner, cannot be tested at this level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ckptconf.harness.simulated import (
    SimulatedSave,
    simulate_load,
    simulate_save,
    simulate_save_planning,
)
from ckptconf.reference.compat import add_note, set_up_save_planner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner

from ...kit.failures import ConformanceFailure, exception_text, listing
from ...kit.trial import Trial

__all__ = [
    "PlannerSetUpError",
    "coordinator_planner",
    "plan_save",
    "global_plan_of",
    "save_then_load_in_memory",
    "failure",
]


def plan_save(
    trial: Trial, states: Sequence[dict[str, Any]], factory: Callable[[], SavePlanner]
) -> SimulatedSave:
    """Plan a save of every simulated rank's state; a raise fails the trial, naming it."""
    try:
        result, _ = simulate_save_planning(states, factory)
    except Exception as exc:  # noqa: BLE001 - any planner error is the finding
        raise trial.raised(
            f"planning a save on {len(states)} simulated ranks raised", exc, step="plan"
        ) from None
    return result


class PlannerSetUpError(Exception):
    """The coordinator's planner could not be made or set up: no plan was judged."""


def coordinator_planner(factory: Callable[[], SavePlanner]) -> tuple[SavePlanner, Any]:
    """A coordinator planner set up with an empty state, and the ``planner_data`` its own
    (empty) local plan has, as every rank's would. Raises :class:`PlannerSetUpError` naming
    what raised: an error here is not a verdict on any plan."""
    try:
        planner = factory()
        set_up_save_planner(planner, {}, True)
        return planner, planner.create_local_plan().planner_data
    except Exception as exc:  # noqa: BLE001 - any error: the planner cannot be used
        raise PlannerSetUpError(exception_text(exc)) from exc


def global_plan_of(
    factory: Callable[[], SavePlanner], plans: Callable[[Any], list[SavePlan]]
) -> tuple[list[SavePlan], Metadata]:
    """The coordinator's ``create_global_plan`` of hand-built local plans (see
    :func:`coordinator_planner`; its errors raise :class:`PlannerSetUpError`)."""
    planner, template = coordinator_planner(factory)
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
        add_note(exc, "step: simulated save")
        raise
    try:
        metadata = InMemoryReader(store).read_metadata()
        plans = simulate_load(dest_states, load_factory, lambda rank: InMemoryReader(store))
    except Exception as exc:
        add_note(exc, "step: simulated load")
        raise
    return metadata, plans


def failure(
    trial: Trial,
    what: str,
    problems: Sequence[str],
    *,
    kind: str = "wrong_values",
    step: str = "plan",
) -> ConformanceFailure:
    """The trial's failure listing up to 8 problems: by default, planning (``step``) gave a
    wrong plan or metadata (``kind``)."""
    return trial.fail(what, "found:\n" + listing(problems), kind=kind, step=step)
