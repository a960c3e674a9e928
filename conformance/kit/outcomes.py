"""The outcomes of a conformance test: one vocabulary for the live line, the JSON report, the
markdown, the backends page and class-style pytest runs.

An outcome is decided where the test ran, from typed data (the exception a test raised, the
known failures its examples matched), and travels with the test's report as its word; no
layer parses it back from a skip or xfail message.
"""

from __future__ import annotations

from enum import Enum

import pytest

__all__ = ["Outcome", "Unfinished", "Unsupported", "unsupported"]


class Outcome(str, Enum):
    """What became of one conformance test against one backend."""

    PASSED = "passed"
    """Every example held the contract."""
    FAILED = "failed"
    """An example broke the contract in a way no expectations entry names: the backend's own."""
    UNSUPPORTED = "unsupported"
    """The test needs a feature the backend declared unsupported, or cannot apply to it (the
    reason says which); never a pass."""
    EXPECTED = "expected"
    """Every failing example matched an entry of the backend's own expectations file."""
    INHERITED = "inherited"
    """Every failing example matched an entry of the backend's parent (``inherits``), and the
    parent failed that same example the same way in this run."""
    UNEXPECTED_PASS = "unexpected pass"
    """The backend's own expectations name a failure of this test, and no example failed so."""
    SKIPPED = "skipped"
    """The test could not run here (no GPU, an old torch): says nothing of the backend."""
    OUT_OF_TIME = "out of time"
    """The run's time budget (``--ckpt-budget``) ended the test before it drew every example:
    the examples it ran held the contract (or failed only as expected), which is not a pass."""

    def __str__(self) -> str:
        return self.value

    @property
    def letter(self) -> str:
        """The one-letter progress mark of class-style pytest runs."""
        return {
            Outcome.PASSED: ".",
            Outcome.FAILED: "F",
            Outcome.UNSUPPORTED: "u",
            Outcome.EXPECTED: "x",
            Outcome.INHERITED: "i",
            Outcome.UNEXPECTED_PASS: "X",
            Outcome.SKIPPED: "s",
            Outcome.OUT_OF_TIME: "t",
        }[self]


class Unsupported(pytest.skip.Exception):
    """A test that cannot apply to the backend: a feature it declared unsupported, or a step its
    interface does not allow (no storage to inject faults into, say). Raised by
    :func:`unsupported`; pytest counts it as a skip, the report as ``unsupported``."""

    def __init__(self, reason: str):
        super().__init__(msg=reason)
        self.reason = reason


def unsupported(reason: str) -> None:
    """Stop the running test as unsupported by the backend, saying why (``reason`` names what
    the backend lacks, e.g. ``"its checkpointer has no async_save"``)."""
    raise Unsupported(reason)


class Unfinished(pytest.skip.Exception):
    """A test the run's time budget stopped before it drew every example (``reason`` says how
    many it ran); pytest counts it as a skip, the report as ``out of time``."""

    def __init__(self, reason: str):
        super().__init__(msg=reason)
        self.reason = reason
