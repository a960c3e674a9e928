"""Where a conformance run's time goes: ``ckptconf bench suite --backend NAME``.

Runs the suite in this process (no xdist: the harness's counters are this process's) with a
timing plugin, and splits the wall time into: start-up before collection, collection
(importing torch and the suites), rank pool starts, steps on the ranks (and, of those, the
harness's own cost per step, measured in the same run with no-op steps), and the controller's
time between steps (hypothesis drawing, building cases, checking values). Each suite's total
follows. A figure to watch between versions, not a pass/fail check.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from ckptconf.conformance.options import checkpoints_in_memory, own_session

__all__ = ["SuiteTimes", "bench_suite", "step_overhead"]


@dataclass
class SuiteTimes:
    """One run's time, in seconds, split by where it went."""

    backend: str
    profile: str
    wall: float = 0.0
    before_collection: float = 0.0
    collection: float = 0.0
    world_starts: int = 0
    world_start_seconds: float = 0.0
    steps: int = 0
    step_seconds: float = 0.0
    step_overhead: float = 0.0
    """Seconds of a no-op step on a warm 2-rank world (what the harness adds to each step)."""
    controller_cpu: float = 0.0
    """CPU seconds of the controller process over the run."""
    suites: dict[str, list[float]] = field(default_factory=dict)
    """Per suite: ``[tests, seconds]``."""
    outcomes: Counter = field(default_factory=Counter)

    @property
    def tests(self) -> int:
        return int(sum(count for count, _ in self.suites.values()))

    @property
    def between_steps(self) -> float:
        """Test time outside the ranks: drawing, case building, checking, reporting."""
        in_tests = sum(seconds for _, seconds in self.suites.values())
        return max(0.0, in_tests - self.step_seconds - self.world_start_seconds)

    def rows(self) -> list[tuple[str, float, str]]:
        """``(part, seconds, note)`` in the order a person reads them."""
        harness = self.steps * self.step_overhead
        return [
            (
                "start-up",
                self.before_collection,
                "pytest and its plugins, importing ckptconf.conformance (torch)",
            ),
            ("collection", self.collection, "the suites' modules and parametrization"),
            ("rank pool starts", self.world_start_seconds, f"{self.world_starts} start(s)"),
            (
                "steps on the ranks",
                self.step_seconds,
                f"{self.steps} steps; of which the harness ~{harness:.1f} s "
                f"({self.step_overhead * 1e3:.1f} ms a step)",
            ),
            ("controller between steps", self.between_steps, "hypothesis, cases, checks"),
        ]


class _Timer:
    """A pytest plugin timing collection, each test by suite, and the outcomes."""

    def __init__(self, times: SuiteTimes, started: float):
        self.times, self.started = times, started
        self._collect = started

    def pytest_collection(self, session) -> None:
        self._collect = time.perf_counter()
        self.times.before_collection = self._collect - self.started

    def pytest_collection_finish(self, session) -> None:
        self.times.collection = time.perf_counter() - self._collect

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        marker = item.get_closest_marker("ckpt_suite")
        entry = self.times.suites.setdefault(marker.args[0] if marker else "(other)", [0, 0.0])
        began = time.perf_counter()
        try:
            return (yield)
        finally:
            entry[0] += 1
            entry[1] += time.perf_counter() - began

    def pytest_runtest_logreport(self, report) -> None:
        from ckptconf.conformance.plugin import INFO

        info = next((v for name, v in report.user_properties if name == INFO), None)
        if info is not None and (report.when == "call" or report.skipped):
            self.times.outcomes[info["outcome"]] += 1


def step_overhead(calls: int = 50) -> float:
    """Seconds a no-op call on a warm 2-rank cpu world takes (the pool started first)."""
    from ckptconf.harness import get_world

    world = get_world(2, "cpu")
    world.run(_nothing, timeout=120)
    began = time.perf_counter()
    for _ in range(calls):
        world.run(_nothing, timeout=120)
    return (time.perf_counter() - began) / calls


def _nothing() -> None:
    return None


def bench_suite(
    backend: str,
    *,
    profile: str = "ci",
    select: str | None = None,
    folder: str | None = None,
    extra: tuple[str, ...] = (),
) -> SuiteTimes:
    """Run the conformance suite against ``backend`` (``-k select``) and time its parts; the
    checkpoints go under ``folder``, else where ``ckptconf run`` puts them (a new folder in
    memory, removed afterwards, where there is one).

    Raises ``RuntimeError`` if pytest stopped before running tests (a usage error).
    """
    from ckptconf.harness.world import TIMINGS

    started = time.perf_counter()
    cpu = time.process_time()
    times = SuiteTimes(backend=backend, profile=profile)
    before = (TIMINGS.starts, TIMINGS.start_seconds, TIMINGS.calls, TIMINGS.call_seconds)
    args = ["--pyargs", "ckptconf.conformance", "--ckpt-backend", backend]
    args += ["--ckpt-profile", profile]
    if select:
        args += ["-k", select]
    with checkpoints_in_memory("ckptconf-bench-", wanted=folder is None) as made:
        if folder or made:
            args += ["--ckpt-dir", folder or made]
        with own_session() as session:  # as ckptconf run's
            status = pytest.main([*args, *session, *extra], plugins=[_Timer(times, started)])
    times.wall = time.perf_counter() - started
    times.controller_cpu = time.process_time() - cpu
    times.world_starts = TIMINGS.starts - before[0]
    times.world_start_seconds = TIMINGS.start_seconds - before[1]
    times.steps = TIMINGS.calls - before[2]
    times.step_seconds = TIMINGS.call_seconds - before[3]
    if int(status) not in (0, 1) or not times.suites:
        raise RuntimeError(f"the suite did not run (pytest exit status {int(status)})")
    times.step_overhead = step_overhead()
    return times


def as_table(times: SuiteTimes) -> Any:
    """The times as a rich table: the parts, then each suite."""
    from rich.table import Table

    table = Table(
        title=f"ckptconf bench suite: {times.backend}, profile {times.profile}, "
        f"{times.tests} tests in {times.wall:.1f} s (controller CPU {times.controller_cpu:.1f} s)"
    )
    for column, justify in (("part", "left"), ("seconds", "right"), ("share", "right")):
        table.add_column(column, justify=justify)
    table.add_column("what")
    for part, seconds, note in times.rows():
        table.add_row(part, f"{seconds:.1f}", f"{seconds / times.wall:.0%}", note)
    for suite, (count, seconds) in sorted(times.suites.items(), key=lambda s: -s[1][1]):
        table.add_row(
            f"  suite {suite}",
            f"{seconds:.1f}",
            f"{seconds / times.wall:.0%}",
            f"{count} tests, {seconds / max(1, count):.2f} s each",
        )
    return table
