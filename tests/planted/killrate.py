"""Kill rate: run the conformance suite against planted-bug backends and count the bugs it catches.

A :class:`PlantedBug` is a backend (``module:attr``, as ``--ckpt-backend`` takes) that
reintroduces one realistic mistake. :func:`run_killrate` runs the suite against each
in this process (the warm rank pools are reused from one bug to the next), with
hypothesis shrinking off: a bug is *killed* when at least one test failed (an expected
failure or an unsupported test does not count). :class:`KillTable` holds the verdicts
and renders them as a rich table, JSON or markdown. From a shell::

    python -m tests.planted.killrate tests.planted:PLANTED --profile ci --fast

(from the repository root). It measures the suite, so it lives with the planted bugs in
the project's tests, not in the shipped package.

The JSON and markdown tables are rewritten after every bug, and ``--resume`` picks a
stopped run up where it ended.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ckptconf.conformance.kit.failures import render_failure

__all__ = ["PlantedBug", "BugVerdict", "KillTable", "run_killrate", "main"]

_SHOWN_KILLERS = 3
_REASON_CHARS = 600


@dataclass(frozen=True)
class PlantedBug:
    """A backend with one planted bug, the suites meant to catch it, and whether it is in the fast subset.

    ``tests`` optionally narrows a ``--fast`` run to the tests expected to kill it (a
    pytest ``-k`` expression); a full run always runs every test.
    """

    name: str
    description: str
    spec: str
    target_suites: tuple[str, ...]
    fast: bool = False
    tests: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_suites, str):
            object.__setattr__(self, "target_suites", (self.target_suites,))
        object.__setattr__(self, "target_suites", tuple(self.target_suites))
        if ":" not in self.spec:
            raise ValueError(f"planted bug {self.name!r}: spec {self.spec!r} is not module:attr")


@dataclass
class BugVerdict:
    """What the suite did to one planted bug."""

    bug: PlantedBug
    killed: bool
    killed_by: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    """The failure message of each killing test (shortened), to check a bug dies of its own effect."""
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    ran: list[str] = field(default_factory=list, repr=False, compare=False)
    """Every test that ran (not written to JSON)."""

    def to_json(self) -> dict[str, Any]:
        """The verdict as JSON-ready data."""
        out = asdict(self.bug)
        out["target_suites"] = list(self.bug.target_suites)
        out.update(
            killed=self.killed,
            killed_by=self.killed_by,
            reasons=self.reasons,
            outcomes=self.outcomes,
            error=self.error,
            seconds=round(self.seconds, 1),
        )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], bug: PlantedBug) -> BugVerdict:
        """A verdict written by :meth:`to_json`, for ``bug``."""
        return cls(
            bug,
            bool(data["killed"]),
            list(data.get("killed_by") or []),
            dict(data.get("reasons") or {}),
            dict(data.get("outcomes") or {}),
            data.get("error"),
            float(data.get("seconds") or 0.0),
        )


@dataclass
class KillTable:
    """Verdicts for a list of planted bugs, and the kill rate."""

    profile: str
    fast: bool
    verdicts: list[BugVerdict] = field(default_factory=list)
    planned: int | None = None
    """How many bugs the run selected; more than ``len(verdicts)`` while it is under way."""
    first_kill: bool = False
    control_spec: str | None = None
    """The scaffold without a bug that every killing test was re-run against (None: no control)."""
    control_failed: dict[str, bool] = field(default_factory=dict)
    """Each killing test (short id) re-run on the control, and whether it failed there too."""

    @property
    def complete(self) -> bool:
        """Whether every selected bug has a verdict."""
        return self.planned is None or len(self.verdicts) >= self.planned

    @property
    def killed(self) -> int:
        """How many bugs at least one test caught."""
        return sum(v.killed for v in self.verdicts)

    @property
    def rate(self) -> float:
        """Killed bugs over all bugs (0 when there are none)."""
        return self.killed / len(self.verdicts) if self.verdicts else 0.0

    def survivors(self) -> list[BugVerdict]:
        """The bugs no test caught (including those whose run errored)."""
        return [v for v in self.verdicts if not v.killed]

    def to_json(self) -> dict[str, Any]:
        """The table as JSON-ready data."""
        return {
            "profile": self.profile,
            "fast": self.fast,
            "first_kill": self.first_kill,
            "complete": self.complete,
            "planned": self.planned if self.planned is not None else len(self.verdicts),
            "control": self.control_spec,
            "control_failed": self.control_failed,
            "killed": self.killed,
            "total": len(self.verdicts),
            "rate": round(self.rate, 4),
            "bugs": [v.to_json() for v in self.verdicts],
        }

    def to_markdown(self) -> str:
        """A markdown table: bug, target suites, description, killed by or SURVIVED."""
        lines = [
            f"# Planted-bug kill rate: {self.killed}/{len(self.verdicts)} ({self.rate:.1%})",
            "",
            f"Profile `{self.profile}`{', fast subset (first kill only)' if self.fast else ''}"
            f"{', each bug stopped at its first kill' if self.first_kill and not self.fast else ''}.",
            "",
            _control_text(self.control_spec, self.control_failed),
            "",
            *(
                [
                    f"**Partial**: {len(self.verdicts)} of {self.planned} bugs have a verdict "
                    "(the run is under way or was stopped).",
                    "",
                ]
                if not self.complete
                else []
            ),
            "| bug | suites | description | killed by |",
            "|---|---|---|---|",
        ]
        for v in self.verdicts:
            lines.append(
                f"| `{v.bug.name}` | {', '.join(v.bug.target_suites)} | {_md(v.bug.description)} "
                f"| {_md(_verdict_text(v))} |"
            )
        return "\n".join(lines) + "\n"

    def write(self, json_path: str | Path | None, markdown_path: str | Path | None) -> None:
        """Write the table as JSON and/or markdown, each file replaced atomically."""
        for path, text in (
            (json_path, lambda: json.dumps(self.to_json(), indent=2) + "\n"),
            (markdown_path, self.to_markdown),
        ):
            if path is not None:
                target = Path(path)
                partial = target.with_name(target.name + ".partial")
                partial.write_text(text())
                os.replace(partial, target)

    def render(self, console=None) -> None:
        """Print the table and the kill rate with rich."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(
            title=f"planted bugs (profile {self.profile}{', fast' if self.fast else ''})",
            show_lines=False,
        )
        table.add_column("bug", style="bold", no_wrap=True)
        table.add_column("description")
        table.add_column("killed by", overflow="fold")
        for v in self.verdicts:
            style = "green" if v.killed else "red"
            table.add_row(
                v.bug.name, v.bug.description, f"[{style}]{_escape(_verdict_text(v))}[/{style}]"
            )
        console.print(table)
        colour = "green" if self.survivors() == [] else "yellow"
        console.print(
            f"[{colour}]kill rate: {self.killed}/{len(self.verdicts)} = {self.rate:.1%}[/{colour}]"
        )


