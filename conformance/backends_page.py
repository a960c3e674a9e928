"""docs/backends.md: the verdicts on several backends, generated from their JSON reports.

``ckptconf backends-page REPORT.json ... -o docs/backends.md``. Reports of one backend (a ci
run and dev runs with other seeds, say) are shown together: a row per run, then one section
per backend with the command of each run; its own findings across the runs (failures, and the
failures its own expectations file explains, with the reviewed reason), each saying which runs
found it; what it inherits from the backend it is built on, entry by entry; the credits (a
test its parent fails and it passes); and what could not run, with why. A failure no
expectation explains is marked **not reviewed**: it is published only once a person has
checked it is the backend's, not the suite's (then it goes into the backend's expectations
file with its reason). ``--note 'NAME: text'`` adds what changed for a backend.
"""

from __future__ import annotations

import shlex
from collections import Counter
from typing import Any

from .kit.outcomes import Outcome
from .report import inherits_text

__all__ = ["render_backends_page"]

_COLUMNS = tuple(Outcome)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def _totals(report: dict[str, Any]) -> Counter:
    return Counter(t["outcome"] for t in report.get("tests", []))


def _one_line(text: str | None, limit: int = 400) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_name(report: dict[str, Any]) -> str:
    seed = report.get("seed")
    return report.get("profile", "?") + (f" (seed {seed})" if seed is not None else "")


def _own_finding(test: dict[str, Any], runs: list[str]) -> list[str]:
    failure = test.get("failure") or {}
    lines = [f"#### `{test['id']}` ({test['level']})", "", f"Found by: {', '.join(runs)}.", ""]
    if test["outcome"] == Outcome.EXPECTED.value:
        for known in test.get("known", ()):
            if known["origin"] == "own":
                lines += [f"Reviewed ({known['entry']}): {known['reason']}", ""]
            else:
                lines += [f"Also inherited from {known['origin']} ({known['entry']}).", ""]
            lines += [f"Failure: {known['signature']}, {known['count']} example(s).", ""]
            for example in known.get("examples", ())[:1]:
                lines += ["Case:", "", "```", (example.get("case") or "").strip(), "```", ""]
        return lines
    lines += ["**Not reviewed** (no expectation explains it).", ""]
    if failure.get("what"):
        lines += [f"What failed: {_one_line(failure['what'])}", ""]
    if failure.get("verdict"):
        lines += [f"Verdict: {_one_line(failure['verdict'])}", ""]
    if failure.get("case"):
        lines += ["Case:", "", "```", failure["case"].strip(), "```", ""]
    if failure.get("details"):
        lines += ["```", failure["details"].strip()[:1200], "```", ""]
    if failure.get("minimal_case"):
        lines += ["Minimal case:", "", "```", failure["minimal_case"].strip(), "```", ""]
    if failure.get("reproduction"):
        lines += [f"Reproduce: `{failure['reproduction']}`", ""]
    return lines


