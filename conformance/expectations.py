"""Expectations files: a backend's known failures, each named by how it fails and why.

An expectations file is TOML, one ``[[known]]`` table per known failure::

    # torch DCP plans a _StridedShard shard as one chunk at its first offset
    [[known]]
    test = "roundtrip::test_round_trip_strided_shard"
    step = "save"
    kind = "raised"
    raises = "CheckpointException"
    match = "overlapping chunks"
    reason = "DCP plans a _StridedShard shard as one chunk at its first global offset ..."

- ``test``: ``<suite>::<test function>``, then optionally ``[<parameters>]`` as pytest
  writes them (``faults::test_failed_save_keeps_the_previous_checkpoint[finish]``); the
  parameters may use ``*`` and ``?``. Ids do not depend on the module or class a test ran
  from, so one entry covers the shipped suites and a class-style subclass of them.
- The signature, matched against the failure's fields (:class:`~.kit.failures.ConformanceFailure`):
  ``step`` (one of :data:`~.kit.failures.STEPS`; not for kind ``harness``) and ``kind`` (one
  of :data:`~.kit.failures.KINDS`) must equal the failure's; ``raises``, required for kind
  ``raised``, names the exception type every failing rank raised; ``match`` is a
  regular expression that must be found in every line of what went wrong, each searched with
  the headline (every failing rank's error, every wrong value; with none of those, the
  headline and details); ``key`` a glob every key involved must match; ``case`` a regular
  expression searched in the case's description. The entry names the whole failure: one wrong
  value or one rank's error it does not describe makes the failure the backend's own.
  Every entry but a ``hang`` or ``lost_rank`` one has ``match`` or ``key``.
- ``part``, optional: where the failure lies, one of :data:`PARTS` (``planner``, ``storage``,
  ``staging``, ``driver``). A backend that inherits this file (``inherits``) inherits the entry only where it
  takes that part from this file's backend: one that brings its own storage writer and reader
  does not inherit DCP's storage failures, whatever they look like
  (:attr:`~.backend.Backend.inherited_parts`). An entry without ``part`` is inherited by every
  backend that inherits the file.
- ``reason``: why the backend fails so, for the person reading the report.

A failure matching no entry is the backend's own, even in a listed test: an entry excuses the
failure it names and nothing else. A hang, a lost rank or a harness error matches only an entry
of that kind. Bad entries (no signature, an unknown key, step, kind or test, a pattern that is
no regular expression) raise :class:`ExpectationsError` naming file and line; an entry that
matches no failure in a run is reported after it.

Files of the earlier format (``<test id prefix>  # <reason>`` lines) are refused with how to
convert them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the tested interpreter is 3.11
    import tomli as tomllib

from .kit.failures import KINDS, STEPS, error_type

__all__ = ["PARTS", "Expectation", "Expectations", "ExpectationsError", "failure_messages"]

_KEYS = ("test", "step", "kind", "raises", "match", "key", "case", "part", "reason")

PARTS: dict[str, str] = {
    "planner": "the save and load planners (DCP's DefaultSavePlanner and DefaultLoadPlanner)",
    "storage": "the storage writer and reader (DCP's FileSystemWriter and FileSystemReader)",
    "staging": "async_save's staging of the state (DCP's DefaultStager, and BlockingAsyncStager, "
    "with which FileSystemWriter stages itself)",
    "driver": "save, load and async_save themselves (dcp.save, dcp.load, dcp.async_save, "
    "their staging, _Checkpointer)",
}
"""The parts of a checkpoint system an entry's failure may lie in (its ``part``): a backend
inheriting the file inherits an entry with a ``part`` only where it takes that part from the
file's backend (:attr:`~.backend.Backend.inherited_parts`)."""
_RAISING = ("raised", "wrong_error")
_UNPATTERNED = ("hang", "lost_rank")
_TEST = re.compile(r"(?P<suite>[a-z0-9_]+)::(?P<name>test_\w+)(?P<params>\[.*\])?")


