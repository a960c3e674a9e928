"""A trial: one drawn case of one conformance test against one backend.

Every suite runs its cases through a :class:`Trial`: each step of the case (save, load,
read metadata, ...) runs on the ranks of :class:`~.running.Ranks`, and whatever goes
wrong (a rank raising where it must not, a hang, a dead rank, a wrong value) becomes one
:class:`~.failures.ConformanceFailure` with backend, suite, test, case, rank, key,
global index, expected and actual values and the reproduction filled in. The ``ckpt``
fixture (:class:`Checker`) makes trials for a test; :func:`check_save_then_load` is the
same check without pytest, for a plug-in author's own property tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from ckptconf.conformance.backend import Backend
from ckptconf.conformance.session import Session

from .failures import (
    STEPS,
    ConformanceFailure,
    HangFailure,
    Mismatch,
    error_lines,
    error_of,
    exception_text,
    listing,
)
from .outcomes import unsupported
from .running import PoolRanks, RankOutcome, Ranks, RanksLost

__all__ = [
    "Checker",
    "Trial",
    "check_save_then_load",
    "describe_outcomes",
    "errors_of",
    "errors_of_calls",
    "ranks_text",
    "step_of",
]

DEFAULT_TIMEOUT = 120.0
"""Seconds a step may take on its ranks before they are stopped and their stacks shown."""


def describe_outcomes(outcomes: Sequence[RankOutcome], *, tracebacks: bool = True) -> str:
    """Every rank's error (ranks that failed alike listed once), tracebacks and output."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for o in outcomes:
        if o.raised:
            groups.setdefault((o.error_type or "", o.message, o.traceback), []).append(o.rank)
    lines = []
    for (kind, message, _), ranks in groups.items():
        # a message carrying the ranks' tracebacks (the reference's errors do) shows them below
        message = message.split("\n--- traceback of rank", 1)[0]
        lines.append(f"  {ranks_text(ranks)}: {kind}: {message.strip()[-3000:]}")
    if tracebacks:
        for (_, _, trace), ranks in groups.items():
            if trace.strip():
                lines.append(f"--- {ranks_text(ranks)} ---\n{trace.rstrip()[-6000:]}")
        for o in outcomes:
            if o.output.strip():
                lines.append(f"--- output of rank {o.rank} ---\n{o.output.rstrip()[-4000:]}")
    return "\n".join(lines)


def errors_of(outcomes: Sequence[RankOutcome]) -> tuple[str, ...]:
    """Each distinct ``Type: message`` the ranks raised, in rank order: a failure's ``errors``."""
    found = (
        line
        for o in outcomes
        if o.raised
        for line in error_lines(o.error_type or "", o.message, o.causes)
    )
    return tuple(dict.fromkeys(found))


