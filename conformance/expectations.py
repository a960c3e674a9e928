"""Expectations files: known failures of a backend, each with a reason.

One entry a line: a test id prefix, then ``#`` and the reason::

    # torch DCP saves only the first offset of a non-contiguous _StridedShard shard
    test_roundtrip.py::TestRoundTrip::test_round_trip_strided  # DCP records one offset per strided shard

Ids are ``module.py::Class::test`` (parameters may follow), whatever directory pytest
ran from. An entry matching no collected test is reported, so the file cannot go stale
silently. A listed test that passes is reported as an "unexpected pass" (not a failure),
unless its reason starts with ``when drawn:``: a property test whose failing cases a run
draws only now and then (the finding pinned, every run, by a test of its own) passes in
the runs that draw none, and that pass says nothing about the entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["WHEN_DRAWN", "Expectation", "Expectations", "ExpectationsError"]


class ExpectationsError(ValueError):
    """An expectations file is malformed."""


WHEN_DRAWN = "when drawn:"
"""How the reason of an entry starts whose test fails only in runs that draw a failing case."""


@dataclass(frozen=True)
class Expectation:
    """A known failure: tests whose id starts with ``prefix`` fail, because ``reason``."""

    prefix: str
    reason: str
    line: int = 0

    @property
    def when_drawn(self) -> bool:
        """Whether the test fails only in the runs that draw a failing case."""
        return self.reason.startswith(WHEN_DRAWN)


class Expectations:
    """The entries of one file, matched by longest prefix."""

    def __init__(self, entries: list[Expectation], source: str = "<none>"):
        self.entries = sorted(entries, key=lambda e: -len(e.prefix))
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> Expectations:
        """Parse ``path``; a missing file means no known failures."""
        path = Path(path)
        if not path.exists():
            return cls([], str(path))
        entries = []
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            prefix, sep, reason = line.partition("#")
            if not sep or not reason.strip():
                raise ExpectationsError(
                    f"{path}:{number}: an entry needs a reason after '#': {raw!r}"
                )
            entries.append(Expectation(prefix.strip(), reason.strip(), number))
        return cls(entries, str(path))

    def match(self, test_id: str) -> Expectation | None:
        """The entry covering ``test_id``, if any."""
        return next((e for e in self.entries if test_id.startswith(e.prefix)), None)

    def unmatched(self, test_ids: list[str]) -> list[str]:
        """Entries (as ``file:line prefix``) that match none of ``test_ids``."""
        return [
            f"{self.source}:{e.line} {e.prefix}"
            for e in self.entries
            if not any(t.startswith(e.prefix) for t in test_ids)
        ]
