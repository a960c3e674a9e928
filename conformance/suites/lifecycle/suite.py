"""The lifecycle: sequences of saves and loads at two paths, with the backend held by every rank.

A job saves many times, to rotating paths or the same one, leaves an async save running
while it goes on, loads while another job writes, retries after a failed save, and
changes which rank holds which keys between saves; its checkpoint machinery lives
through all of it. Each test runs the pinned runs (:func:`.cases.pinned_runs`) and then
hypothesis' runs of :class:`~.machine.LifecycleMachine`, every step checked against a
model of the committed checkpoints (:mod:`.runner`). A failure prints the numbered steps
and a command that runs them again.

core: saves, async saves, loads on the saving and on another world, loads paused while a
save commits. strict: failed and killed saves too (a failed save leaves the previous
checkpoint, what it left is never loaded), and nothing left beside the checkpoints.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

from ...kit.failures import ConformanceFailure
from ...kit.outcomes import unsupported
from ...kit.profiles import profile_settings
from ...kit.verdicts import KnownHang
from .cases import pinned_runs
from .machine import LifecycleMachine, features_of
from .runner import Runner
from .shrinking import SHRINK_SECONDS, shrink
from .steps import FailedSave, KilledSave, RacingLoad, Save, Step

__all__ = ["LifecycleTests", "run_lifecycle"]

STEPS = 8
"""Steps of a drawn run (a failing one is shrunk to its shortest: :mod:`.shrinking`)."""


def _judges_itself(fn):
    fn.ckptconf_judged = True  # each step's failure is judged by the runner, not by the plugin
    return fn


def run_lifecycle(ckpt: Any, *, strict: bool) -> None:
    """The pinned runs, then drawn runs, on ``ckpt``'s backend (``strict``: with failed saves)."""
    verdict = getattr(ckpt, "verdict", None)
    share = getattr(ckpt, "share", None)  # the run's time budget, checked at a run's first step
    can = features_of(ckpt.backend, strict=strict)
    for pinned in pinned_runs(ckpt.backend):
        if any(_needs(step, can) for step in pinned.steps):
            continue  # a step this backend (or this test) cannot take
        if share is not None:
            share.example_begins()
        runner = Runner(ckpt, strict=strict, verdict=verdict, title=f"pinned run {pinned.name!r}")
        try:
            runner.run(list(pinned.steps))
        except ConformanceFailure as exc:
            raise _shrunk(ckpt, exc, strict=strict, verdict=verdict) from None
        except KnownHang:
            continue  # recorded; the other runs still search for the backend's own defects
        if share is not None:
            share.example_ends()
    base = profile_settings(ckpt.session)
    options = settings(
        parent=base,
        max_examples=max(2, base.max_examples // 4),
        stateful_step_count=STEPS,
        phases=[p for p in base.phases if p is not Phase.shrink],  # shrunk below, on a budget
    )

    def machine() -> LifecycleMachine:
        if share is not None:
            share.example_begins()
        return LifecycleMachine(Runner(ckpt, strict=strict, verdict=verdict), verdict)

    number = ckpt.session.run_seed
    if number is not None and not base.derandomize:
        machine._hypothesis_internal_use_seed = number  # what @seed sets
    try:
        run_state_machine_as_test(machine, settings=options)
    except ConformanceFailure as exc:
        failure = exc
    except Exception as exc:  # an exception group: several failures, or one that passed again
        found = getattr(exc, "exceptions", ())
        failure = next((e for e in found if isinstance(e, ConformanceFailure)), None)
        if failure is None:
            raise
        if isinstance(exc, FlakyFailure):
            failure.add_verdict("it failed once, then passed when run again: timing decides")
    else:
        return
    raise _shrunk(ckpt, failure, strict=strict, verdict=verdict)


def _shrunk(ckpt: Any, failure: ConformanceFailure, *, strict: bool, verdict: Any):
    """``failure`` shrunk to its shortest run, unless the session does not shrink."""
    if not ckpt.session.shrink or not hasattr(failure, "lifecycle_steps"):
        return failure
    seconds = SHRINK_SECONDS[ckpt.session.profile]
    return shrink(ckpt, failure, strict=strict, verdict=verdict, seconds=seconds)


def _needs(step: Step, can: dict[str, bool]) -> bool:
    """Whether ``step`` needs a kind of step the backend cannot take (failed and killed saves:
    only the strict test takes them)."""
    return (
        (isinstance(step, Save) and step.background and not can["async"])
        or (isinstance(step, RacingLoad) and not can["racing"])
        or (isinstance(step, (FailedSave, KilledSave)) and not can["failing"])
    )


@pytest.mark.ckpt_suite("lifecycle")
class LifecycleTests:
    """Runs of saves, async saves, loads and failed saves, against a model of the checkpoints."""

    @pytest.mark.ckpt_level("core")
    @_judges_itself
    def test_lifecycle(self, ckpt):
        """Saves (some async, left running), re-saves with other keys, loads on the same and
        on other worlds, loads paused while a save commits: every load returns one committed
        checkpoint whole."""
        run_lifecycle(ckpt, strict=False)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @_judges_itself
    def test_lifecycle_with_failed_saves(self, ckpt):
        """As :meth:`test_lifecycle`, with saves failing at any hook and ranks killed mid-save:
        the previous checkpoint stays, what a failed save left is never loaded, and nothing
        is left beside the checkpoints."""
        if not features_of(ckpt.backend, strict=True)["failing"]:
            reason = ckpt.backend.injection_unsupported("storage_writer")
            unsupported(reason or "it has no storage writer to fail (feature 'storage')")
        run_lifecycle(ckpt, strict=True)
