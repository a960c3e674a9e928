"""What goes wrong in a conformance test: a loaded value that differs, and the one failure type.

A :class:`ConformanceFailure` is data first: its fields (backend, suite, test, case,
rank, key, global index, expected, actual, details, minimal case, reproduction) feed
the JSON report as they are, and :func:`render_failure` makes the text a person reads
from the same fields, whether from the exception or from a report on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConformanceFailure",
    "HangFailure",
    "FAILURE_FIELDS",
    "KINDS",
    "STEPS",
    "MAX_ERRORS",
    "error_line",
    "error_of",
    "error_type",
    "Mismatch",
    "exception_text",
    "listing",
    "render_brief",
    "render_failure",
]

_MAX_SHOWN = 8

MAX_ERRORS = 200
"""The most lines a failure's ``errors`` keeps (wrong values beyond are counted, not listed)."""

STEPS = (
    "save",
    "async_save",
    "load",
    "read_metadata",
    "plan",
    "simulate",
    "checkpointer",
    "write",
    "read",
)
"""What a failing step did, the first word of every step a suite runs: a save, an async save, a
load, ``read_metadata``, planning (``create_local_plan``/``create_global_plan`` alone), a save
and load on simulated ranks, a ``Checkpointer`` round trip, the storage protocol driven by hand
(``write``, ``read``)."""

KINDS = {
    "raised": "a step raised where it must not",
    "wrong_values": "a step returned, but what it loaded, read or left behind is wrong",
    "no_error": "a step that must raise returned without an error",
    "wrong_error": "a step raised, but not as it must (on some ranks only, or without naming "
    "what failed)",
    "hang": "a step did not finish within its timeout",
    "lost_rank": "a rank died during a step",
    "harness": "the test itself could not run its step (not the backend's failure to keep the "
    "contract: a bug of the test, the harness, or the backend's set-up)",
}
"""How a step failed: the kinds of :attr:`ConformanceFailure.kind`, with what each means."""

FAILURE_FIELDS = (
    "backend",
    "suite",
    "test",
    "what",
    "step",
    "kind",
    "errors",
    "keys",
    "case",
    "rank",
    "key",
    "index",
    "expected",
    "actual",
    "details",
    "minimal_case",
    "reproduction",
    "verdict",
)
"""The fields of a failure, in the order the report lists them."""


@dataclass(frozen=True)
class Mismatch:
    """A loaded value that differs from what was saved: where (rank, key, global index) and how."""

    key: str
    rank: int
    detail: str
    global_index: tuple[int, ...] | None = None
    expected: Any = None
    actual: Any = None
    count: int = 1

    def __str__(self) -> str:
        where = f" at global index {self.global_index}" if self.global_index is not None else ""
        values = (
            f": expected {self.expected!r}, got {self.actual!r}"
            if self.expected is not None
            else ""
        )
        many = f" ({self.count} elements differ)" if self.count > 1 else ""
        return f"rank {self.rank}, key {self.key!r}{where}{values}{many} - {self.detail}"


def listing(items: Sequence[Any], limit: int = _MAX_SHOWN) -> str:
    """Up to ``limit`` items, one indented line each, then how many more there are."""
    shown = [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"  ... {len(items) - limit} more")
    return "\n".join(shown)


def exception_text(exc: BaseException, frames: int = 3) -> str:
    """``Type: message`` and the innermost ``frames`` frames (function, file:line) of where it
    was raised: what a failure says of an exception raised in the controller."""
    import traceback

    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(
        f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in reversed(tb)
    )
    message = str(exc)
    if len(message) > 1500:
        message = message[:1500] + " ... (truncated)"
    return f"{type(exc).__name__}: {message}\n  raised in {where}"


def _shown(value: Any) -> str:
    """``repr(value)``, or the text itself when it already is one (a failure rebuilt from fields)."""
    return value if isinstance(value, _Shown) else _Shown(repr(value))


class _Shown(str):
    """A value already shown as text."""


