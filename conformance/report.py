"""The run report: per-test outcomes with their structured failures, a suite x outcome matrix,
JSON on disk, markdown.

Nothing here parses a failure's text: a failed conformance test carries its
:class:`~ckptconf.conformance.kit.failures.ConformanceFailure` fields, which the JSON
report stores as they are and :func:`~ckptconf.conformance.kit.failures.render_failure`
turns into text.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .expectations import WHEN_DRAWN
from .kit.failures import render_failure
from .kit.trial import UNSUPPORTED_PREFIX

__all__ = ["OUTCOMES", "Report", "render_markdown"]

OUTCOMES = (
    "passed",
    "failed",
    "unsupported",
    "expected failure",
    "inherited failure",
    "unexpected pass",
    "skipped",
)
"""``inherited failure``: a test the built-in backend this one inherits from (``inherits``)
is known to fail, failing here too."""


@dataclass
class Report:
    """What ran, against what, with which outcome."""

    profile: str
    seed: int | None
    backend: dict[str, Any] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)
    unmatched_expectations: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    """When the session started (seconds since the epoch)."""
    command: str = ""
    """The command line that ran the session."""
    runner: str = ""
    """How the ranks ran: warm pools, or a launched world (torchrun) and its size."""

    def record(self, info: dict[str, Any], report) -> None:
        """Add the outcome of a test's setup or call phase (setup only when it did not pass).

        ``info`` is what the suites' plugin attached to the test report: id, suite, level,
        backend, and for a phase that raised its failure fields (or error text) and
        hypothesis' falsifying example.
        """
        if report.when == "setup" and report.passed:
            return
        if info.get("backend") and not self.backend:
            self.backend = info["backend"]
        reason = _skip_reason(report)
        listed = getattr(report, "wasxfail", "")
        inherited = listed.startswith("inherited from ")
        if report.skipped and hasattr(report, "wasxfail"):
            outcome = "inherited failure" if inherited else "expected failure"
        elif report.skipped:
            outcome = "unsupported" if reason.startswith(UNSUPPORTED_PREFIX) else "skipped"
        elif report.passed and hasattr(report, "wasxfail"):
            # an inherited defect this backend does not have is no stale expectation of its own,
            # nor is a pass of a test that fails only when it draws a failing case
            outcome = "passed" if inherited or WHEN_DRAWN in listed else "unexpected pass"
        elif report.failed:
            outcome = "failed"
        else:
            outcome = "passed"
        entry: dict[str, Any] = {
            "id": info["id"],
            "suite": info.get("suite"),
            "level": info.get("level"),
            "outcome": outcome,
            "duration": round(report.duration, 3),
        }
        if outcome in ("unsupported", "skipped"):
            entry["message"] = reason
        elif outcome in ("expected failure", "inherited failure", "unexpected pass"):
            entry["message"] = report.wasxfail
        if outcome in ("failed", "expected failure", "inherited failure"):
            failure = info.get("failure")
            if failure is None:  # not a ConformanceFailure: an error of the test or of pytest
                failure = {
                    "backend": (info.get("backend") or {}).get("name"),
                    "suite": info.get("suite"),
                    "test": info["id"],
                    "what": info.get("error") or _last_line(report.longreprtext),
                    "details": report.longreprtext[-4000:],
                    "minimal_case": info.get("minimal_case"),
                }
            entry["failure"] = failure
            entry["message"] = entry.get("message") or failure.get("what")
        if outcome == "failed":
            known = known_dcp_findings(info["id"])
            if known:
                entry["known_in"] = known
        self.tests = [t for t in self.tests if t["id"] != info["id"]] + [entry]

    def counts(self) -> dict[str, Counter]:
        """Outcome counts per suite."""
        out: dict[str, Counter] = {}
        for test in self.tests:
            out.setdefault(test["suite"] or "?", Counter())[test["outcome"]] += 1
        return out

    def matrix_lines(self) -> list[str]:
        """The suite x outcome matrix as aligned text lines."""
        counts = self.counts()
        columns = [o for o in OUTCOMES if any(c[o] for c in counts.values())] or ["passed"]
        width = max([len("suite")] + [len(s) for s in counts])
        lines = ["  ".join(["suite".ljust(width)] + [c.rjust(max(6, len(c))) for c in columns])]
        total: Counter = Counter()
        for suite in sorted(counts):
            total.update(counts[suite])
            row = [suite.ljust(width)] + [
                str(counts[suite][c]).rjust(max(6, len(c))) for c in columns
            ]
            lines.append("  ".join(row))
        lines.append(
            "  ".join(
                ["total".ljust(width)] + [str(total[c]).rjust(max(6, len(c))) for c in columns]
            )
        )
        return lines

    def core_failures(self) -> int:
        """Failed tests of level core (inherited failures are not the backend's own)."""
        return sum(1 for t in self.tests if t["outcome"] == "failed" and t["level"] != "strict")

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        import hypothesis
        import torch
        from ckptconf import __version__

        return {
            "backend": self.backend,
            "versions": {
                "ckptconf": __version__,
                "torch": torch.__version__,
                "hypothesis": hypothesis.__version__,
                "python": platform.python_version(),
            },
            "profile": self.profile,
            "seed": self.seed,
            "command": self.command,
            "runner": self.runner,
            "date": time.strftime("%Y-%m-%d", time.gmtime(self.started)),
            "wall_seconds": round(time.time() - self.started, 1),
            "summary": {suite: dict(c) for suite, c in self.counts().items()},
            "tests": sorted(self.tests, key=lambda t: t["id"]),
            "unmatched_expectations": self.unmatched_expectations,
        }

    def write(self, path: str | Path) -> None:
        """Write the JSON report (atomically: a reader never sees half of it)."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=2, default=repr) + "\n")
        temporary.replace(path)


def known_dcp_findings(test_id: str) -> dict[str, str]:
    """The built-in DCP backends whose expectations list ``test_id``, with their reasons: a
    backend built on DCP's planners or driver may have inherited the failure (``inherits``)."""
    from .builtin import BUILT_IN, expectations_file
    from .expectations import Expectations

    found = {}
    for name in BUILT_IN:
        path = expectations_file(name)
        entry = Expectations.load(path).match(test_id) if path else None
        if entry is not None:
            found[name] = entry.reason
    return found


def _skip_reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]


