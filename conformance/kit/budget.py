"""A time budget for a run (``--ckpt-budget 10m``), spread over its tests.

Each test, when it starts, gets an equal share of what is left of the budget among the
tests left to run in this process, so time a fast test leaves goes to the ones after it.
A property test draws examples until its share runs out: the first step an example takes
on the ranks after that, or the end of an example, raises :class:`OutOfTime`, and the test
ends as *out of time* with the number of examples it ran, never as a pass and never as a
failure. Once an
example has failed, the budget no longer stops the test: hypothesis shrinks the failure
and replays it (its own limits apply).

Why a step and not hypothesis' settings: hypothesis has no time limit on generation, and
an example that returns before drawing what earlier examples drew is flagged as flaky data
generation. :class:`OutOfTime` is a ``KeyboardInterrupt``, which hypothesis passes through
at once: no failure, no shrinking, nothing saved to its example database. It is raised at an
example's first step on the ranks (before it does any work) or at its end, never while its
failure is being judged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .running import RankOutcome, Ranks

if TYPE_CHECKING:
    from ..backend import Backend

__all__ = ["Budget", "BudgetedRanks", "OutOfTime", "Share", "parse_duration"]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``10m``, ``1h30m``, ``2.5m``.

    Raises ``ValueError`` naming the text and the accepted forms.
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(
                f"time budget {text!r}: expected seconds or a duration such as 90s, 10m, 1h30m"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"time budget {text!r}: must be more than 0 seconds")
    return seconds


class OutOfTime(KeyboardInterrupt):
    """The running test's share of the budget ran out: no further example runs.

    A ``KeyboardInterrupt``, because that is what hypothesis passes through at once without
    calling it a failure, shrinking it, or saving the stopped example to its database (it does
    all three for any other exception). The suites' pytest hook turns it into the *out of time*
    outcome before pytest sees it."""


@dataclass
class Share:
    """One test's share of the budget, and what it ran within it."""

    seconds: float
    deadline: float
    """``time.monotonic()`` at which the share ends."""
    budget: float
    examples: int = 0
    """Examples run to their end (a failing one included)."""
    out_of_time: bool = False
    _open: bool = False
    _checking: bool = False
    _failed: bool = False

    def example_begins(self) -> None:
        """An example is about to run: its first step on the ranks checks the time."""
        self._open, self._checking = True, True

    def step(self) -> None:
        """Before a step on the ranks: at an example's first step, raise :class:`OutOfTime` if
        the share has run out (and no example failed); the example is not counted."""
        if not self._checking:
            return
        self._checking = False
        self._stop_if_late()

    def hold(self) -> None:
        """No time check until the example ends (its failure is being judged, which may run
        steps of another backend)."""
        self._checking = False

    def failure_seen(self) -> None:
        """An example failed: the test runs on to shrink it, whatever the time."""
        self._failed = True

    def example_ends(self) -> None:
        """An example ran to its end: count it, then raise :class:`OutOfTime` if the share has
        run out (for tests whose examples take no step on the ranks, such as simulated planning)."""
        if not self._open:
            return
        self._open = self._checking = False
        self.examples += 1
        self._stop_if_late()

    def _stop_if_late(self) -> None:
        if not self._failed and time.monotonic() > self.deadline:
            self._open = self._checking = False
            self.out_of_time = True
            raise OutOfTime(self.reason())

    def reason(self, max_examples: int | None = None) -> str:
        """``out of time: ran 7 example(s) (of up to 20) in this test's 3.1 s of a 10m budget``."""
        of = f" (of up to {max_examples})" if max_examples else ""
        return (
            f"out of time: ran {self.examples} example(s){of} in this test's {self.seconds:.1f} s "
            f"share of the {_shown(self.budget)} budget; not a pass"
        )


def _shown(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class Budget:
    """The run's budget: ``seconds`` from ``started`` (``time.monotonic()``), shared by
    ``tests`` tests run by ``workers`` processes (xdist), each expecting its equal part."""

    def __init__(
        self, seconds: float, tests: int, *, workers: int = 1, started: float | None = None
    ):
        self.seconds = seconds
        self.end = (time.monotonic() if started is None else started) + seconds
        self.left = -(-max(1, tests) // max(1, workers))
        """Tests this process still expects to run."""
        self.each = seconds * max(1, workers) / max(1, tests)
        """A test's share when time is shared evenly from the start."""

    def share(self) -> Share:
        """The next test's share: what is left divided among the tests left; a test beyond
        those this process expected (xdist hands tests out unevenly) gets an even share of the
        whole budget, as far as time is left."""
        now = time.monotonic()
        remaining = max(0.0, self.end - now)
        if self.left > 0:
            seconds = remaining / self.left
            self.left -= 1
        else:
            seconds = min(remaining, self.each)
        return Share(seconds=seconds, deadline=now + seconds, budget=self.seconds)


class BudgetedRanks(Ranks):
    """``ranks``, with the running test's :class:`Share` checked before every step (see
    :meth:`Share.step`); otherwise the same calls, results and errors."""

    def __init__(self, ranks: Ranks, share: Share):
        self.inner, self.share = ranks, share
        self.device = ranks.device

    def __repr__(self) -> str:
        return f"BudgetedRanks({self.inner!r})"

    def unavailable(self, world: int) -> str | None:
        return self.inner.unavailable(world)

    def run(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        world: int,
        timeout: float,
    ) -> list[RankOutcome]:
        """The inner ``run``, after the share's check (may raise :class:`OutOfTime`)."""
        self.share.step()
        return self.inner.run(backend, fn, args, world=world, timeout=timeout)

    def run_fresh(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        world: int,
        timeout: float,
    ) -> list[RankOutcome]:
        """The inner ``run_fresh``, after the share's check (may raise :class:`OutOfTime`)."""
        self.share.step()
        return self.inner.run_fresh(backend, fn, args, world=world, timeout=timeout)