def errors_of_calls(results: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """Each distinct ``Type: message`` of the :func:`~.values.call_outcome` dicts that raised,
    in rank order: a failure's ``errors`` where the ranks report their errors as data."""
    found = (
        line
        for r in results
        if r["raised"]
        for line in error_lines(r["type"], r["text"], r.get("causes", ()))
    )
    return tuple(dict.fromkeys(found))


def step_of(label: str) -> str:
    """The step (one of :data:`~.failures.STEPS`) a step's label names by its first word:
    ``"load (after the failed save)"`` is a ``load``."""
    step = label.split(maxsplit=1)[0] if label.strip() else ""
    if step not in STEPS:
        raise ValueError(f"a step's label must start with its step, one of {STEPS}: {label!r}")
    return step


def ranks_text(ranks: Sequence[int]) -> str:
    """``rank 2`` or ``ranks 0, 1``: ranks as a message names them."""
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"


class Trial:
    """One case of one test against ``backend``: runs its steps, fails with every field filled.

    ``case`` is the case as a person reads it (a string, or an object with ``describe()``).
    Steps that cannot run here (``ranks.unavailable``) are skipped through ``skip``
    (``pytest.skip`` in a test; by default a RuntimeError).
    """

    def __init__(
        self,
        backend: Backend,
        case: Any,
        *,
        ranks: Ranks | None = None,
        suite: str | None = None,
        test: str | None = None,
        reproduction: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        skip: Callable[[str], Any] | None = None,
    ):
        self.backend = backend
        self.case = case if isinstance(case, str) else case.describe()
        self.ranks = ranks or PoolRanks()
        self.suite, self.test, self.reproduction = suite, test, reproduction
        self.timeout = timeout
        self._skip = skip or _cannot_run
        self.last_step: str | None = None
        """The step of the last step run: what a failure is about unless it says otherwise."""

    def about(self, case: Any) -> Trial:
        """This trial, for ``case`` instead (the same case with a change made, say)."""
        return Trial(
            self.backend,
            case,
            ranks=self.ranks,
            suite=self.suite,
            test=self.test,
            reproduction=self.reproduction,
            timeout=self.timeout,
            skip=self._skip,
        )

    def fail(
        self,
        what: str,
        details: str = "",
        *,
        kind: str,
        step: str | None = None,
        errors: Sequence[str] = (),
        keys: Sequence[str] = (),
        mismatch: Mismatch | None = None,
        **where: Any,
    ) -> ConformanceFailure:
        """The failure to raise: ``what`` went wrong in this trial, of ``kind`` (one of
        :data:`~.failures.KINDS`) at ``step`` (default: the last step run); ``errors`` are the
        ``Type: message`` the ranks raised; ``mismatch`` (or ``where``: rank, key, index,
        expected, actual) says where the first wrong value is."""
        step = step or self.last_step
        if step is None:
            raise ValueError(f"a failure needs a step, and no step ran yet: {what!r}")
        if mismatch is not None:
            where = {
                "rank": mismatch.rank,
                "key": mismatch.key,
                "index": mismatch.global_index,
                "expected": mismatch.expected,
                "actual": mismatch.actual,
                **where,
            }
        return ConformanceFailure(
            what,
            backend=self.backend.name,
            suite=self.suite,
            test=self.test,
            step=step,
            kind=kind,
            errors=tuple(errors),
            keys=tuple(keys),
            case=self.case,
            details=details,
            reproduction=self.reproduction,
            **where,
        )

    def raised(self, what: str, exc: BaseException, *, step: str) -> ConformanceFailure:
        """The failure to raise when the backend's code, called in the controller (a planner
        planning a simulated world), raised ``exc`` at ``step``: kind ``raised``, the traceback
        and any notes as details, ``Type: message`` as the error."""
        notes = "\n".join(getattr(exc, "__notes__", ()))
        details = exception_text(exc) + (f"\n{notes}" if notes else "")
        return self.fail(what, details, kind="raised", step=step, errors=(error_of(exc),))

    def outcomes(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        world: int,
        timeout: float | None = None,
    ) -> list[RankOutcome]:
        """``fn(backend, *args)`` on ``world`` ranks; a rank's exception is data, but a hang or a
        dead rank fails the trial, naming ``step`` and showing every stuck rank's stack (a hang
        as a :class:`~.failures.HangFailure`, not shrunk)."""
        try:
            return self._step(self.ranks.run, fn, args, world, timeout, step)
        except RanksLost as exc:
            raise self._lost(step, exc) from None

    def run(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        world: int,
        timeout: float | None = None,
    ) -> list[Any]:
        """What ``fn(backend, *args)`` returned on each of ``world`` ranks; a rank that raises, a
        hang or a dead rank fails the trial, naming ``step``."""
        outcomes = self.outcomes(step, fn, *args, world=world, timeout=timeout)
        failed = [o for o in outcomes if o.raised]
        if failed:
            raise self.fail(
                f"{step} raised on {ranks_text([o.rank for o in failed])}",
                describe_outcomes(outcomes),
                kind="raised",
                errors=errors_of(outcomes),
                rank=failed[0].rank,
            )
        return [o.value for o in outcomes]

    def run_fresh(
        self,
        step: str,
        fn: Callable[..., Any],
        *args: Any,
        world: int,
        timeout: float | None = None,
    ) -> list[RankOutcome] | RanksLost:
        """As :meth:`outcomes` on new processes, for a step that kills a rank: a lost rank is
        returned, not raised."""
        try:
            return self._step(self.ranks.run_fresh, fn, args, world, timeout, step)
        except RanksLost as exc:
            return exc

    def check_values(
        self, mismatches: Sequence[Mismatch], what: str, *, step: str | None = None
    ) -> None:
        """Fail listing every mismatch if there is any; ``what`` is prefixed with their count;
        ``step``: the step whose values these are (default: the last step run)."""
        if mismatches:
            raise self.fail(
                f"{len(mismatches)} {what}",
                listing(mismatches),
                kind="wrong_values",
                step=step,
                errors=tuple(dict.fromkeys(str(m) for m in mismatches)),
                keys=tuple(dict.fromkeys(m.key for m in mismatches)),
                mismatch=mismatches[0],
            )

    def save_then_load(
        self,
        case: Any,
        path: str,
        *,
        save: Callable[..., Any] | None = None,
        load: Callable[..., Any] | None = None,
    ) -> None:
        """Save ``case`` on its saving world, load it on its loading world into blank values and
        compare every element of every local piece. ``save(backend, case, path)`` and
        ``load(backend, case, path) -> mismatches`` are rank functions (default: a
        :class:`~.cases.SaveLoadCase`'s); the worlds are the case's ``save_world`` and
        ``load_world`` (or its ``world``)."""
        from . import values

        save_world = getattr(case, "save_world", None) or case.world
        load_world = getattr(case, "load_world", None) or case.world
        self.run("save", save or values.save_case, case, path, world=save_world)
        loaded = self.run("load", load or values.load_case, case, path, world=load_world)
        self.check_values(
            [m for rank in loaded for m in rank], "loaded value(s) differ from what was saved"
        )

    def _step(
        self, how, fn, args, world: int, timeout: float | None, label: str
    ) -> list[RankOutcome]:
        """``how`` (``ranks.run`` or ``ranks.run_fresh``) of ``fn`` on ``world`` ranks, if a world
        of that size can run here (else skipped, with the reason); ``label`` names the step, and
        must start with one of :data:`~.failures.STEPS`."""
        self.last_step = step_of(label)
        reason = self.ranks.unavailable(world)
        if reason is not None:
            self._skip(reason)
            raise RuntimeError(f"cannot run this step here: {reason}")  # skip() returned
        return how(self.backend, fn, args, world=world, timeout=timeout or self.timeout)

    def _lost(self, step: str, exc: RanksLost) -> BaseException:
        """The failure of a step whose ranks were lost; a hang is a :class:`HangFailure`, which
        hypothesis does not shrink (each re-run would wait out the timeout again)."""
        what = "hung" if exc.hung else "lost a rank"
        failure = self.fail(
            f"{step} {what}: {exc.reason}",
            describe_outcomes(exc.outcomes),
            kind="hang" if exc.hung else "lost_rank",
            rank=exc.outcomes[0].rank if exc.outcomes else None,
        )
        return HangFailure(failure) if exc.hung else failure


def _cannot_run(reason: str) -> None:
    raise RuntimeError(f"cannot run this step here: {reason}")


class Checker:
    """The ``ckpt`` fixture of a conformance test: the backend, new checkpoint paths, trials.

    ``ckpt.trial(case)`` starts a :class:`Trial` of a drawn case; ``ckpt.path()`` is a new,
    not yet existing path under the session's temporary folder; ``ckpt.check_save_then_load``
    is the round trip most tests make.
    """

    verdict = None
    """The test's :class:`~.verdicts.Verdict` (set by the ``ckpt`` fixture): judges each failing
    example; ``None`` where no test is judged (an example re-run on another backend)."""
    share = None
    """The test's share of the run's time budget (a :class:`~.budget.Share`, set by the ``ckpt``
    fixture under ``--ckpt-budget``): the examples check it; ``None`` without a budget."""

    def __init__(
        self,
        backend: Backend,
        *,
        ranks: Ranks,
        paths: Callable[[], str],
        suite: str | None = None,
        test: str | None = None,
        reproduction: str | None = None,
        skip: Callable[[str], Any] | None = None,
        timeout: float | None = None,
        session: Session | None = None,
    ):
        self.backend, self.ranks = backend, ranks
        self.suite, self.test, self.reproduction = suite, test, reproduction
        self._paths, self._skip = paths, skip
        self._timeout = timeout  # the run's --ckpt-timeout: every step's, when given
        self.session = session if session is not None else Session.from_environment()
        """What the run was asked for (:class:`~ckptconf.conformance.session.Session`): profile,
        seed, shrinking, the largest world; outside pytest, the environment's defaults."""

    def supports(self, feature: str) -> bool:
        """Whether the backend has not declared ``feature`` unsupported."""
        return self.backend.supports(feature)

    def path(self) -> str:
        """A new checkpoint path (not yet created) in the session's temporary folder."""
        return self._paths()

    def save_planner(self) -> Callable[[], Any]:
        """The save planner factory the backend plans with; a whole-system backend that
        exposes none is unsupported at the planner level (skipped)."""
        return self._planner(self.backend.used_save_planner(), "save")

    def load_planner(self) -> Callable[[], Any]:
        """The load planner factory the backend plans with (as :meth:`save_planner`)."""
        return self._planner(self.backend.used_load_planner(), "load")

    def _planner(self, factory: Callable[[], Any] | None, step: str) -> Callable[[], Any]:
        if factory is None:
            unsupported(
                f"its own {step} replaces the driver and it exposes no {step} planner, so "
                "there is nothing to run at the planner level"
            )
        return factory

    def trial(self, case: Any, *, timeout: float = DEFAULT_TIMEOUT) -> Trial:
        """A trial of ``case`` (a string or an object with ``describe()``) for this test; its
        steps time out after ``timeout`` seconds, or the run's ``--ckpt-timeout``."""
        return Trial(
            self.backend,
            case,
            ranks=self.ranks,
            suite=self.suite,
            test=self.test,
            reproduction=self.reproduction,
            timeout=self._timeout or timeout,
            skip=self._skip,
        )

    def check_save_then_load(self, case: Any) -> None:
        """Save the case, load it under its load layouts, compare every value."""
        self.trial(case).save_then_load(case, self.path())


def check_save_then_load(
    backend: Backend,
    case: Any,
    path: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """Save ``case`` (a :class:`~ckptconf.conformance.kit.cases.SaveLoadCase`) with ``backend``
    on warm ranks in ``device`` mode, load it under its load layouts and compare every value.

    Raises :class:`~ckptconf.conformance.kit.failures.ConformanceFailure` on a rank's error,
    a hang (after ``timeout`` seconds) or any wrong value. Without ``path`` a temporary
    folder is used and removed. For a property test of your own::

        @given(save_load_cases(save_worlds=(2,)))
        def test_mine(case):
            check_save_then_load(my_backend(), case)
    """
    trial = Trial(backend, case, ranks=PoolRanks(device), timeout=timeout)
    if path is not None:
        trial.save_then_load(case, os.fspath(path))
        return
    parent = tempfile.mkdtemp(prefix="ckptconf-check-")
    try:
        trial.save_then_load(case, os.path.join(parent, "checkpoint"))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
