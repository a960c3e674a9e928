"""The run report: per-test outcomes, a suite x outcome matrix, JSON on disk, markdown."""

from __future__ import annotations

import json
import platform
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Report", "OUTCOMES", "render_markdown"]

OUTCOMES = ("passed", "failed", "unsupported", "expected failure", "unexpected pass", "skipped")
_DRAWN_CASE = re.compile(r"(Draw 1 \(.*?)(?:\nExplanation:|\nYou can reproduce|\Z)", re.S)
_EXAMPLE = re.compile(
    r"((?:Falsifying example|Failing test case):.*?)(?:\nExplanation:|\nYou can reproduce|\Z)", re.S
)
_FAILURE = re.compile(r"(\[[^\]\n]+\] .*?)(?:\nreproduce: |\Z)", re.S)
_REPRODUCE = re.compile(r"^reproduce: (.*)$", re.M)


@dataclass
class Report:
    """What ran, against what, with which outcome."""

    profile: str
    seed: int | None
    backend: dict[str, Any] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)
    unmatched_expectations: list[str] = field(default_factory=list)

    def record(
        self,
        test_id: str,
        report,
        *,
        suite: str | None,
        level: str | None,
        exception_text: str | None = None,
    ) -> None:
        """Add the outcome of a test's setup or call phase (setup only when it did not pass)."""
        if report.when == "setup" and report.passed:
            return
        from .plugin import UNSUPPORTED_PREFIX

        text = report.longreprtext if report.longrepr else ""
        if report.skipped and hasattr(report, "wasxfail"):
            outcome = "expected failure"
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else text
            outcome = "unsupported" if UNSUPPORTED_PREFIX in reason else "skipped"
            text = reason
        elif report.passed and hasattr(report, "wasxfail"):
            outcome = "unexpected pass"
        elif report.failed:
            outcome = "failed"
        else:
            outcome = "passed"
        entry: dict[str, Any] = {
            "id": test_id,
            "suite": suite,
            "level": level,
            "outcome": outcome,
            "duration": round(report.duration, 3),
        }
        if outcome in ("failed", "expected failure", "unexpected pass", "unsupported", "skipped"):
            entry["message"] = _summary(text, getattr(report, "wasxfail", None))
        if outcome in ("failed", "expected failure"):
            text = exception_text or text
            example = _DRAWN_CASE.search(text) or _EXAMPLE.search(text)
            failure = _FAILURE.search(text)
            reproduce = _REPRODUCE.search(text)
            entry["minimal_case"] = example.group(1).strip() if example else None
            entry["failure"] = failure.group(1).strip()[:4000] if failure else None
            entry["reproduce"] = reproduce.group(1).strip() if reproduce else None
        self.tests = [t for t in self.tests if t["id"] != test_id] + [entry]

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
        for suite in sorted(counts):
            row = [suite.ljust(width)] + [
                str(counts[suite][c]).rjust(max(6, len(c))) for c in columns
            ]
            lines.append("  ".join(row))
        total = Counter()
        for c in counts.values():
            total.update(c)
        lines.append(
            "  ".join(
                ["total".ljust(width)] + [str(total[c]).rjust(max(6, len(c))) for c in columns]
            )
        )
        return lines

    def core_failures(self) -> int:
        """Failed tests of level core."""
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
            "summary": {suite: dict(c) for suite, c in self.counts().items()},
            "tests": sorted(self.tests, key=lambda t: t["id"]),
            "unmatched_expectations": self.unmatched_expectations,
        }

    def write(self, path: str | Path) -> None:
        """Write the JSON report."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2, default=repr) + "\n")


def _summary(text: str, wasxfail: str | None) -> str:
    if wasxfail:
        return wasxfail
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("E ") or "ConformanceFailure" in line:
            return line.removeprefix("E").strip()[:300]
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
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- profile: {data.get('profile')}, seed: {data.get('seed')}",
        "",
        "| suite | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---|" * len(OUTCOMES),
    ]
    for suite, counts in sorted(data.get("summary", {}).items()):
        out.append(f"| {suite} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    failures = [
        t
        for t in data.get("tests", [])
        if t["outcome"] in ("failed", "unexpected pass", "expected failure")
    ]
    if failures:
        out += ["", "## Failures and expected failures", ""]
        for test in failures:
            out.append(f"### `{test['id']}`: {test['outcome']}")
            out.append("")
            out.append(test.get("message") or "")
            for key in ("failure", "minimal_case"):
                if test.get(key):
                    out += ["", "```", test[key], "```"]
            if test.get("reproduce"):
                out += ["", f"Reproduce: `{test['reproduce']}`"]
            out.append("")
    if data.get("unmatched_expectations"):
        out += ["", "## Expectations matching no test", ""] + [
            f"- {e}" for e in data["unmatched_expectations"]
        ]
    return "\n".join(out) + "\n"