class ExpectationsError(ValueError):
    """An expectations file or entry is malformed: the message names file and line."""


def failure_messages(failure: Mapping[str, Any]) -> list[str]:
    """The texts an entry's ``match`` must each be found in: one per line of the failure's
    ``errors`` (a rank's error, a wrong value), each with the headline; a failure without any
    (no error where one was due, a hang) is its headline and details."""
    what = failure.get("what") or ""
    errors = failure.get("errors") or ()
    if errors:
        return [f"{what}\n{error}" for error in errors]
    return [f"{what}\n{failure.get('details') or ''}"]


@dataclass(frozen=True)
class Expectation:
    """A known failure: ``test`` fails at ``step`` as ``kind`` (raising ``raises``, with a
    message matching ``match``, at keys matching ``key``, on a case matching ``case``), because
    ``reason``."""

    test: str
    step: str | None
    kind: str
    reason: str
    raises: str | None = None
    match: str | None = None
    key: str | None = None
    case: str | None = None
    part: str | None = None
    """Where the failure lies (one of :data:`PARTS`), for a backend inheriting the entry."""
    source: str = "<none>"
    line: int = 0
    _pattern: re.Pattern | None = field(default=None, compare=False, repr=False)
    _case: re.Pattern | None = field(default=None, compare=False, repr=False)

    @property
    def where(self) -> str:
        """``file:line`` of the entry."""
        return f"{self.source}:{self.line}"

    @property
    def suite(self) -> str:
        """The suite the entry's test belongs to."""
        return self.test.split("::", 1)[0]

    @property
    def function(self) -> str:
        """The test function the entry names (without parameters)."""
        return self.test.split("::", 1)[1].split("[", 1)[0]

    def covers(self, test_id: str) -> bool:
        """Whether the entry is about the test ``<suite>::<function>[<params>]``."""
        if "[" in self.test:
            return _glob(self.test).fullmatch(test_id) is not None
        return test_id == self.test or test_id.startswith(self.test + "[")

    def matches(self, failure: Mapping[str, Any]) -> bool:
        """Whether ``failure`` (a :meth:`ConformanceFailure.fields` mapping) fails as this entry
        says, all of it: the same step and kind; every failing rank raising ``raises``; ``match``
        found in every line of what went wrong (each rank's error, each wrong value), not in one
        of them only; every key involved matching ``key``; the case matching ``case``."""
        if failure.get("kind") != self.kind:
            return False
        if self.step is not None and failure.get("step") != self.step:
            return False
        if self.raises is not None:
            raised = [error_type(e).rsplit(".", 1)[-1] for e in failure.get("errors") or ()]
            if not raised or any(t != self.raises.rsplit(".", 1)[-1] for t in raised):
                return False
        if self._pattern is not None and not all(
            self._pattern.search(text) for text in failure_messages(failure)
        ):
            return False
        if self.key is not None:
            keys = failure.get("keys") or [failure.get("key") or ""]
            if not all(_glob(self.key).fullmatch(str(k)) for k in keys):
                return False
        return self._case is None or bool(self._case.search(str(failure.get("case") or "")))

    def signature(self) -> str:
        """The entry's signature as one line: step, kind and patterns."""
        parts = [f"step {self.step}"] if self.step else []
        parts.append(f"kind {self.kind}")
        parts += [
            f"{n} {v!r}"
            for n, v in (
                ("raises", self.raises),
                ("match", self.match),
                ("key", self.key),
                ("case", self.case),
            )
            if v is not None
        ]
        return ", ".join(parts)


