"""Verdicts by failure: which failures of a test are known, and whose.

A :class:`Verdict` follows one conformance test against one backend as its examples run.
Each failing example is judged on its own (:meth:`Verdict.judge`), by what failed, never by
the test's id alone:

- it matches an entry of the backend's own expectations file: an *expected* failure;
- it matches an entry of the parent backend's file (``inherits``) *and* the parent, run in
  this session on the same example, fails it the same way (a failure matching the same
  entry): an *inherited* failure. Where the parent passes the example, fails it otherwise
  or cannot run it, the failure is the backend's own, and its ``verdict`` says so;
- anything else (another step, kind or exception, a hang, a harness error, no pattern
  found) is the backend's own.

A known failure is recorded (bounded: :data:`EXAMPLES_KEPT` examples an entry) and the test
carries on drawing, so a defect of the backend's own behind its parent's is still found.
At the end (:meth:`Verdict.outcome`) the test is failed if any example failed the
backend's own way, expected or inherited if only known failures occurred, an unexpected
pass if the backend's own entries name a failure no example had, passed otherwise. Two
more checks run the parent or a built-in backend on examples of this test: a test the
parent is known to fail and this backend passes gets the credit (:attr:`Verdict.credit`),
and a backend's own failure that a built-in fails the same way gets the hint to declare
``inherits`` (:attr:`Verdict.hint`), only then.

Modelled on wptrunner's expected statuses and Dart's status files, which name how a test
fails (an error type, a timeout) rather than that it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..expectations import Expectation
from .failures import ConformanceFailure, HangFailure, error_of, exception_text
from .outcomes import Outcome

__all__ = [
    "EXAMPLES_KEPT",
    "Known",
    "KnownHang",
    "ReplayDiverged",
    "Verdict",
    "add_verdict",
    "failure_fields",
]

EXAMPLES_KEPT = 3
"""Examples kept (case and failure) per matched entry; every match is counted."""

_CHECKS_OF_A_PASS = 4
"""Passing examples at most re-run on the parent to find one it fails (the credit)."""

Replay = Callable[[Any], None]
"""Runs the example again with another backend's checker; returns, or raises its failure."""

Runs = dict[tuple[str, str, str], "dict[str, Any] | str | None"]
"""What other backends did on examples, by (backend, test, example): the failure's fields,
``None`` (it passed) or why it could not run."""


class KnownHang(BaseException):
    """A property test's example hung as an expectations entry says: recorded, and the test
    stops drawing (every further hang would wait out the whole timeout). A ``BaseException``,
    so that hypothesis does not take it for a failing example."""


class ReplayDiverged(Exception):
    """An example re-run on another backend drew otherwise than it did (the test's draws
    depend on the backend): it cannot be compared there."""


def failure_fields(exc: BaseException) -> dict[str, Any]:
    """The fields an expectations entry matches, of whatever a test raised: a
    :class:`ConformanceFailure`'s own, a hang's failure, or a harness error (kind ``harness``)."""
    if isinstance(exc, HangFailure):
        return exc.failure.fields()
    if isinstance(exc, ConformanceFailure):
        return exc.fields()
    return {
        "what": f"the test could not run its step: {type(exc).__name__}",
        "step": None,
        "kind": "harness",
        "errors": [error_of(exc)],
        "details": exception_text(exc),
    }


