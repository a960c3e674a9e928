"""The ``ckptconf`` command: run the suite against a backend, list backends, render reports."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["main", "UNKNOWN_FORMAT"]

UNKNOWN_FORMAT = 3
"""Exit code of ``inspect`` and ``verify`` for a path in a format they do not read (a single-file
checkpoint, another system's layout): not broken, not whole, unknown."""


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
        from .plugin import INFO

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
        from .plugin import report_of

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


def _run(args: argparse.Namespace) -> int:
    import pytest
    from rich.console import Console
    from rich.table import Table

    from .kit.failures import render_brief
    from .kit.launched import launched_rank
    from .loading import BackendSpecError, load_backend
    from .report import OUTCOMES

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
        backend = load_backend(args.backend)
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
    report_path = os.path.abspath(args.report)
    targets = ["ckptconf.conformance"]
    if args.last_failed:
        targets = _last_failed(report_path)
        if not targets:
            console.print(f"no failed test in {report_path}: nothing to re-run")
            return 0
        console.print(f"re-running the {len(targets)} test(s) that failed in {report_path}")
    pytest_args = ["--pyargs", *targets, "--ckpt-backend", args.backend]
    pytest_args += ["--ckpt-report", report_path, "--ckpt-device", args.device]
    pytest_args += ["-p", "no:cacheprovider", "-p", "no:terminal"]
    if args.profile:
        pytest_args += ["--ckpt-profile", args.profile]
    if args.expectations:
        pytest_args += ["--ckpt-expectations", os.path.abspath(args.expectations)]
    if args.inherit:
        pytest_args += ["--ckpt-inherit", args.inherit]
    if args.k:
        pytest_args += ["-k", args.k]
    if args.exitfirst:
        pytest_args += ["-x"]
    if args.timeout:
        pytest_args += ["--ckpt-timeout", str(args.timeout)]
    if args.budget:
        from .kit.budget import parse_duration

        try:
            parse_duration(args.budget)
        except ValueError as exc:
            console.print(f"[red]--budget: {exc}[/red]")
            return 2
        pytest_args += ["--ckpt-budget", args.budget]
    if args.no_shrink:
        pytest_args += ["--ckpt-no-shrink"]
    if args.dir:
        pytest_args += ["--ckpt-dir", os.path.abspath(args.dir)]
    if args.world_size:
        pytest_args += ["--ckpt-world-size", str(args.world_size)]
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
    # An empty config of our own: the suite must not pick up the options of a project's pytest.ini.
    with tempfile.TemporaryDirectory(prefix="ckptconf-run-") as isolated:
        (Path(isolated) / "pytest.ini").write_text("[pytest]\n")
        config = ["-c", str(Path(isolated) / "pytest.ini"), "--rootdir", isolated]
        status = pytest.main(pytest_args + config, plugins=[progress])
    report = progress.report
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
    from .builtin import BUILT_IN, expectations_file
    from .expectations import Expectations, ExpectationsError
    from .kit.fixtures import suite_tests

    parent = args.inherit or backend.inherits
    if parent is not None and parent not in BUILT_IN:
        return f"--inherit {parent!r} is not a built-in backend ({', '.join(sorted(BUILT_IN))})"
    files = [(args.expectations and os.path.abspath(args.expectations)) or backend.expectations]
    files.append(str(expectations_file(parent) or "") if parent else None)
    try:
        for path in filter(None, files):
            Expectations.load(path, required=True).check_tests(suite_tests())
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
    from .kit.cases import Layout, SaveLoadCase, TensorSpec
    from .kit.failures import ConformanceFailure, HangFailure
    from .kit.trial import check_save_then_load

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


def _backends(args: argparse.Namespace) -> int:
    from .builtin import BUILT_IN

    for name, factory in BUILT_IN.items():
        backend = factory()
        unsupported = ", ".join(sorted(backend.unsupported)) or "-"
        print(f"{name:18} {backend.description}\n{'':18} declared unsupported: {unsupported}")
    from .adapters import ADAPTERS

    print("adapters (third-party packages):")
    for name, adapter in ADAPTERS.items():
        missing = [p for p in adapter.needs if importlib.util.find_spec(p.split(".")[0]) is None]
        state = f"needs pip install 'ckptconf[{adapter.extra}]'" if missing else "installed"
        print(f"{name:22} {adapter.summary}\n{'':22} {state}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import render_markdown

    try:
        with open(args.path) as file:
            text = render_markdown(json.load(file))
    except (OSError, ValueError) as exc:
        print(f"ckptconf report: cannot read {args.path}: {exc}", file=sys.stderr)
        return 2
    return _emit(text, args.output)


def _emit(text: str, output: str | None) -> int:
    """Write ``text`` to the file ``output``, or to stdout."""
    if output:
        with open(output, "w") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0


def _backends_page(args: argparse.Namespace) -> int:
    from .backends_page import render_backends_page

    reports = []
    for path in args.paths:
        try:
            with open(path) as file:
                reports.append(json.load(file))
        except (OSError, ValueError) as exc:
            print(f"ckptconf backends-page: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    notes = {}
    for note in args.note:
        name, sep, text = note.partition(":")
        if not sep or not text.strip():
            print(f"ckptconf backends-page: --note {note!r} is not 'NAME: text'", file=sys.stderr)
            return 2
        notes[name.strip()] = text.strip()
    text = render_backends_page(reports, sources=args.paths, not_run=args.not_run, notes=notes)
    return _emit(text, args.output)


def _inspect(args: argparse.Namespace) -> int:
    from ckptconf.reference.errors import MetadataFormatError, UnknownFormatError
    from ckptconf.reference.inspection import open_checkpoint, render_layout, render_tree

    try:
        view = open_checkpoint(args.path)
        text = render_layout(view, args.layout, key=args.key) if args.layout else None
    except UnknownFormatError as exc:
        print(f"ckptconf inspect: {exc}", file=sys.stderr)
        return UNKNOWN_FORMAT
    except (OSError, MetadataFormatError, ValueError) as exc:
        print(f"ckptconf inspect: {exc}", file=sys.stderr)
        return 2
    if text is not None:
        sys.stdout.write(text)
    elif args.json:
        data = view.to_json()
        if args.key is not None:
            from fnmatch import fnmatchcase

            data["entries"] = [e for e in data["entries"] if fnmatchcase(e["key"], args.key)]
        print(json.dumps(data, indent=1))
    else:
        sys.stdout.write(render_tree(view, key=args.key))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ckptconf.reference.errors import UnknownFormatError
    from ckptconf.reference.inspection import verify

    try:
        problems = verify(args.path)
    except UnknownFormatError as exc:
        print(f"ckptconf verify: cannot tell: {exc}", file=sys.stderr)
        return UNKNOWN_FORMAT
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.path}: NOT whole, {len(problems)} problem(s)")
        return 1
    print(f"{args.path}: whole")
    return 0


def _fuzz(args: argparse.Namespace) -> int:
    from .fuzz import Campaign
    from .kit.budget import parse_duration

    try:
        seconds = parse_duration(args.budget)
    except ValueError as exc:
        print(f"ckptconf fuzz: --budget: {exc}", file=sys.stderr)
        return 2
    campaign = Campaign(args.backend, Path(args.db).resolve(), seconds, select=args.k)
    return campaign.run(lambda line: print(line, flush=True))


def _bench(args: argparse.Namespace) -> int:
    from ckptconf.bench.harness import bench_harness
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log or a pipe (COLUMNS may say 80: xdist sets it)
        console = Console(width=max(200, console.width))  # the tables whole, not squeezed
    if args.target == "plan":
        return _bench_plan(args, console)
    if args.target == "suite":
        return _bench_suite(args, console)
    if args.target == "io":
        return _bench_io(args, console)
    if args.target == "reshard":
        return _bench_reshard(args, console)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    console.print(
        f"measuring warm-world calls ({args.calls} per size) and spawn-per-call ({args.spawn_calls} per size)..."
    )
    rows = bench_harness(sizes, warm_calls=args.calls, spawn_calls=args.spawn_calls)
    table = Table(title="ckptconf harness: seconds per call of a no-op on every rank")
    columns = (
        "ranks",
        "warm world (ms)",
        "new world, spawn (ms)",
        "new world, forkserver (ms)",
        "warm vs spawn",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.size),
            f"{row.warm_seconds * 1e3:.1f}",
            f"{row.spawn_seconds * 1e3:.0f}",
            f"{row.forkserver_seconds * 1e3:.0f}",
            f"{row.ratio:.0f}x",
        )
    console.print(table)
    return 0


def _bench_suite(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.suite import as_table, bench_suite

    console.print(
        f"running the conformance suite against {args.backend} (profile {args.profile}) in this "
        "process, timing its parts..."
    )
    try:
        times = bench_suite(args.backend, profile=args.profile, select=args.k)
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    console.print(as_table(times))
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(times.outcomes.items()))
    console.print(f"outcomes: {outcomes}", highlight=False)
    return 0


def _bench_numbers(text: str | None, default: str, what: str) -> list[int]:
    """The comma-separated positive integers of ``text`` (``default`` if not given)."""
    try:
        values = [int(x) for x in (text or default).split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise SystemExit(f"ckptconf bench: {what} takes positive integers, comma-separated")
    return values


def _bench_io(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.io import IMPLEMENTATIONS, bench_io, default_folder
    from rich.table import Table

    sizes = _bench_numbers(args.mib, "256", "--mib")
    counts = _bench_numbers(args.count, "64", "--count")
    folder = args.dir or default_folder()
    results = []
    for mib in sizes:
        for count in counts:
            console.print(f"saving and loading {mib} MiB in {count} tensors in {folder}...")
            results.append(bench_io(mib << 20, count, folder=folder, rss=not args.no_rss))
    table = Table(
        title="one process, best of 3 interleaved rounds (GiB/s; ratio to DCP (default), to "
        "DCP's best (default or 4 writer threads), to raw; the reference with its defaults, and "
        "without the replica check they include)"
    )
    for column in (
        "MiB",
        "tensors",
        "",
        "raw",
        "DCP",
        "DCP 4 thr.",
        "reference",
        "ref. / DCP",
        "ref. / best DCP",
        "ref. / raw",
        "ref. unverified",
        "ref. / unverified",
    ):
        table.add_column(column, justify="right")
    for result in results:
        for step, seconds in (("save", result.save), ("load", result.load)):
            speed = {name: result.gib_per_s(s) for name, s in seconds.items()}
            best = max(speed["dcp"], speed["dcp-4"])
            table.add_row(
                f"{result.total / 2**20:.0f}",
                str(result.count),
                step,
                f"{speed['raw']:.2f}",
                f"{speed['dcp']:.2f}",
                f"{speed['dcp-4']:.2f}",
                f"{speed['reference']:.2f}",
                f"{speed['reference'] / speed['dcp']:.2f}x",
                f"{speed['reference'] / best:.2f}x",
                f"{speed['reference'] / speed['raw']:.0%}",
                f"{speed['reference-unverified']:.2f}",
                f"{speed['reference'] / speed['reference-unverified']:.0%}",
            )
    console.print(table)
    if args.no_rss:
        return 0
    names = {"raw": "raw", "dcp": "DCP", "reference": "ref."}
    table = Table(
        title="peak RSS growth (MiB) over the state during the step, and growth x state "
        "(growth / state bytes); each step in a process of its own"
    )
    for column in ("MiB", "tensors", ""):
        table.add_column(column, justify="right")
    for name in IMPLEMENTATIONS:
        table.add_column(f"{names[name]} MiB", justify="right")
    for name in IMPLEMENTATIONS:
        table.add_column(f"{names[name]} x state", justify="right")
    for result in results:
        for step in ("save", "load"):
            table.add_row(
                f"{result.total / 2**20:.0f}",
                str(result.count),
                step,
                *(f"{result.rss[step][n] / 2**20:.1f}" for n in IMPLEMENTATIONS),
                *(f"{result.rss_ratio(step, n):.3f}" for n in IMPLEMENTATIONS),
            )
    console.print(table)
    return 0


def _bench_reshard(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.io import default_folder
    from ckptconf.bench.reshard import bench_reshard, case_shape
    from rich.table import Table

    sizes = _bench_numbers(args.mib, "32", "--mib")
    if len(sizes) > 1:
        raise SystemExit("ckptconf bench reshard: --mib takes one size")
    mib = sizes[0]
    folder = args.dir or default_folder()
    shape = case_shape(mib)
    console.print(
        f"saving a float64 {shape[0]}x{shape[1]} tensor under one layout, loading it under "
        f"another, on simulated ranks in {folder}..."
    )
    table = Table(
        title="resharding load of one tensor, best of 3 interleaved rounds: MiB the destination "
        "needs, MiB read from the data files, amplification (read / needed), seconds, "
        "the reference's speed-up (DCP's seconds / its own)"
    )
    table.add_column("case", no_wrap=True)
    columns = (
        "needed",
        "read DCP",
        "read ref.",
        "ampl. DCP",
        "ampl. ref.",
        "DCP (s)",
        "ref. (s)",
        "speed-up",
    )
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in bench_reshard(mib, folder=folder):
        table.add_row(
            row.case,
            f"{row.needed / 2**20:.2f}",
            f"{row.read['dcp'] / 2**20:.2f}",
            f"{row.read['reference'] / 2**20:.2f}",
            f"{row.amplification('dcp'):.2f}x",
            f"{row.amplification('reference'):.2f}x",
            f"{row.seconds['dcp']:.3f}",
            f"{row.seconds['reference']:.3f}",
            f"{row.speedup:.2f}x",
        )
    console.print(table)
    return 0


def _bench_plan(args: argparse.Namespace, console) -> int:
    from ckptconf.bench.plan import bench_plan
    from rich.table import Table

    worlds = tuple(int(x) for x in args.ranks.split(","))
    console.print(
        f"planning {args.tensors} row-sharded tensors + 1 replicated on {worlds} ranks..."
    )
    table = Table(title="create_global_plan, best of 2 (the same local plans for both)")
    columns = ["ranks", "chunks", "DCP (s)", "reference (s)", "reference speed-up"]

    def shown(value: float, text: str) -> str:
        return "not run" if value != value else text  # NaN: DCP not run on this world

    if args.wire:
        columns += ["DCP (un)pickling (s)", "reference (de)coding (s)", "speed-up with the wire"]
    for column in columns:
        table.add_column(column, justify="right")
    for row in bench_plan(
        worlds, tensors=args.tensors, wire=args.wire, dcp_max_ranks=args.dcp_max_ranks
    ):
        cells = [
            str(row.ranks),
            str(row.chunks),
            shown(row.dcp_seconds, f"{row.dcp_seconds:.3f}"),
            f"{row.reference_seconds:.3f}",
            shown(row.dcp_seconds, f"{row.speedup:.2f}x"),
        ]
        if args.wire:
            cells += [
                shown(row.dcp_wire_seconds, f"{row.dcp_wire_seconds:.3f}"),
                f"{row.reference_wire_seconds:.3f}",
                shown(row.dcp_seconds, f"{row.wire_speedup:.2f}x"),
            ]
        table.add_row(*cells)
    console.print(table)
    if args.load:
        _bench_load_plan(worlds, args.tensors, console)
    return 0


def _bench_load_plan(worlds: tuple[int, ...], tensors: int, console) -> None:
    from ckptconf.bench.plan import bench_load_plan
    from rich.table import Table

    console.print(f"planning the load of the same state on the same layout on {worlds} ranks...")
    table = Table(
        title="load planning, best of 2 (same metadata and destinations): the middle rank's "
        "local plan, the coordinator's global plan of R such plans"
    )
    columns = ("ranks", "chunks", "read items", "DCP local (s)", "reference local (s)")
    for column in (*columns, "local speed-up", "DCP global (s)", "reference global (s)"):
        table.add_column(column, justify="right")
    for row in bench_load_plan(worlds, tensors=tensors):
        table.add_row(
            str(row.ranks),
            str(row.chunks),
            str(row.read_items),
            f"{row.dcp_local:.4f}",
            f"{row.reference_local:.4f}",
            f"{row.speedup:.2f}x",
            f"{row.dcp_global:.4f}",
            f"{row.reference_global:.4f}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ckptconf``."""
    parser = argparse.ArgumentParser(prog="ckptconf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the conformance suite against a backend")
    run.add_argument(
        "--backend", default="reference", help="built-in name or module:attr (default: reference)"
    )
    run.add_argument(
        "--profile", choices=["ci", "dev", "thorough"], default=None, help="hypothesis profile"
    )
    run.add_argument(
        "--report",
        default="ckptconf-report.json",
        help="JSON report path (default: ./ckptconf-report.json)",
    )
    run.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    run.add_argument(
        "--device",
        choices=["cpu", "cuda", "cuda-shared"],
        default="cpu",
        help="where the ranks' tensors live: cpu (gloo, default), cuda (NCCL, a GPU per rank), "
        "cuda-shared (ranks share GPU 0, gloo control plane)",
    )
    run.add_argument(
        "--expectations",
        default=None,
        metavar="FILE",
        help="expectations file (default: the backend's own)",
    )
    run.add_argument(
        "--inherit",
        default=None,
        metavar="NAME",
        help="a built-in backend the backend is built on (e.g. torch-dcp): its known failures "
        "are reported as inherited and do not count against the exit code",
    )
    run.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    run.add_argument(
        "--lf",
        "--last-failed",
        dest="last_failed",
        action="store_true",
        help="re-run only the tests that failed in the previous --report",
    )
    run.add_argument(
        "--no-shrink",
        action="store_true",
        help="report each failing example as found, unshrunk (faster triage)",
    )
    run.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the one-save-one-load check that stops a run at once when nothing can pass",
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds every step may take on its ranks (default 120; a hang fails its test "
        "at once, with every rank's stack)",
    )
    run.add_argument(
        "--budget",
        default=None,
        metavar="DURATION",
        help="time for the whole run (90s, 10m, 1h30m), shared by its tests: a test whose share "
        "runs out stops drawing examples and is reported 'out of time' with how many it ran "
        "(never a pass; the exit status stays 0 if nothing failed)",
    )
    run.add_argument(
        "-n", "--numprocesses", default=None, help="run tests in N processes (pytest-xdist)"
    )
    run.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="also draw cases on N ranks where a suite draws world sizes (default under "
        "torchrun: the launched world's size)",
    )
    run.add_argument(
        "--dir",
        default=None,
        metavar="PATH",
        help="folder the checkpoints go under (default: a temporary folder); under torchrun "
        "across nodes, on storage every node sees",
    )
    run.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: arguments passed to pytest"
    )
    run.set_defaults(handler=_run)
    backends = sub.add_parser("backends", help="list built-in backends")
    backends.set_defaults(handler=_backends)
    report = sub.add_parser("report", help="render a JSON report as markdown")
    report.add_argument("path", help="JSON report written by ckptconf run or --ckpt-report")
    report.add_argument(
        "-o", "--output", default=None, help="write the markdown here instead of stdout"
    )
    report.set_defaults(handler=_report)
    page = sub.add_parser(
        "backends-page", help="render several JSON reports as one page (docs/backends.md)"
    )
    page.add_argument(
        "paths",
        nargs="+",
        help="JSON reports in page order; several of one backend (other profiles or seeds) "
        "are shown together",
    )
    page.add_argument("-o", "--output", default=None, help="write here instead of stdout")
    page.add_argument(
        "--not-run",
        action="append",
        default=[],
        metavar="'NAME: WHY'",
        help="a backend tried and not run, with why (repeatable)",
    )
    page.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="'NAME: TEXT'",
        help="what changed for backend NAME since the last page (repeatable)",
    )
    page.set_defaults(handler=_backends_page)
    inspect = sub.add_parser(
        "inspect",
        help="what a checkpoint folder holds (ckptconf, torch DCP or DCP safetensors format; "
        f"exit {UNKNOWN_FORMAT} for a format it does not read)",
    )
    inspect.add_argument("path", help="checkpoint folder")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of the tree")
    inspect.add_argument("--key", default=None, metavar="PATTERN", help="only keys matching")
    inspect.add_argument(
        "--layout",
        default=None,
        metavar="LAYOUT",
        help='e.g. "mesh=(2,4) placements=[Shard(0),Replicate()]": what each rank of that '
        "DTensor layout would read",
    )
    inspect.set_defaults(handler=_inspect)
    verify = sub.add_parser(
        "verify",
        help="check a checkpoint folder is whole: exit 0 whole, 1 not whole (or nothing there), "
        f"{UNKNOWN_FORMAT} a format it does not read",
    )
    verify.add_argument("path", help="checkpoint folder")
    verify.set_defaults(handler=_verify)
    fuzz = sub.add_parser(
        "fuzz",
        help="a fuzzing campaign: rounds of growing example counts and new seeds for a budget, "
        "hypothesis' database kept in a folder",
    )
    fuzz.add_argument("--backend", default="reference", help="built-in name or module:attr")
    fuzz.add_argument("--budget", required=True, metavar="DURATION", help="e.g. 30m, 8h")
    fuzz.add_argument(
        "--db",
        required=True,
        metavar="FOLDER",
        help="where the example database (FOLDER/examples) and each round's report go; a "
        "later campaign on the same folder replays what this one found first",
    )
    fuzz.add_argument("-k", default=None, help="only tests matching this -k expression")
    fuzz.set_defaults(handler=_fuzz)
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument(
        "target",
        choices=["harness", "plan", "io", "reshard", "suite"],
        help="what to measure (suite: where a conformance run's time goes)",
    )
    bench.add_argument(
        "--backend", default="reference", help="suite: the backend to run the suite against"
    )
    bench.add_argument(
        "--profile", default="ci", choices=["ci", "dev", "thorough"], help="suite: the profile"
    )
    bench.add_argument("-k", default=None, help="suite: only tests matching this -k expression")
    bench.add_argument(
        "--mib",
        default=None,
        help="io: MiB saved and loaded, comma-separated for a sweep (default 256); "
        "reshard: MiB of the tensor (default 32)",
    )
    bench.add_argument(
        "--count",
        default=None,
        help="io: tensors in the state, comma-separated for a sweep (default 64)",
    )
    bench.add_argument(
        "--dir", default=None, help="io, reshard: folder to write in (default /dev/shm)"
    )
    bench.add_argument(
        "--no-rss",
        action="store_true",
        help="io: skip the peak RSS measurement (a process per implementation and step)",
    )
    bench.add_argument(
        "--ranks", default="256,1024", help="plan: simulated world sizes, comma-separated"
    )
    bench.add_argument("--tensors", type=int, default=100, help="plan: row-sharded tensors")
    bench.add_argument(
        "--dcp-max-ranks",
        type=int,
        default=4096,
        help="plan: largest world DCP's planner is timed on (it takes minutes at 10,000 ranks)",
    )
    bench.add_argument(
        "--load",
        action="store_true",
        help="plan: also time load planning (one rank's local plan, the global plan) of that state",
    )
    bench.add_argument(
        "--wire",
        action="store_true",
        help="plan: also time the coordinator's unpickling of the local plans and pickling of "
        "the global plans (what gather_object and scatter_object_list cost it)",
    )
    bench.add_argument("--sizes", default="2,4", help="world sizes, comma-separated")
    bench.add_argument("--calls", type=int, default=50, help="warm calls per size")
    bench.add_argument("--spawn-calls", type=int, default=3, help="spawn-per-call calls per size")
    bench.set_defaults(handler=_bench)
    args = parser.parse_args(argv)
    if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