class Expectations:
    """The entries of one expectations file."""

    def __init__(self, entries: list[Expectation], source: str = "<none>"):
        self.entries = list(entries)
        self.source = source

    @classmethod
    def load(cls, path: str | Path, *, required: bool = False) -> Expectations:
        """Parse ``path``; a missing file means no known failures, unless ``required`` (a file
        someone named). Raises :class:`ExpectationsError` naming file and line for a malformed
        file or entry."""
        path = Path(path)
        if not path.exists():
            if required:
                raise ExpectationsError(f"{path}: no such expectations file")
            return cls([], str(path))
        text = path.read_text()
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ExpectationsError(
                f"{path}: not a TOML expectations file: {exc}" + _old_format_hint(text)
            ) from None
        unknown = sorted(set(data) - {"known"})
        if unknown:
            raise ExpectationsError(
                f"{path}:{_line_of(text, unknown[0])}: unknown top-level key(s) {unknown}; "
                "entries are [[known]] tables"
            )
        tables = data.get("known", [])
        lines = _table_lines(text)
        if not isinstance(tables, list) or len(lines) != len(tables):
            raise ExpectationsError(
                f"{path}: entries must be [[known]] tables, each starting on a line of its own"
            )
        entries, problems = [], []
        for table, line in zip(tables, lines):
            try:
                entries.append(_entry(table, str(path), line))
            except ExpectationsError as exc:
                problems.append(str(exc))
        if problems:  # every bad entry at once, not one per run
            raise ExpectationsError("\n".join(problems))
        return cls(entries, str(path))

    def for_test(self, test_id: str) -> list[Expectation]:
        """The entries about test ``test_id`` (``<suite>::<function>[<params>]``)."""
        return [e for e in self.entries if e.covers(test_id)]

    def check_tests(self, suites: Mapping[str, Iterable[str]]) -> None:
        """Raise :class:`ExpectationsError` for an entry naming a suite or test function that
        ``suites`` (suite name -> its test function names) does not have."""
        problems = []
        for entry in self.entries:
            if entry.suite not in suites:
                problems.append(
                    f"{entry.where}: unknown suite {entry.suite!r} in test {entry.test!r}; "
                    f"suites: {', '.join(sorted(suites))}"
                )
            elif entry.function not in set(suites[entry.suite]):
                problems.append(
                    f"{entry.where}: suite {entry.suite!r} has no test {entry.function!r} "
                    f"(test = {entry.test!r})"
                )
        if problems:
            raise ExpectationsError("\n".join(problems))

    def check_parameters(self, tests: Iterable[str]) -> None:
        """Raise :class:`ExpectationsError` for an entry naming parameters that none of
        ``tests`` (every collected ``<suite>::<function>[<params>]``) has, where that function
        was collected at all (so a partial collection cannot tell)."""
        by_function: dict[str, list[str]] = {}
        for test in tests:
            by_function.setdefault(test.split("[", 1)[0], []).append(test)
        problems = []
        for entry in self.entries:
            if "[" not in entry.test:
                continue
            collected = by_function.get(f"{entry.suite}::{entry.function}")
            if collected and not any(entry.covers(t) for t in collected):
                ids = sorted(t[t.index("[") :] for t in collected if "[" in t) or ["none"]
                problems.append(
                    f"{entry.where}: no parameters of {entry.suite}::{entry.function} match "
                    f"{entry.test!r}; its parameters: {', '.join(ids[:12])}"
                )
        if problems:
            raise ExpectationsError("\n".join(problems))

    def unmatched(self, matched: Iterable[str]) -> list[str]:
        """Entries (as ``file:line test: signature``) whose ``where`` is not in ``matched``."""
        seen = set(matched)
        return [f"{e.where} {e.test}: {e.signature()}" for e in self.entries if e.where not in seen]


def _line_of(text: str, key: str) -> int:
    """The first line that defines ``key`` (``key = ...`` or ``[key]``), else 1."""
    pattern = re.compile(rf"\s*(\[+\s*)?{re.escape(key)}\s*(=|\])")
    return next((n for n, line in enumerate(text.splitlines(), 1) if pattern.match(line)), 1)