def _control_text(spec: str | None, failed: dict[str, bool]) -> str:
    if spec is None:
        return "No control run: a test that fails without any bug would count as a kill."
    bad = sorted(t for t, f in failed.items() if f)
    text = (
        f"Control: each of the {len(failed)} killing tests was re-run against `{spec}`, the "
        "scaffold without a bug"
    )
    if not bad:
        return text + "; none failed there."
    return (
        text + f"; {len(bad)} failed there too, so they count as no kill and were left out of "
        f"the bugs' runs: {', '.join(bad)}."
    )


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def short_test_id(test_id: str) -> str:
    """``test_kinds.py::TestKinds::test_scalar_tensors[x]`` -> ``TestKinds::test_scalar_tensors[x]``."""
    parts = test_id.split("::")
    return "::".join(parts[1:]) if len(parts) > 1 else test_id


def _verdict_text(v: BugVerdict) -> str:
    if v.killed:
        shown = [short_test_id(t) for t in v.killed_by[:_SHOWN_KILLERS]]
        more = len(v.killed_by) - len(shown)
        return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")
    if v.error:
        return f"SURVIVED (no verdict: {v.error})"
    return "SURVIVED"


class _Collect:
    """Keeps the conformance report of a run, and only the tests it is told to: of ``suites``
    (all when None), not in ``exclude``, and in ``include`` when given (short test ids)."""

    def __init__(
        self,
        suites: Sequence[str] | None,
        exclude: frozenset[str] = frozenset(),
        include: frozenset[str] | None = None,
    ):
        self.suites = set(suites) if suites is not None else None
        self.exclude = exclude
        self.include = include
        self.report = None
        self.selected = 0

    def pytest_collection_modifyitems(self, config, items):
        kept, dropped = [], []
        for item in items:
            marker = item.get_closest_marker("ckpt_suite")
            wanted = self.suites is None or bool(marker and marker.args[0] in self.suites)
            short = short_test_id(item.nodeid)
            if short in self.exclude or (self.include is not None and short not in self.include):
                wanted = False
            (kept if wanted else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
        self.selected = len(kept)

    def pytest_sessionfinish(self, session):
        from ckptconf.conformance.plugin import report_of

        self.report = report_of(session.config)


_tuned: list[str] = []


def _no_shrink(profile: str) -> None:
    """Every suite test without shrinking and without a database, once per process (before
    the suites are imported by the first run).

    Shrinking only makes a failure readable; here a failure is all that counts. Without
    a database, one bug's failing examples are not replayed against the next bug.
    """
    if _tuned:
        if _tuned[0] != profile:
            raise RuntimeError(
                f"kill-rate runs of profiles {_tuned[0]} and {profile} in one process"
            )
        return
    from ckptconf.conformance.kit.profiles import tune
    from hypothesis import Phase

    tune(phases=(Phase.explicit, Phase.generate), database=None)
    _tuned.append(profile)


def _run_one(
    bug: PlantedBug,
    *,
    profile: str,
    fast: bool,
    stop_early: bool,
    k: str | None,
    isolated: Path,
    exclude: frozenset[str] = frozenset(),
    include: frozenset[str] | None = None,
) -> BugVerdict:
    args = ["--pyargs", "ckptconf.conformance", "--ckpt-backend", bug.spec]
    args += ["--ckpt-profile", profile, "-c", str(isolated / "pytest.ini")]
    args += ["--rootdir", str(isolated), "-p", "no:cacheprovider", "-p", "no:terminal"]
    expression = " and ".join(f"({e})" for e in (k, bug.tests if fast else None) if e)
    if expression:
        args += ["-k", expression]
    if stop_early:
        args.append("-x")
    collect = _Collect(bug.target_suites if fast else None, exclude, include)
    _no_shrink(profile)
    start = time.monotonic()
    status = pytest.main(args, plugins=[collect])
    seconds = time.monotonic() - start
    report = collect.report
    if report is None or not report.tests:
        why = (
            f"no test of suites {', '.join(bug.target_suites)} ran"
            if fast and not collect.selected
            else f"no conformance test ran (pytest exit status {int(status)})"
        )
        return BugVerdict(bug, False, error=why, seconds=seconds)
    failed = [t for t in report.tests if t["outcome"] == "failed"]
    outcomes: dict[str, int] = {}
    for test in report.tests:
        outcomes[test["outcome"]] = outcomes.get(test["outcome"], 0) + 1
    reasons = {t["id"]: render_failure(t["failure"])[:_REASON_CHARS] for t in failed}
    return BugVerdict(
        bug,
        bool(failed),
        [t["id"] for t in failed],
        reasons,
        outcomes,
        seconds=seconds,
        ran=[t["id"] for t in report.tests],
    )


def run_killrate(
    bugs: Sequence[PlantedBug],
    *,
    profile: str,
    fast: bool = False,
    first_kill: bool = False,
    k: str | None = None,
    known: dict[str, BugVerdict] | None = None,
    control: PlantedBug | None = None,
    on_verdict: Callable[[int, BugVerdict, KillTable], None] | None = None,
) -> KillTable:
    """Run the conformance suite against every bug in this process; the verdicts and the kill rate.

    ``fast``: only bugs with ``fast=True``, only tests of their target suites (and their
    ``tests`` expression), each run stopped at its first failure. ``first_kill``: every
    test, but each bug's run stops at its first failure (a bug that hangs costs one
    timeout, not one per test). ``k``: a pytest ``-k`` expression applied to every run.
    ``known``: verdicts by bug name, kept instead of running those bugs (to resume a
    stopped run). ``control``: the scaffold without a bug; every killing test is re-run
    against it, and a test that fails there too is no kill: it is dropped from the verdict,
    left out of later runs, and a bug left without a killer is run again without it.
    ``on_verdict(index, verdict, table)`` is called after each bug.
    """
    selected = [b for b in bugs if b.fast] if fast else list(bugs)
    table = KillTable(
        profile=profile,
        fast=fast,
        planned=len(selected),
        first_kill=first_kill,
        control_spec=control.spec if control is not None else None,
    )
    known = known or {}
    # An empty config of our own: the suite must not pick up the options of a project's pytest.ini.
    folder = tempfile.TemporaryDirectory(prefix="ckptconf-killrate-")
    isolated = Path(folder.name)
    (isolated / "pytest.ini").write_text("[pytest]\n")
    options = dict(
        profile=profile, fast=fast, stop_early=fast or first_kill, k=k, isolated=isolated
    )
    try:
        for index, bug in enumerate(selected):
            verdict = known.get(bug.name)
            if verdict is None:
                verdict = _run_one(bug, exclude=_excluded(table), **options)
            while control is not None and verdict.killed:
                _check_on_control(control, verdict, table, options)
                false_kills = {
                    t for t in verdict.killed_by if table.control_failed[short_test_id(t)]
                }
                if not false_kills:
                    break
                kept = [t for t in verdict.killed_by if t not in false_kills]
                if kept:
                    reasons = {t: r for t, r in verdict.reasons.items() if t in kept}
                    verdict = dataclasses.replace(verdict, killed_by=kept, reasons=reasons)
                else:
                    verdict = _run_one(bug, exclude=_excluded(table), **options)
            table.verdicts.append(verdict)
            if on_verdict is not None:
                on_verdict(index, verdict, table)
    finally:
        folder.cleanup()
    return table


def _excluded(table: KillTable) -> frozenset[str]:
    """The tests that failed on the control: no bug's run includes them."""
    return frozenset(t for t, failed in table.control_failed.items() if failed)


def _check_on_control(
    control: PlantedBug, verdict: BugVerdict, table: KillTable, options: dict[str, Any]
) -> None:
    """Re-run the verdict's killing tests not yet checked against the control; record each result."""
    unchecked = frozenset(short_test_id(t) for t in verdict.killed_by) - set(table.control_failed)
    if not unchecked:
        return
    options = {**options, "fast": False, "stop_early": False}
    result = _run_one(control, include=unchecked, **options)
    ran = {short_test_id(t) for t in result.ran}
    failed = {short_test_id(t) for t in result.killed_by}
    for test in unchecked:
        # a killing test the control did not run at all cannot vouch for the kill
        table.control_failed[test] = test in failed or test not in ran


def load_control(spec: str) -> PlantedBug | None:
    """The ``CONTROL`` PlantedBug of the module named by ``spec`` (module:attr), if it has one."""
    module = importlib.import_module(spec.partition(":")[0])
    control = getattr(module, "CONTROL", None)
    if control is not None and not isinstance(control, PlantedBug):
        raise TypeError(f"{spec}: CONTROL is a {type(control).__name__}, expected PlantedBug")
    return control


def load_bugs(spec: str) -> list[PlantedBug]:
    """The planted bugs named by ``module:attr`` (a list of PlantedBug, or a callable returning one)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not module:attr")
    if os.getcwd() not in sys.path:  # as `python -m` does: planted bugs often live in tests/
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj):
        obj = obj()
    bugs = list(obj)
    wrong = [type(b).__name__ for b in bugs if not isinstance(b, PlantedBug)]
    if wrong:
        raise TypeError(f"{spec} holds {wrong[0]} values, expected PlantedBug")
    return bugs


def resumable_verdicts(
    path: str | Path, bugs: Sequence[PlantedBug], *, profile: str, fast: bool, first_kill: bool
) -> dict[str, BugVerdict]:
    """Verdicts of a JSON table written by an earlier run with the same settings, by bug name.

    Only bugs that are still in ``bugs`` with the same spec are kept, and only verdicts
    that ran (an error such as "no test ran" is run again).
    """
    target = Path(path)
    if not target.exists():
        return {}
    data = json.loads(target.read_text())
    settings_then = (data.get("profile"), data.get("fast"), data.get("first_kill", False))
    if settings_then != (profile, fast, first_kill):
        raise ValueError(
            f"{target} was written with profile={settings_then[0]}, fast={settings_then[1]}, "
            f"first_kill={settings_then[2]}; expected profile={profile}, fast={fast}, "
            f"first_kill={first_kill}: resume with the same options or another --json path"
        )
    by_name = {b.name: b for b in bugs}
    kept = {}
    for entry in data.get("bugs", []):
        bug = by_name.get(entry.get("name"))
        if bug is not None and entry.get("spec") == bug.spec and entry.get("error") is None:
            kept[bug.name] = BugVerdict.from_json(entry, bug)
    return kept


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the suite against planted bugs, print the table, exit 1 below ``--min-rate``."""
    from ckptconf.conformance.kit.profiles import PROFILES
    from rich.console import Console

    parser = argparse.ArgumentParser(
        prog="python -m tests.planted.killrate",
        description="Run the conformance suite against planted-bug backends and report the kill rate.",
    )
    parser.add_argument(
        "spec",
        nargs="?",
        default="tests.planted:PLANTED",
        metavar="SPEC",
        help="module:attr naming a list of PlantedBug (default: tests.planted:PLANTED)",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="only bugs marked fast, only their target suites, each stopped at its first kill",
    )
    parser.add_argument(
        "--first-kill",
        action="store_true",
        help="run every test, but stop each bug at its first failure (much faster for bugs that hang)",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="do not re-run the killing tests against the module's CONTROL (the scaffold without a bug)",
    )
    parser.add_argument("-k", default=None, help="only tests matching this pytest -k expression")
    parser.add_argument(
        "--only",
        default=None,
        help="only bugs whose name matches one of these comma-separated globs",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the table as JSON (rewritten after every bug, so a stopped run keeps its verdicts)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the verdicts already in the --json file (same options) and run only the other bugs",
    )
    parser.add_argument(
        "--markdown", default=None, metavar="PATH", help="write the table as markdown"
    )
    parser.add_argument(
        "--min-rate",
        type=float,
        default=0.95,
        help="exit 1 when the kill rate is below this (default 0.95)",
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        bugs = load_bugs(args.spec)
        control = None if args.no_control else load_control(args.spec)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        console.print(f"[red]cannot load planted bugs from {args.spec}: {exc}[/red]")
        return 2
    if args.only:
        patterns = [p.strip() for p in args.only.split(",") if p.strip()]
        bugs = [b for b in bugs if any(fnmatch.fnmatch(b.name, p) for p in patterns)]
    total = sum(b.fast for b in bugs) if args.fast else len(bugs)
    if not total:
        console.print("[red]no planted bug selected[/red]")
        return 2
    if args.resume and not args.json:
        console.print("[red]--resume needs --json PATH (the table to resume)[/red]")
        return 2
    known: dict[str, BugVerdict] = {}
    if args.resume:
        try:
            known = resumable_verdicts(
                args.json, bugs, profile=args.profile, fast=args.fast, first_kill=args.first_kill
            )
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            console.print(f"[red]cannot resume from {args.json}: {_escape(str(exc))}[/red]")
            return 2

    def progress(index: int, verdict: BugVerdict, table: KillTable) -> None:
        mark = "[green]killed[/green]" if verdict.killed else "[red]SURVIVED[/red]"
        kept = " (kept from the earlier run)" if known.get(verdict.bug.name) is verdict else ""
        console.print(
            f"[{index + 1}/{total}] {verdict.bug.name}: {mark} ({verdict.seconds:.0f} s){kept}"
            + (f" {_escape(verdict.error)}" if verdict.error else "")
        )
        table.write(args.json, args.markdown)  # after every bug, the last included

    table = run_killrate(
        bugs,
        profile=args.profile,
        fast=args.fast,
        first_kill=args.first_kill,
        k=args.k,
        known=known,
        control=control,
        on_verdict=progress,
    )
    table.render(console)
    if table.control_spec is not None:
        colour = "yellow" if any(table.control_failed.values()) else "green"
        text = _control_text(table.control_spec, table.control_failed)
        console.print(f"[{colour}]{_escape(text)}[/{colour}]")
    return 0 if table.rate >= args.min_rate else 1


if __name__ == "__main__":
    # run the imported module's main: PlantedBug must be the class the bug lists import
    from tests.planted.killrate import main as _main

    sys.exit(_main())
