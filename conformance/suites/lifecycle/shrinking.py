"""Shrinking a failing lifecycle run to its shortest sequence, within a time budget.

Hypothesis' own shrinking of a state machine re-runs hundreds of candidate runs; a step
here is a save or load on real ranks (about half a second), and a run whose outcome
depends on timing makes its progress slow (one planted race took over five minutes). So
the lifecycle tests run hypothesis without its shrink phase and shrink here instead: the
greedy one-step deletion of delta debugging (Zeller and Hildebrandt, "Simplifying and
isolating failure-inducing input", IEEE TSE 2002), a candidate kept when its run fails
at its last step the same way (the same kind of step, step and kind of failure, headline),
failures the expectations name passed over as in the test, until no single step can go or
the budget is spent.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ...kit.failures import ConformanceFailure, HangFailure, render_failure
from ...kit.verdicts import KnownHang
from .runner import KnownEntries, Runner
from .steps import Step, numbered

__all__ = ["SHRINK_SECONDS", "shrink"]

SHRINK_SECONDS = {"ci": 60.0, "dev": 120.0, "thorough": 600.0}
"""Seconds spent shrinking one failing run, by profile."""


def _headline(failure: ConformanceFailure) -> str:
    """The failure's headline without its numbers (counts and ranks vary as steps go)."""
    return re.sub(r"\d+", "#", failure.what)


def _same(got: ConformanceFailure, like: ConformanceFailure) -> bool:
    """Whether ``got`` fails as ``like`` did: at its last step, a step of the same kind, the
    same step and kind of failure, the same headline."""
    mine, theirs = getattr(got, "lifecycle_steps", []), getattr(like, "lifecycle_steps", [])
    return (
        bool(mine)
        and bool(theirs)
        and type(mine[-1]) is type(theirs[-1])
        and (got.step, got.kind) == (like.step, like.kind)
        and _headline(got) == _headline(like)
    )


def _failure_of(
    ckpt: Any, steps: list[Step], *, strict: bool, known: KnownEntries, like: ConformanceFailure
) -> ConformanceFailure | None:
    """The failure of a run of ``steps`` if it fails at its last step as ``like`` did (failures
    the expectations name are passed over, as in the test)."""
    try:
        Runner(ckpt, strict=strict, verdict=known, title="lifecycle run (shrunk)").run(steps)
    except ConformanceFailure as exc:
        if getattr(exc, "lifecycle_steps", None) == steps and _same(exc, like):
            return exc
    except (HangFailure, KnownHang):
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
    known = KnownEntries([*verdict.own, *verdict.inherited] if verdict is not None else [])
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
            got = _failure_of(ckpt, candidate, strict=strict, known=known, like=failure)
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