def _glob(pattern: str) -> re.Pattern:
    """``pattern`` with ``*`` (any text) and ``?`` (one character) as its only wildcards: brackets
    are literal, as in pytest's parameter ids."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _table_lines(text: str) -> list[int]:
    """The line number of each ``[[known]]`` header, in order."""
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if re.fullmatch(r"\s*\[\[\s*known\s*\]\]\s*(#.*)?", line)
    ]


def _entry(table: Any, source: str, line: int) -> Expectation:
    where = f"{source}:{line}"
    if not isinstance(table, dict):
        raise ExpectationsError(f"{where}: an entry is a table of {', '.join(_KEYS)}")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ExpectationsError(f"{where}: unknown key(s) {unknown}; an entry has {list(_KEYS)}")
    for name, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise ExpectationsError(f"{where}: {name} must be a non-empty string, got {value!r}")
    missing = [k for k in ("test", "step", "kind", "reason") if k not in table]
    if table.get("kind") == "harness" and "step" in missing:
        missing.remove("step")  # a harness error comes from no step of the backend's
    if "step" in missing or "kind" in missing:
        raise ExpectationsError(
            f"{where}: the entry for {table.get('test', '?')!r} names no signature (step and "
            "kind, and raises, match or key): an entry excuses one way of failing, never a "
            "whole test"
        )
    if missing:
        raise ExpectationsError(f"{where}: the entry has no {' and no '.join(missing)}")
    if not _TEST.fullmatch(table["test"]):
        raise ExpectationsError(
            f"{where}: test {table['test']!r} is not <suite>::<test function>[<parameters>]"
        )
    if "step" in table and table["step"] not in STEPS:
        raise ExpectationsError(f"{where}: unknown step {table['step']!r}; steps: {list(STEPS)}")
    if table["kind"] not in KINDS:
        raise ExpectationsError(f"{where}: unknown kind {table['kind']!r}; kinds: {list(KINDS)}")
    if table["kind"] == "raised" and "raises" not in table:
        raise ExpectationsError(
            f"{where}: a kind 'raised' entry names the exception type (raises = ...)"
        )
    if "raises" in table and table["kind"] not in _RAISING:
        raise ExpectationsError(
            f"{where}: raises is for kinds {list(_RAISING)}: a {table['kind']!r} failure raises "
            "nothing"
        )
    if table["kind"] == "harness" and "step" in table:
        raise ExpectationsError(
            f"{where}: a harness error comes from no step of the backend's: remove step"
        )
    if table["kind"] not in _UNPATTERNED and "match" not in table and "key" not in table:
        raise ExpectationsError(
            f"{where}: the entry for {table['test']!r} has no pattern: give match (a regular "
            "expression searched in the failure's message) or key (a glob on its key)"
        )
    if "part" in table and table["part"] not in PARTS:
        raise ExpectationsError(
            f"{where}: unknown part {table['part']!r}; parts: {', '.join(PARTS)}"
        )
    patterns = {}
    for name in ("match", "case"):
        if name in table:
            try:
                patterns[name] = re.compile(table[name])
            except re.error as exc:
                raise ExpectationsError(
                    f"{where}: {name} {table[name]!r} is no regular expression: {exc}"
                ) from None
    return Expectation(
        test=table["test"],
        step=table.get("step"),
        kind=table["kind"],
        reason=" ".join(table["reason"].split()),
        raises=table.get("raises"),
        match=table.get("match"),
        key=table.get("key"),
        case=table.get("case"),
        part=table.get("part"),
        source=source,
        line=line,
        _pattern=patterns.get("match"),
        _case=patterns.get("case"),
    )


def _old_format_hint(text: str) -> str:
    if any(
        "::" in line and "#" in line and not line.lstrip().startswith("[")
        for line in text.splitlines()
    ):
        return (
            "\nThis looks like the earlier '<test id>  # <reason>' format, which excused every "
            "failure of a listed test. Write each known failure as a [[known]] table with test, "
            "step, kind, raises/match/key and reason (see ckptconf.conformance.expectations)."
        )
    return ""