@dataclass
class Known:
    """The examples of one test that failed as one expectations entry names."""

    entry: Expectation
    origin: str
    """``"own"`` (the backend's expectations) or the parent backend's name."""
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as the report keeps it."""
        return {
            "entry": self.entry.where,
            "origin": self.origin,
            "signature": self.entry.signature(),
            "reason": self.entry.reason,
            "count": self.count,
            "examples": self.examples,
        }


class Verdict:
    """The verdict of one test against one backend, built while its examples run.

    ``own``: the entries of the backend's expectations about this test; ``parent`` and
    ``inherited``: the built-in backend it inherits from (a :class:`~..backend.Backend`) and
    that backend's entries about this test; ``builtins``: other built-in backends and their
    entries, for the ``inherits`` hint. ``checker_for(backend)`` makes the ``ckpt`` of this
    test for another backend, to re-run an example on it; ``runs`` keeps what other backends
    did on examples (one per session: an example is run once on each other backend).
    """

    def __init__(
        self,
        test: str,
        backend_name: str,
        *,
        own: Sequence[Expectation] = (),
        parent: Any = None,
        inherited: Sequence[Expectation] = (),
        builtins: Mapping[str, tuple[Any, Sequence[Expectation]]] | None = None,
        checker_for: Callable[[Any], Any] | None = None,
        runs: Runs | None = None,
    ):
        self.test, self.backend_name = test, backend_name
        self.own, self.parent, self.inherited = list(own), parent, list(inherited)
        self.builtins = dict(builtins or {})
        self._checker_for = checker_for
        self._runs: Runs = {} if runs is None else runs
        self.known: dict[str, Known] = {}
        self.hint: str | None = None
        self.credit: str | None = None
        self._last_own: tuple[dict[str, Any], Replay | None, str] | None = None
        self._passes: list[tuple[str, Replay]] = []

    @property
    def listed(self) -> bool:
        """Whether any entry, own or inherited, is about this test."""
        return bool(self.own or self.inherited)

    def judge(self, exc: BaseException, replay: Replay | None, example: str) -> bool:
        """Whether ``exc``, the failure of one example (``example`` identifies it; ``replay``
        re-runs it with another backend's checker), is a known failure. Known: recorded, and
        the caller carries on. Not known: the backend's own; a failure matching an inherited
        entry the parent does not confirm says why in its ``verdict``."""
        fields = failure_fields(exc)
        for entry in self.own:
            if entry.matches(fields):
                self._record(entry, "own", fields)
                return True
        candidates = [e for e in self.inherited if e.matches(fields)]
        if candidates:
            parent = self._on(self.parent, example, replay)
            confirmed = [e for e in candidates if isinstance(parent, dict) and e.matches(parent)]
            if confirmed:
                self._record(confirmed[0], self.parent.name, fields)
                return True
            add_verdict(exc, self._unconfirmed(candidates[0], parent))
        elif self.listed:
            known = "; ".join(
                f"{Path(e.source).name}:{e.line} ({e.signature()})"
                for e in self.own + self.inherited
            )
            add_verdict(exc, f"no known failure of this test matches this one (known: {known})")
        self._last_own = (fields, replay, example)
        return False

    def passed(self, example: str, replay: Replay) -> None:
        """Note an example that passed (the first few are re-run on the parent for the credit)."""
        if self.inherited and len(self._passes) < _CHECKS_OF_A_PASS:
            self._passes.append((example, replay))

    def outcome(self, failed: bool) -> Outcome:
        """The test's outcome once its examples ran (``failed``: it ended with the backend's own
        failure); finds the credit or the hint first, running the parent or a built-in."""
        if failed:
            self._find_hint()
            return Outcome.FAILED
        if any(k.origin == "own" for k in self.known.values()):
            return Outcome.EXPECTED
        if self.known:
            return Outcome.INHERITED
        if self.own:
            return Outcome.UNEXPECTED_PASS
        self._find_credit()
        return Outcome.PASSED

    def reason(self) -> str:
        """One line on the known failures met: each entry with its count and reason."""
        return "; ".join(
            f"{'expected' if k.origin == 'own' else f'inherited from {k.origin}'} "
            f"({k.count} example(s), {Path(k.entry.source).name}:{k.entry.line}): {k.entry.reason}"
            for k in self.known.values()
        )

    def to_json(self) -> dict[str, Any]:
        """What the report keeps of the verdict, beyond the outcome."""
        data: dict[str, Any] = {}
        if self.known:
            data["known"] = [k.to_json() for k in self.known.values()]
        if self.hint:
            data["hint"] = self.hint
        if self.credit:
            data["credit"] = self.credit
        if self.own and not any(k.origin == "own" for k in self.known.values()):
            data["unmatched"] = [f"{e.where}: {e.signature()}" for e in self.own]
        return data

    # --- helpers -------------------------------------------------------------------------------

    def _record(self, entry: Expectation, origin: str, fields: dict[str, Any]) -> None:
        known = self.known.setdefault(entry.where, Known(entry, origin))
        known.count += 1
        if len(known.examples) < EXAMPLES_KEPT:
            known.examples.append(
                {"case": fields.get("case"), "what": fields.get("what"), "key": fields.get("key")}
            )

    def _on(self, backend: Any, example: str, replay: Replay | None) -> dict[str, Any] | str | None:
        """What ``backend`` does on this example: its failure's fields, ``None`` when it passes,
        or why it could not run it. Cached per backend, test and example."""
        if replay is None or self._checker_for is None:
            return "this example cannot be re-run on another backend"
        key = (backend.name, self.test, example)
        if key not in self._runs:
            self._runs[key] = _run_on(self._checker_for(backend), replay)
        return self._runs[key]

    def _unconfirmed(self, entry: Expectation, parent: dict[str, Any] | str | None) -> str:
        name = self.parent.name
        about = f"not the inherited failure {entry.where}"
        if parent is None:
            return f"{name} passes this example: the failure is {self.backend_name}'s own, {about}"
        if isinstance(parent, str):
            return f"{name} cannot run this example ({parent}), so it is {self.backend_name}'s own failure, {about}"
        return (
            f"{name} fails this example otherwise ({parent.get('kind')} at {parent.get('step')}: "
            f"{parent.get('what')}): the failure is {self.backend_name}'s own, {about}"
        )

    def _find_hint(self) -> None:
        if self._last_own is None or self.parent is not None:
            return
        fields, replay, example = self._last_own
        for name, (backend, entries) in self.builtins.items():
            if name == self.backend_name:
                continue
            for entry in entries:
                if not entry.matches(fields):
                    continue
                other = self._on(backend, example, replay)
                if isinstance(other, dict) and entry.matches(other):
                    self.hint = (
                        f"{name} fails this example the same way ({entry.where}: {entry.reason}); "
                        f"if {self.backend_name} is built on {name}, declare inherits={name!r} "
                        f"(or run with --inherit {name})"
                    )
                    return

    def _find_credit(self) -> None:
        for example, replay in self._passes:
            parent = self._on(self.parent, example, replay)
            if not isinstance(parent, dict):
                continue
            entry = next((e for e in self.inherited if e.matches(parent)), None)
            if entry is not None:
                self.credit = (
                    f"{self.parent.name} fails this test ({entry.where}: {entry.reason}) on an "
                    f"example {self.backend_name} passes:\n{parent.get('case')}"
                )
                return


def _run_on(checker: Any, replay: Replay) -> dict[str, Any] | str | None:
    """Run one example with ``checker``: ``None`` if it passes, its failure's fields, or why it
    could not run."""
    try:
        replay(checker)
    except pytest.skip.Exception as exc:
        return str(getattr(exc, "msg", exc)) or "skipped"
    except ReplayDiverged as exc:
        return str(exc)
    except (Exception, HangFailure) as exc:  # noqa: BLE001 - any failure is data here
        return failure_fields(exc)
    return None


def add_verdict(exc: BaseException, text: str) -> None:
    """Say ``text`` about the failure ``exc`` (a :class:`ConformanceFailure`'s ``verdict``, or a
    note on any other exception), in place."""
    failure = exc.failure if isinstance(exc, HangFailure) else exc
    if isinstance(failure, ConformanceFailure):
        failure.add_verdict(text)
    elif hasattr(exc, "add_note"):
        exc.add_note(f"verdict: {text}")