def render_markdown(data: dict[str, Any]) -> str:
    """A markdown page from a JSON report."""
    backend = data.get("backend", {})
    versions = data.get("versions", {})
    out = [
        f"# ckptconf conformance report: {backend.get('name', '?')}",
        "",
        f"- backend: `{backend.get('spec')}` - {backend.get('description', '')}",
        f"- declared unsupported: {', '.join(backend.get('unsupported', [])) or 'nothing'}",
        f"- inherits from: {backend.get('inherits') or 'nothing'}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- profile: {data.get('profile')}, seed: {data.get('seed')}",
        f"- ranks: {data.get('runner') or 'warm pools'}",
        "",
        "| suite | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---|" * len(OUTCOMES),
    ]
    for suite, counts in sorted(data.get("summary", {}).items()):
        out.append(f"| {suite} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    failures = [
        t
        for t in data.get("tests", [])
        if t["outcome"] in ("failed", "unexpected pass", "expected failure", "inherited failure")
    ]
    if failures:
        out += ["", "## Failures and expected failures", ""]
        for test in failures:
            out += [f"### `{test['id']}`: {test['outcome']}", "", test.get("message") or ""]
            failure = test.get("failure")
            if failure:
                out += ["", "```", render_failure({**failure, "reproduction": None}), "```"]
                if failure.get("minimal_case"):
                    out += ["", "Minimal case:", "", "```", failure["minimal_case"], "```"]
                if failure.get("reproduction"):
                    out += ["", f"Reproduce: `{failure['reproduction']}`"]
            for name, reason in test.get("known_in", {}).items():
                out += ["", f"{name} fails this test too: {reason}"]
            out.append("")
    if data.get("unmatched_expectations"):
        out += ["", "## Expectations matching no test", ""] + [
            f"- {e}" for e in data["unmatched_expectations"]
        ]
    return "\n".join(out) + "\n"
