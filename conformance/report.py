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

from .expectations import PARTS
from .kit.failures import render_failure
from .kit.outcomes import Outcome

__all__ = ["OUTCOMES", "Report", "render_markdown"]

OUTCOMES = tuple(o.value for o in Outcome)
"""The outcomes, in the order tables list them (see :class:`~.kit.outcomes.Outcome`)."""

_KNOWN = (Outcome.EXPECTED.value, Outcome.INHERITED.value)


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
        backend, the outcome and its message, and for a phase that raised its failure fields
        (or error text) and hypothesis' falsifying example; for a call, the known failures its
        examples met, and the hint or credit its verdict found.
        """
        if report.when == "setup" and report.passed:
            return
        if info.get("backend") and not self.backend:
            self.backend = dict(info["backend"])
        parts = (info.get("backend") or {}).get("inherited_parts")
        if parts and "inherited_parts" not in self.backend:  # found at the first test it judged
            self.backend["inherited_parts"] = parts
        outcome = info["outcome"]
        entry: dict[str, Any] = {
            "id": info["id"],
            "test": info.get("test"),
            "suite": info.get("suite"),
            "level": info.get("level"),
            "outcome": outcome,
            "duration": round(report.duration, 3),
        }
        if info.get("message"):
            entry["message"] = info["message"]
        if info.get("examples") is not None:
            entry["examples"] = info["examples"]
        if outcome == Outcome.FAILED.value:
            failure = info.get("failure")
            if failure is None:  # not a ConformanceFailure: an error of the test or of pytest
                failure = {
                    "backend": (info.get("backend") or {}).get("name"),
                    "suite": info.get("suite"),
                    "test": info["id"],
                    "kind": "harness",
                    "what": info.get("error") or _last_line(report.longreprtext),
                    "details": report.longreprtext[-4000:],
                    "minimal_case": info.get("minimal_case"),
                }
            entry["failure"] = failure
            entry["message"] = failure.get("what")
        for extra in ("known", "hint", "credit", "unmatched"):
            if info.get(extra):
                entry[extra] = info[extra]
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

    def matched_entries(self) -> set[str]:
        """The backend's own expectations entries (``file:line``) some failure matched."""
        return {
            known["entry"]
            for test in self.tests
            for known in test.get("known", ())
            if known["origin"] == "own"
        }

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


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]


def inherits_text(backend: dict[str, Any]) -> str:
    """``torch-dcp (planner, staging, driver taken; own storage: ZipWriter is no
    FileSystemWriter)``, or ``nothing``, of a report's backend."""
    parent = backend.get("inherits")
    if not parent:
        return "nothing"
    parts = backend.get("inherited_parts")
    if not parts:
        return parent
    taken = [p for p in PARTS if p in parts["taken"]]
    own = [f"own {p}: {parts['why'].get(p, '')}" for p in PARTS if p not in parts["taken"]]
    said = ", ".join(taken) + " taken" if taken else "no part taken"
    return f"{parent} ({'; '.join([said, *own])})"


def render_markdown(data: dict[str, Any]) -> str:
    """A markdown page from a JSON report."""
    backend = data.get("backend", {})
    versions = data.get("versions", {})
    out = [
        f"# ckptconf conformance report: {backend.get('name', '?')}",
        "",
        f"- backend: `{backend.get('spec')}` - {backend.get('description', '')}",
        f"- declared unsupported: {', '.join(backend.get('unsupported', [])) or 'nothing'}",
        f"- inherits from: {inherits_text(backend)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- profile: {data.get('profile')}, seed: {data.get('seed')}",
        f"- ranks: {data.get('runner') or 'warm pools'}",
        "",
        "| suite | " + " | ".join(OUTCOMES) + " |",
        "|---|" + "---|" * len(OUTCOMES),
    ]
    for suite, counts in sorted(data.get("summary", {}).items()):
        out.append(f"| {suite} | " + " | ".join(str(counts.get(o, 0)) for o in OUTCOMES) + " |")
    shown = [
        t
        for t in data.get("tests", [])
        if t["outcome"] in ("failed", "unexpected pass", *_KNOWN) or t.get("credit")
    ]
    if shown:
        out += ["", "## Failures, known failures and credits", ""]
        for test in shown:
            out += [f"### `{test['id']}`: {test['outcome']}", ""]
            failure = test.get("failure")
            if failure:
                out += ["```", render_failure({**failure, "reproduction": None}), "```"]
                if failure.get("minimal_case"):
                    out += ["", "Minimal case:", "", "```", failure["minimal_case"], "```"]
                if failure.get("reproduction"):
                    out += ["", f"Reproduce: `{failure['reproduction']}`"]
            elif test.get("message") and test["outcome"] not in _KNOWN:
                out.append(test["message"])
            out += known_lines(test)
            for extra in ("hint", "credit"):
                if test.get(extra):
                    out += ["", f"{extra.capitalize()}: {test[extra]}"]
            for entry in test.get("unmatched", ()):
                out += ["", f"Listed, and no example failed so: {entry}"]
            out.append("")
    if data.get("unmatched_expectations"):
        out += ["", "## Expectations matching no failure", ""] + [
            f"- {e}" for e in data["unmatched_expectations"]
        ]
    return "\n".join(out) + "\n"


def known_lines(test: dict[str, Any]) -> list[str]:
    """Markdown lines for the known failures a test's examples met: entry, reason, examples."""
    out = []
    for known in test.get("known", ()):
        origin = "expected" if known["origin"] == "own" else f"inherited from {known['origin']}"
        out += [
            "",
            f"{known['count']} example(s) {origin} ({known['entry']}: {known['signature']}): "
            f"{known['reason']}",
        ]
        for example in known.get("examples", ()):
            out += [
                "",
                "```",
                f"{example.get('what')}\n{example.get('case') or ''}".rstrip(),
                "```",
            ]
    return out