def _by_test(reports: list[dict[str, Any]], outcomes: tuple[str, ...]):
    """Per test id with one of ``outcomes`` in any run: the entry to show (a failure before an
    expected one, so no run's own failure hides behind another's review) and the runs, each
    with its outcome."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for report in reports:
        for test in report.get("tests", []):
            if test["outcome"] in outcomes:
                found.setdefault(test["id"], []).append((_run_name(report), test))
    merged = []
    for test_id, seen in sorted(found.items()):
        shown = next((t for _, t in seen if t["outcome"] == Outcome.FAILED.value), seen[0][1])
        runs = [f"{run} ({t['outcome']})" if len(outcomes) > 1 else run for run, t in seen]
        merged.append((test_id, (shown, runs)))
    return merged


def _section(reports: list[dict[str, Any]], note: str | None) -> list[str]:
    first = reports[0]
    backend = first.get("backend", {})
    versions = ", ".join(f"{k} {v}" for k, v in first.get("versions", {}).items())
    own = _by_test(reports, (Outcome.FAILED.value, Outcome.EXPECTED.value))
    inherited = _by_test(reports, (Outcome.INHERITED.value,))
    unexpected = _by_test(reports, (Outcome.UNEXPECTED_PASS.value,))
    credited = {t["id"]: t for r in reports for t in r.get("tests", []) if t.get("credit")}
    lines = [
        f"## {backend.get('name', '?')}",
        "",
        f"- what: {backend.get('description', '')}",
        f"- inherits from: {inherits_text(backend)}; declared unsupported: "
        f"{', '.join(backend.get('unsupported', [])) or 'nothing'}",
        f"- versions: {versions}",
    ]
    for report in reports:
        lines.append(
            f"- {_run_name(report)}, {report.get('date', '?')}, "
            f"{_minutes(report.get('wall_seconds'))}: `{report.get('command') or '?'}`"
        )
    lines.append("")
    if note:
        lines += [f"What changed: {note}", ""]
    lines += [f"### Own findings ({len(own)})", ""]
    if not own:
        lines += ["None.", ""]
    for _, (test, runs) in own:
        lines += _own_finding(test, runs)
    if unexpected:
        lines += [f"### Unexpected passes ({len(unexpected)})", ""]
        for test_id, (test, runs) in unexpected:
            lines.append(
                f"- `{test_id}` ({', '.join(runs)}): {'; '.join(test.get('unmatched', ()))}"
            )
        lines.append("")
    lines += [f"### Inherited from {backend.get('inherits')} ({len(inherited)})", ""]
    for test_id, (test, runs) in inherited:
        entries = "; ".join(
            f"{k['entry'].rsplit('/', 1)[-1]} ({k['count']} example(s)): {_one_line(k['reason'], 160)}"
            for k in test.get("known", ())
        )
        lines.append(f"- `{test_id}` ({', '.join(runs)}): {entries}")
    lines.append("")
    if credited:
        lines += [f"### Passes where {backend.get('inherits')} fails ({len(credited)})", ""]
        lines += [f"- `{i}`: {_one_line(t['credit'], 300)}" for i, t in sorted(credited.items())]
        lines.append("")
    unsupported = {
        t["id"]: t
        for r in reports
        for t in r.get("tests", [])
        if t["outcome"] == Outcome.UNSUPPORTED.value
    }
    lines += [f"### Could not run ({len(unsupported)})", ""]
    reasons = Counter(_one_line(t.get("message"), 200) for t in unsupported.values())
    lines += [f"- {n} test(s): {reason}" for reason, n in reasons.most_common()] + [""]
    return lines


def render_backends_page(
    reports: list[dict[str, Any]],
    *,
    sources: list[str],
    not_run: list[str] = (),
    notes: dict[str, str] | None = None,
) -> str:
    """The markdown page for ``reports`` (JSON reports; several may be of one backend),
    ``sources`` their paths as the command was given them; ``not_run``: ``"name: why"`` for
    backends tried and not run; ``notes``: per backend name, what changed."""
    notes = notes or {}
    lines = [
        "# Backends: ckptconf verdicts",
        "",
        "Generated by `ckptconf backends-page "
        + " ".join(
            [
                *sources,
                *(f"--not-run {shlex.quote(n)}" for n in not_run),
                *(f"--note {shlex.quote(f'{k}: {v}')}" for k, v in notes.items()),
            ]
        )
        + " -o docs/backends.md` from the JSON reports of `ckptconf run --report`; do not "
        "edit by hand. Own findings are the backend's failures; those marked reviewed were "
        "checked by hand and carry the reason from the backend's expectations file. A failure "
        "counts as inherited only where the parent backend failed the same example the same "
        "way in the same run.",
        "",
        "| backend | run | " + " | ".join(c.value for c in _COLUMNS) + " | run time |",
        "|---|---|" + "---:|" * (len(_COLUMNS) + 1),
    ]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        grouped.setdefault(report.get("backend", {}).get("name", "?"), []).append(report)
    for name, group in grouped.items():
        for report in group:
            totals = _totals(report)
            lines.append(
                f"| {name} | {_run_name(report)} | "
                + " | ".join(str(totals.get(c.value, 0)) for c in _COLUMNS)
                + f" | {_minutes(report.get('wall_seconds'))} |"
            )
    lines.append("")
    for name, group in grouped.items():
        lines += _section(group, notes.get(name))
    if not_run:
        lines += ["## Not run", ""] + [f"- {entry}" for entry in not_run] + [""]
    return "\n".join(lines).rstrip() + "\n"
