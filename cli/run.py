"""``ckptconf run``: the conformance suites against one backend, a table and the failures.

Its options are the pytest plugin's (:data:`ckptconf.conformance.options.OPTIONS`, shown as
``--backend`` for ``--ckpt-backend``), plus pytest's own ``-k``, ``-x``, ``--lf`` and ``-n``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ckptconf.conformance.options import (
    add_to_parser,
    as_pytest_args,
    checkpoints_in_memory,
    own_session,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``ckptconf`` command's subparsers."""
    parser = sub.add_parser("run", help="run the conformance suite against a backend")
    add_to_parser(parser)
    parser.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    parser.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "--lf",
        "--last-failed",
        dest="last_failed",
        action="store_true",
        help="re-run only the tests that failed in the previous --report",
    )
    parser.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the one-save-one-load check that stops a run at once when nothing can pass",
    )
    parser.add_argument(
        "-n", "--numprocesses", default=None, help="run tests in N processes (pytest-xdist)"
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: arguments passed to pytest"
    )
    parser.set_defaults(handler=run)


class _Progress:
    """A pytest plugin showing progress: a live bar on a terminal, one line per test otherwise
    (a log or CI shows where a long run is)."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = None
        self.total = 0
        self.done = 0
        self.report = None

    def pytest_collection_finish(self, session):
        self.total = len(session.items)
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task("collecting", total=self.total)

    def pytest_runtest_logstart(self, nodeid, location):
        if self.live:
            self.progress.update(self.task, description=nodeid.split("::", 1)[-1][:60])

    def pytest_runtest_logreport(self, report):
        if self.live or report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        from ckptconf.conformance.session import INFO

        info = next((v for name, v in report.user_properties if name == INFO), None)
        outcome = info["outcome"] if info else report.outcome
        ran = f": {info['message']}" if info and outcome == "out of time" else ""
        of = f"/{self.total}" if self.total else ""  # an xdist controller collects nothing
        self.console.print(
            f"[{self.done + 1}{of}] {outcome:11} {report.nodeid.split('::', 1)[-1]} "
            f"({report.duration:.1f} s){ran}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def pytest_runtest_logfinish(self, nodeid, location):
        self.done += 1
        if self.live:
            self.progress.advance(self.task)

    def pytest_sessionfinish(self, session):
        from ckptconf.conformance.plugin import report_of

        if self.live:
            self.progress.stop()
        self.report = report_of(session.config)


def _outcome_style(outcome: str) -> str:
    return {
        "passed": "green",
        "failed": "red",
        "unexpected pass": "yellow",
        "expected": "yellow",
        "inherited": "magenta",
        "unsupported": "cyan",
        "out of time": "yellow",
    }.get(outcome, "white")


def run(args: argparse.Namespace) -> int:
    """``ckptconf run``: the suites against ``args.backend`` in a pytest session of their own."""
    import pytest
    from ckptconf.conformance.kit.failures import render_brief
    from ckptconf.conformance.kit.launched_ranks import launched_rank
    from ckptconf.conformance.report import OUTCOMES
    from ckptconf.conformance.selection import BackendSpecError, select_backend
    from rich.console import Console
    from rich.table import Table

    rank = launched_rank()
    if rank:  # another rank of a launched world: it serves rank 0's steps, rank 0 reports
        from ckptconf.harness.launched import serve

        serve(args.device)
        return 0
    console = Console(soft_wrap=not sys.stdout.isatty())
    if rank is not None and args.numprocesses:
        console.print("[red]-n does not combine with a launched world (torchrun)[/red]")
        return 2
    try:
        backend = select_backend(args.backend)
    except BackendSpecError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    problem = _expectations_problem(backend, args)
    if problem is not None:  # pytest's own message is not shown under -p no:terminal
        console.print(f"[red]ckptconf expectations:[/red] {problem}", markup=True, highlight=False)
        return 2
    if args.device != "cpu":
        from ckptconf.harness import device_available

        reason = device_available(args.device, 1)
        if reason is not None:
            console.print(
                f"[red]cannot run in {args.device} mode here: {reason}. Run on a machine with "
                "a GPU, or use --device cpu.[/red]"
            )
            return 2
    if args.budget:
        from ckptconf.conformance.kit.budget import parse_duration

        try:
            parse_duration(args.budget)
        except ValueError as exc:
            console.print(f"[red]--budget: {exc}[/red]")
            return 2
    report_path = args.report = os.path.abspath(args.report)
    targets = ["ckptconf.conformance"]
    if args.last_failed:
        targets = _last_failed(report_path)
        if not targets:
            console.print(f"no failed test in {report_path}: nothing to re-run")
            return 0
        console.print(f"re-running the {len(targets)} test(s) that failed in {report_path}")
    pytest_args = ["--pyargs", *targets, *as_pytest_args(args)]
    if args.k:
        pytest_args += ["-k", args.k]
    if args.exitfirst:
        pytest_args += ["-x"]
    if args.numprocesses:
        pytest_args += ["-n", str(args.numprocesses)]
    pytest_args += args.pytest_args
    console.print(
        f"ckptconf: running the conformance suite against [bold]{backend.name}[/bold] "
        f"({backend.description or backend.spec}), device {args.device}"
        + (f", on the {os.environ['WORLD_SIZE']} ranks the launcher started" if rank == 0 else "")
    )
    if rank == 0:
        console.print(
            "no preflight under a launcher: the first test shows a backend that cannot save"
        )
    elif not args.no_preflight:
        problem = _preflight(backend, args.device)
        if problem is not None:
            console.print(
                "[red]preflight failed: the backend cannot save and load one float32[4] tensor "
                "on one rank; every test would fail the same way, so none ran:[/red]"
            )
            console.print(problem, markup=False, highlight=False)
            return 2
    progress = _Progress(console)
    # unless --dir chose a folder or a launcher started the ranks (they may be on several nodes,
    # and check the folder they share); memory is not a place to leave checkpoints behind
    wanted = args.dir is None and rank is None
    with checkpoints_in_memory("ckptconf-run-", wanted=wanted) as made:
        if made is not None:
            pytest_args += ["--ckpt-dir", made]
            console.print(f"checkpoints in {made}, in memory (--dir PATH to choose another folder)")
        with own_session() as session:  # not the options of the project it runs in
            status = pytest.main(pytest_args + session, plugins=[progress])
    report = progress.report
    failed = report is not None and any(t["outcome"] == "failed" for t in report.tests)
    if made is not None and failed:
        console.print(
            "the failed tests' checkpoints were in memory and are removed; --dir PATH keeps them"
        )
    if report is None or not report.tests:
        console.print(f"[red]no conformance test ran (pytest exit status {int(status)})[/red]")
        return 2
    counts = report.counts()
    columns = [o for o in OUTCOMES if any(c[o] for c in counts.values())]
    table = Table(title=f"{backend.name}: suite x outcome (profile {report.profile})")
    table.add_column("suite")
    for column in columns:
        table.add_column(f"[{_outcome_style(column)}]{column}[/]", justify="right")
    for suite in sorted(counts):
        table.add_row(suite, *(str(counts[suite][c]) for c in columns))
    console.print(table)
    for test in report.tests:
        if test["outcome"] != "failed":
            continue
        console.rule(f"[red]{test['outcome']}[/red]: {test['id']} ({test['level']})")
        record = f"{report_path}, test {test['id']!r}"
        console.print(render_brief(test["failure"], record=record), markup=False, highlight=False)
    for test in report.tests:
        if test["outcome"] == "unexpected pass":
            console.print(
                f"[yellow]unexpected pass: {test['id']}: no example failed as listed "
                f"({'; '.join(test.get('unmatched', ()))})[/yellow]",
                highlight=False,
            )
    for entry in report.unmatched_expectations:
        console.print(
            f"[yellow]expectation matched no failure this run (remove it?): {entry}[/yellow]",
            highlight=False,
        )
    core = report.core_failures()
    total = sum(sum(c.values()) for c in counts.values())
    passed = sum(c["passed"] for c in counts.values())
    failed = sum(c["failed"] for c in counts.values())
    late = sum(c["out of time"] for c in counts.values())
    cut = f", {late} out of time (not passed: the budget stopped them)" if late else ""
    console.print(
        f"{passed} passed, {failed} failed{cut} ({total} tests; report: {report_path})",
        highlight=False,
    )
    if int(status) not in (0, 1):
        return int(status)
    return 1 if core else 0


def _expectations_problem(backend, args: argparse.Namespace) -> str | None:
    """Why the backend's expectations file (``--expectations``, else its own) or its parent's
    cannot be used (every bad entry, with file and line), or ``None``."""
    from ckptconf.conformance.builtin import BUILT_IN, expectations_file
    from ckptconf.conformance.expectations import Expectations, ExpectationsError
    from ckptconf.conformance.suites import suite_test_names

    parent = args.inherit or backend.inherits
    if parent is not None and parent not in BUILT_IN:
        return f"--inherit {parent!r} is not a built-in backend ({', '.join(sorted(BUILT_IN))})"
    files = [(args.expectations and os.path.abspath(args.expectations)) or backend.expectations]
    files.append(str(expectations_file(parent) or "") if parent else None)
    try:
        for path in filter(None, files):
            Expectations.load(path, required=True).check_tests(suite_test_names())
    except ExpectationsError as exc:
        return str(exc)
    return None


def _last_failed(report_path: str) -> list[str]:
    """The failed tests of a previous report, as ``--pyargs`` node ids of the shipped suites."""
    try:
        with open(report_path) as file:
            tests = json.load(file).get("tests", [])
    except (OSError, ValueError):
        return []
    return [
        f"ckptconf.conformance.suites.{t['suite']}.{t['id'].replace('.py::', '::', 1)}"
        for t in tests
        if t.get("outcome") == "failed" and t.get("suite")
    ]


def _preflight(backend, device: str) -> str | None:
    """One save and one load of a one-tensor state on one rank: why it failed, or ``None``.

    A backend that cannot do this (an adapter that does not import, a writer that always
    raises) would fail every test the same way, for minutes; this says so in seconds.
    """
    from ckptconf.conformance.kit.cases import Layout, SaveLoadCase, TensorSpec
    from ckptconf.conformance.kit.failures import ConformanceFailure, HangFailure
    from ckptconf.conformance.kit.trial import check_save_then_load

    case = SaveLoadCase((TensorSpec("preflight.w", (4,), "float32", 1),), (Layout(),), (Layout(),))
    try:
        check_save_then_load(backend, case, device=device, timeout=120)
    except ConformanceFailure as exc:
        return str(exc)
    except HangFailure as exc:
        return str(exc.failure)
    except Exception as exc:  # noqa: BLE001 - the backend could not even be sent to the ranks
        return f"{type(exc).__name__}: {exc}"
    return None