def _plain(value: Any) -> Any:
    """A JSON-ready form of a field value: scalars stay, tuples become lists, the rest repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, str)) for v in value):
        return list(value)
    return repr(value)


class ConformanceFailure(AssertionError):
    """A backend broke the contract: what, on which case, where, and how to reproduce it.

    ``what`` is the one-line headline; ``step`` (one of :data:`STEPS`) and ``kind`` (one of
    :data:`KINDS`) say which step failed and how; ``errors`` lists what went wrong, one line
    each: every distinct ``Type: message`` the failing ranks raised, or every wrong value (a
    :class:`Mismatch`, up to :data:`MAX_ERRORS`); ``keys`` every state-dict key involved. These
    are what an expectations entry matches (:mod:`ckptconf.conformance.expectations`). ``case`` is the drawn case as a person
    reads it; ``rank``, ``key``, ``index`` (global element index), ``expected`` and ``actual``
    say where the first wrong value is, when there is one; ``details`` holds the rest (every
    mismatch, every rank's error and traceback); ``minimal_case`` is the falsifying example
    hypothesis reports after shrinking (filled in by the pytest plugin); ``reproduction`` a
    command that re-runs the test; ``verdict`` what the suite found out about the failure's
    origin (the parent backend passes this case, say).
    """

    def __init__(
        self,
        what: str,
        *,
        backend: str = "",
        suite: str | None = None,
        test: str | None = None,
        step: str | None = None,
        kind: str | None = None,
        errors: tuple[str, ...] | list[str] = (),
        keys: tuple[str, ...] | list[str] = (),
        case: str = "",
        rank: int | None = None,
        key: str | None = None,
        index: tuple[int, ...] | None = None,
        expected: Any = None,
        actual: Any = None,
        details: str = "",
        minimal_case: str | None = None,
        reproduction: str | None = None,
        verdict: str | None = None,
    ):
        if step is not None and step not in STEPS:
            raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {sorted(KINDS)}")
        self.what, self.backend, self.suite, self.test = what, backend, suite, test
        self.step, self.kind, self.errors = step, kind, tuple(errors)[:MAX_ERRORS]
        self.keys = tuple(keys) or ((key,) if key is not None else ())
        self.case, self.rank, self.key, self.index = case, rank, key, index
        self.expected, self.actual, self.details = expected, actual, details
        self.minimal_case, self.reproduction = minimal_case, reproduction
        self.verdict = verdict
        super().__init__(render_failure(self.fields()))

    def add_verdict(self, text: str) -> None:
        """Say what the suite found out about this failure (shown, and kept in the report);
        the exception is changed in place, so a re-raise keeps where it came from."""
        self.verdict = f"{self.verdict}; {text}" if self.verdict else text
        self.args = (render_failure(self.fields()),)

    def fields(self) -> dict[str, Any]:
        """The failure as JSON-ready data; ``expected`` and ``actual`` as their repr."""
        data = {name: _plain(getattr(self, name)) for name in FAILURE_FIELDS}
        for name in ("expected", "actual"):
            value = getattr(self, name)
            data[name] = None if value is None else _shown(value)
        return data

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> ConformanceFailure:
        """The failure whose :meth:`fields` are ``data``."""
        known = {k: v for k, v in data.items() if k in FAILURE_FIELDS and k != "what"}
        for name in ("expected", "actual"):
            if known.get(name) is not None:
                known[name] = _Shown(known[name])
        if known.get("index") is not None:
            known["index"] = tuple(known["index"])
        known["errors"] = tuple(known.get("errors") or ())
        known["keys"] = tuple(known.get("keys") or ())
        return cls(data.get("what", ""), **known)

    def __reduce__(self):
        return (_rebuild, (self.fields(),))


class HangFailure(BaseException):
    """A step hung: its :class:`ConformanceFailure` (``failure``), raised past hypothesis.

    A ``BaseException`` on purpose: hypothesis shrinks ``Exception``s by re-running smaller
    examples, and every re-run of a hang waits out the whole timeout (one run spent 19
    minutes in its first test that way). This stops the test at once with the case that
    hung; pytest reports it as a failure like any other.
    """

    def __init__(self, failure: ConformanceFailure):
        super().__init__(str(failure))
        self.failure = failure

    def __reduce__(self):
        return (type(self), (self.failure,))


def _rebuild(data: dict[str, Any]) -> ConformanceFailure:
    return ConformanceFailure.from_fields(data)


def error_line(type_name: str, message: str) -> str:
    """``Type: message`` as a failure's ``errors`` list an exception (cut at 3,000 characters)."""
    return f"{type_name}: {message.strip()[:3000]}"


def error_lines(type_name: str, message: str, causes: Sequence[str] = ()) -> list[str]:
    """The ``errors`` lines of one rank's exception: ``Type: rank N: Cause: message`` for each
    rank's failure a checkpoint error carries (``causes``, from
    :func:`~ckptconf.harness.errors.causes_of`), else :func:`error_line`. So an expectations
    entry's ``match`` is searched in each failing rank's own error, not in a text holding every
    rank's: a known failure on one rank excuses nothing another rank raised."""
    if causes:
        return [error_line(type_name, cause) for cause in causes]
    return [error_line(type_name, message)]


def error_of(exc: BaseException) -> str:
    """:func:`error_line` of an exception raised in the controller."""
    return error_line(type(exc).__name__, str(exc))


def error_type(error: str) -> str:
    """The exception type name of an ``errors`` entry (``"Type: message"``)."""
    return error.split(":", 1)[0].strip()


def _where(fields: dict[str, Any]) -> str | None:
    """``first difference: rank 1, key 'w', global index (3,), expected 7.0, got 0.0`` (or
    ``where: rank 0`` without values), from whichever of those fields are set."""
    where = []
    if fields.get("rank") is not None:
        where.append(f"rank {fields['rank']}")
    if fields.get("key") is not None:
        where.append(f"key {fields['key']!r}")
    index = fields.get("index")
    if index is not None:
        where.append(f"global index {tuple(index) if isinstance(index, list | tuple) else index}")
    if fields.get("expected") is not None or fields.get("actual") is not None:
        where.append(f"expected {fields.get('expected')}, got {fields.get('actual')}")
    if not where:
        return None
    values = any(fields.get(k) is not None for k in ("index", "expected", "actual"))
    return ("first difference: " if values else "where: ") + ", ".join(where)


def _failed_at(fields: dict[str, Any]) -> str:
    """``failed at: step load, kind raised, raises CheckpointError``."""
    raised = fields.get("kind") in ("raised", "wrong_error")
    types = list(dict.fromkeys(error_type(e) for e in fields.get("errors") or () if raised))
    raised = f", raises {', '.join(types)}" if types else ""
    return f"failed at: step {fields.get('step')}, kind {fields.get('kind')}{raised}"


def render_failure(fields: dict[str, Any]) -> str:
    """The text of a failure from its fields: headline, verdict, case, where, details,
    reproduction."""
    lines = [f"[{fields.get('backend') or '?'}] {fields.get('what', '')}"]
    if fields.get("verdict"):
        lines.append(f"verdict: {fields['verdict']}")
    if fields.get("step") or fields.get("kind"):
        lines.append(_failed_at(fields))
    if fields.get("case"):
        lines += ["case:", str(fields["case"]).rstrip()]
    where = _where(fields)
    if where:
        lines.append(where)
    if fields.get("details"):
        lines.append(str(fields["details"]).rstrip())
    for number, other in enumerate(fields.get("others") or [], start=2):
        lines.append(f"distinct failure {number} of this test: {_other_line(other)}")
        if other.get("error"):
            lines.append(f"  first error: {other['error']}")
        if other.get("minimal_case"):
            lines.append(f"  minimal case: {other['minimal_case']}")
    if fields.get("reproduction"):
        lines.append(f"reproduce: {fields['reproduction']}")
    return "\n".join(lines)


BRIEF_LINES = 25
"""About how many lines :func:`render_brief` gives a failure."""


def render_brief(fields: dict[str, Any], *, record: str | None = None) -> str:
    """The failure a person reads first, in about :data:`BRIEF_LINES` lines: headline, verdict,
    step, the case, the first difference (or each rank's error and where it was raised), the
    minimal case, the reproduction, and where the full record is (``record``: a report's path).

    The full text (every rank's traceback and output) is :func:`render_failure`'s.
    """
    lines = [f"[{fields.get('backend') or '?'}] {fields.get('what', '')}"]
    if fields.get("verdict"):
        lines += _clipped(str(fields["verdict"]), 4, label="verdict")  # hints end it
    if fields.get("step") or fields.get("kind"):
        lines.append(_failed_at(fields))
    if fields.get("case"):
        case = str(fields["case"]).rstrip()
        failing = case.splitlines()[-1].lstrip().startswith("->")  # a lifecycle run's last step
        lines += _clipped(case, 6, label="case", tail=2 if failing else 0)
    where = _where(fields)
    if where:  # a value's repr may run to many lines (an RNG state): its start says enough
        where = " ".join(where.split())
        lines.append(where if len(where) <= 200 else where[:200] + " ...")
    details = str(fields.get("details") or "").rstrip()
    if details:
        summary, site = _details_brief(details)
        lines += _clipped("\n".join(summary), 4)
        if site:
            lines += ["raised at:", *site]
    minimal = str(fields.get("minimal_case") or "")
    if minimal.startswith("pinned example Pinned("):  # its case is the case above
        minimal = "pinned example " + minimal[len("pinned example Pinned(") :].split(", ")[0]
    elif minimal.startswith("Draw ") and fields.get("case"):  # the failure is its last replay
        minimal = "the case above (hypothesis' draws: the full record)"
    elif minimal.startswith("(not shrunk: a hang is not re-run)"):
        minimal = "the case above, not shrunk (a hang is not re-run)"
    if minimal:
        lines += _clipped(minimal, 3, label="minimal case")
    others = fields.get("others") or []
    if others:
        lines.append(f"and {len(others)} other distinct failure(s) of this test (full record):")
        lines += [f"  - {_other_line(o)}" for o in others[:3]]
        if len(others) > 3:
            lines.append(f"  ... {len(others) - 3} more")
    if fields.get("reproduction"):
        lines.append(f"reproduce: {fields['reproduction']}")
    if record:
        lines.append(f"full record (every rank's traceback and output): {record}")
    return "\n".join(lines)


def _other_line(other: dict[str, Any]) -> str:
    """One line for a further distinct failure: where it failed and its headline."""
    at = ", ".join(f"{k} {other[k]}" for k in ("step", "kind") if other.get(k))
    text = f"{at}: {other.get('what') or ''}" if at else str(other.get("what") or "")
    text = " ".join(text.split())
    return text if len(text) <= 150 else text[:150] + " ..."


def _clipped(
    text: str, most: int, *, label: str = "", width: int = 160, tail: int = 0
) -> list[str]:
    """``text`` in at most ``most`` lines (long ones wrapped at ``width``): its first lines and
    its last ``tail`` ones (a lifecycle case ends with its failing step), with a count of those
    left out, under ``label`` (on the same line when ``text`` is one line)."""
    shown: list[str] = []
    for line in text.splitlines():
        while len(line) > width:
            shown.append(line[:width])
            line = "    " + line[width:]
        shown.append(line)
    kept = shown
    if len(shown) > most:
        tail = min(tail, most - 1)
        left_out = f"  ... {len(shown) - most} more line(s) in the full record"
        kept = shown[: most - tail] + [left_out] + (shown[-tail:] if tail else [])
    if not label or not kept:
        return kept
    if len(shown) == 1:
        return [f"{label}: {kept[0].strip()}"]
    return [f"{label}:", *kept]


def _details_brief(details: str) -> tuple[list[str], list[str]]:
    """The summary lines of ``details`` (before the first ``--- ... ---`` section: each rank's
    error), and the frame that raised first in its first traceback (file line, code, error)."""
    lines = details.splitlines()
    summary = []
    for line in lines:
        if line.startswith("--- ") and line.rstrip().endswith("---"):
            break
        if line.strip().startswith("--- traceback of rank"):  # a message carrying tracebacks
            break
        summary.append(line)
    site: list[str] = []
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback ")), None)
    if start is not None:
        block = []
        for line in lines[start + 1 :]:
            if not line.strip() or line.startswith(("The above exception", "During handling")):
                break
            block.append(line)
        frames = [i for i, line in enumerate(block) if line.lstrip().startswith("File ")]
        if frames:
            last = frames[-1]
            code = [b for b in block[last + 1 :] if b.startswith("    ") and b.strip("^~ ")]
            error = next((b for b in block[last + 1 :] if not b.startswith(" ")), "")
            site = [block[last].rstrip(), *code[:1], *([error] if error else [])]
    return summary, site
