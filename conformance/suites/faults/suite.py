"""Faulty storage: a writer or reader failing at any hook on any rank fails every rank, clearly.

core: every rank raises within the timeout (a hang fails with every rank's stack), and
every rank's error names the failing rank's exception. strict: a previous checkpoint at
the same path still loads with its old values, and a failed first save is not loadable.

Each hook is a parameter, so every hook is tried in every run; hypothesis draws the
world, the failing rank and the state. A fault counts only where it was injected: a
backend whose own save or load takes no storage to wrap, or whose driver never calls the
hook on the failing rank, gets these tests reported unsupported, never passed.
"""

from __future__ import annotations

import pytest
from ckptconf.harness.faults import KILL_POINTS
from hypothesis import Phase
from hypothesis import strategies as st

from ...kit import values
from ...kit.cases import resalted
from ...kit.failures import error_lines
from ...kit.injection import READER_HOOKS, WRITER_HOOKS
from ...kit.layouts import small_layout_examples
from ...kit.outcomes import unsupported
from ...kit.profiles import property_test
from ...kit.trial import Trial, describe_outcomes, errors_of
from . import ranks
from .cases import fault_cases

__all__ = ["FaultsTests"]

_TIMEOUT = 60.0
_KILL_POINTS = tuple(p for p in KILL_POINTS if p != "set_up_storage_writer")
_PER_HOOK = {
    "max_examples": lambda n: max(3, n // 3),
    # each world's layouts in one case, the coordinator failing: an example costs a second
    "pinned": small_layout_examples(
        (1, 2, 3), label="failing rank and case", wrap=lambda c: (0, c)
    ),
}
"""A third of the profile's examples for each hook: all hooks tried, the cost bounded."""


def _injectable(ckpt, storage: str) -> None:
    reason = ckpt.backend.injection_unsupported(storage)
    if reason is not None:
        unsupported(reason)


def _faulty_step(trial: Trial, step: str, fn, case, path: str, hook: str, rank: int) -> list:
    """Run a save or load with a fault at ``hook`` on ``rank``; its per-rank outcomes.

    Skips as unsupported when the fault never fired (the backend's driver did not call
    ``hook`` on that rank): nothing was tested.
    """
    outcomes = trial.run(step, fn, case, path, hook, rank, world=case.save_world)
    if not outcomes[rank]["fired"]:
        unsupported(
            f"its {step.split()[0]} never called {hook} on rank {rank}, so no fault was injected"
        )
    return outcomes


def _check_every_rank_reports(trial: Trial, hook: str, rank: int, results: list) -> None:
    expected = f"injected fault at {hook} on rank {rank}"
    for r, result in enumerate(results):
        if not result["raised"]:
            raise trial.fail(
                f"rank {r} did not raise after a fault at {hook} on rank {rank}",
                "the operation returned normally",
                kind="no_error",
                rank=r,
            )
        if expected not in result["text"]:
            raise trial.fail(
                f"rank {r}'s error does not report the failing rank's exception ({expected!r})",
                f"rank {r} raised {result['type']}: {result['text'][:1500]}",
                kind="wrong_error",
                errors=tuple(error_lines(result["type"], result["text"], result.get("causes", ()))),
                rank=r,
            )


def _check_previous_checkpoint(trial: Trial, old, path: str, after: str) -> None:
    """The checkpoint at ``path`` loads and holds ``old``'s values (``after``: what happened)."""
    # ``old`` is the checkpoint that must be there: the previous one, or the new one where the
    # interrupted save in fact completed
    outcomes = trial.outcomes(f"load {after}", values.load_case, old, path, world=old.save_world)
    if any(o.raised for o in outcomes):
        raise trial.fail(
            f"the previous checkpoint no longer loads {after}",
            describe_outcomes(outcomes),
            kind="raised",
            errors=errors_of(outcomes),
            rank=next(o.rank for o in outcomes if o.raised),
        )
    trial.check_values(
        [m for o in outcomes for m in o.value],
        f"value(s) of the previous checkpoint changed {after} (new values are salted +777)",
    )


@pytest.mark.ckpt_suite("faults")
@pytest.mark.ckpt_requires("storage")
class FaultsTests:
    """Storage failing at every hook, on the coordinator and on other ranks."""

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @property_test(**_PER_HOOK)
    def test_writer_fault_fails_every_rank(self, ckpt, hook, data):
        """A writer failing at ``hook``: every rank raises, naming the failing rank's error."""
        _injectable(ckpt, "storage_writer")
        rank, case = data.draw(fault_cases(ckpt.backend, hook), label="failing rank and case")
        trial = ckpt.trial(f"fault at {hook} on rank {rank}\n{case.describe()}", timeout=_TIMEOUT)
        results = _faulty_step(
            trial,
            "save (with a faulty writer)",
            ranks.save_with_fault,
            case,
            ckpt.path(),
            hook,
            rank,
        )
        _check_every_rank_reports(trial, hook, rank, results)

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize("hook", READER_HOOKS)
    @property_test(**_PER_HOOK)
    def test_reader_fault_fails_every_rank(self, ckpt, hook, data):
        """A reader failing at ``hook``: every rank raises, naming the failing rank's error."""
        _injectable(ckpt, "storage_reader")
        rank, case = data.draw(fault_cases(ckpt.backend, hook), label="failing rank and case")
        trial = ckpt.trial(f"fault at {hook} on rank {rank}\n{case.describe()}", timeout=_TIMEOUT)
        path = ckpt.path()
        trial.run(
            "save (before the faulty load)", values.save_case, case, path, world=case.save_world
        )
        results = _faulty_step(
            trial, "load (with a faulty reader)", ranks.load_with_fault, case, path, hook, rank
        )
        _check_every_rank_reports(trial, hook, rank, results)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @property_test(**_PER_HOOK)
    def test_failed_save_keeps_the_previous_checkpoint(self, ckpt, hook, data):
        """A re-save failing at ``hook`` leaves the previous checkpoint whole, with old values."""
        _injectable(ckpt, "storage_writer")
        rank, case = data.draw(fault_cases(ckpt.backend, hook), label="failing rank and case")
        newer = resalted(case)
        trial = ckpt.trial(f"fault at {hook} on rank {rank}\n{case.describe()}", timeout=_TIMEOUT)
        path = ckpt.path()
        trial.run("save (the first)", values.save_case, case, path, world=case.save_world)
        _faulty_step(
            trial,
            "save (again, with a faulty writer)",
            ranks.save_with_fault,
            newer,
            path,
            hook,
            rank,
        )
        _check_previous_checkpoint(trial, case, path, f"(after a re-save failed at {hook})")

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @property_test(**_PER_HOOK)
    def test_failed_first_save_is_not_loadable(self, ckpt, hook, data):
        """A first save failing at ``hook`` leaves nothing that loads as a checkpoint (and the
        same save without the fault loads: the control)."""
        _injectable(ckpt, "storage_writer")
        rank, case = data.draw(fault_cases(ckpt.backend, hook), label="failing rank and case")
        trial = ckpt.trial(f"fault at {hook} on rank {rank}\n{case.describe()}", timeout=_TIMEOUT)
        path = ckpt.path()
        _faulty_step(
            trial, "save (with a faulty writer)", ranks.save_with_fault, case, path, hook, rank
        )
        results = trial.run(
            "load (after the failed save)",
            ranks.load_expecting_failure,
            case,
            path,
            world=case.save_world,
        )
        for r, result in enumerate(results):
            if not result["raised"]:
                raise trial.fail(
                    f"rank {r} loaded a checkpoint whose save failed",
                    f"mismatches: {result.get('mismatches')}",
                    kind="no_error",
                    rank=r,
                )
        control = ckpt.path()
        trial.run(
            "save (the same, without a fault: the control)",
            values.save_case,
            case,
            control,
            world=case.save_world,
        )
        loaded = trial.run(
            "load (of the control)", values.load_case, case, control, world=case.save_world
        )
        trial.check_values(
            [m for r in loaded for m in r],
            "value(s) differ in the control (the same save without a fault)",
        )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    # fresh processes cost seconds per example: few examples, and no shrinking
    @property_test(
        max_examples=lambda n: max(3, n // 6),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        pinned=small_layout_examples((2,), label="case", wrap=lambda c: (0, c)),
    )
    def test_rank_killed_mid_save_keeps_the_previous_checkpoint(self, ckpt, data):
        """A rank SIGKILLed at a point of a re-save: the previous checkpoint still loads whole."""
        _injectable(ckpt, "storage_writer")
        point = data.draw(st.sampled_from(_KILL_POINTS), label="point")
        coordinator_only = point in ("prepare_global_plan", "finish")
        rank = 0 if coordinator_only else data.draw(st.integers(0, 1), label="rank")
        _, case = data.draw(fault_cases(ckpt.backend, "write_data", worlds=(2,)), label="case")
        newer = resalted(case)
        trial = ckpt.trial(f"rank {rank} killed at {point}\n{case.describe()}", timeout=_TIMEOUT)
        path = ckpt.path()
        trial.run("save (the first)", values.save_case, case, path, world=2)
        killed = trial.run_fresh(
            f"save (again, killing rank {rank} at {point})",
            ranks.save_killed,
            newer,
            path,
            rank,
            point,
            world=2,
        )
        if isinstance(killed, Exception) or any(o.raised for o in killed):
            survivor, after = case, f"(after rank {rank} was killed at {point})"
        else:  # the save never reached the point (mid_write with one item): it completed
            survivor, after = newer, f"(after a re-save that never reached {point})"
        _check_previous_checkpoint(trial, survivor, path, after)
