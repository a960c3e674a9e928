"""Shrinking a failing lifecycle run to its shortest sequence, within a time budget.

Hypothesis' own shrinking of a state machine re-runs hundreds of candidate runs; a step
here is a save or load on real ranks (about half a second), and a run whose outcome
depends on timing makes its progress slow (one planted race took over five minutes). So
the lifecycle tests run hypothesis without its shrink phase and shrink here instead: the
greedy one-step deletion of delta debugging (Zeller and Hildebrandt, "Simplifying and
isolating failure-inducing input", IEEE TSE 2002), a candidate kept when its run fails
at its last step the same way (step and kind) and no expectation excuses it, until no
single step can go or the budget is spent.
"""

from __future__ import annotations

import time
from typing import Any

from ...kit.failures import ConformanceFailure, HangFailure, render_failure
from ...kit.verdicts import failure_fields
from .runner import Runner
from .steps import Step, numbered

__all__ = ["SHRINK_SECONDS", "shrink"]

SHRINK_SECONDS = {"ci": 60.0, "dev": 120.0, "thorough": 600.0}
"""Seconds spent shrinking one failing run, by profile."""


def _known(fields: dict[str, Any], verdict: Any) -> bool:
    if verdict is None:
        return False
    return any(e.matches(fields) for e in [*verdict.own, *verdict.inherited])


def _failure_of(
    ckpt: Any, steps: list[Step], *, strict: bool, verdict: Any, like: ConformanceFailure
) -> ConformanceFailure | None:
    """The failure of a run of ``steps`` if it fails at its last step as ``like`` did."""
    try:
        Runner(ckpt, strict=strict, title="lifecycle run (shrunk)").run(steps)
    except ConformanceFailure as exc:
        same = (exc.step, exc.kind) == (like.step, like.kind)
        last = getattr(exc, "lifecycle_steps", None) == steps
        if same and last and not _known(failure_fields(exc), verdict):
            return exc
    except HangFailure:
        return None
    return None


def shrink(
    ckpt: Any,
    failure: ConformanceFailure,
    *,
    strict: bool,
    verdict: Any,
    seconds: float,
) -> ConformanceFailure:
    """The failure of the shortest run found that still fails as ``failure`` (whose run's
    steps are its ``lifecycle_steps``, the failing one last); ``failure`` itself if no step
    can go. Its ``minimal_case`` says how far it shrank."""
    steps: list[Step] = list(getattr(failure, "lifecycle_steps", []))
    best, found = steps, failure
    deadline = time.monotonic() + seconds
    tried = 0
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for i in reversed(range(len(best) - 1)):
            if time.monotonic() >= deadline:
                break
            candidate = best[:i] + best[i + 1 :]
            tried += 1
            got = _failure_of(ckpt, candidate, strict=strict, verdict=verdict, like=failure)
            if got is not None:
                best, found, progress = candidate, got, True
    spent = time.monotonic() >= deadline
    how = (
        f"shrunk from {len(steps)} to {len(best)} step(s) by deleting steps ({tried} run(s)"
        + (f", stopped by the {seconds:g} s budget" if spent else "")
        + ")"
    )
    found.minimal_case = f"{numbered(best)}\n({how})"
    found.args = (render_failure(found.fields()),)
    return found
