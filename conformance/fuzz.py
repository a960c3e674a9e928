"""A fuzzing campaign: ``ckptconf fuzz --backend NAME --budget 2h --db FOLDER``.

Runs the chosen suites round after round until the budget is spent, each round in a fresh
process (``ckptconf run``'s pytest session) with a new random seed and twice the examples of
the round before (40, 80, 160, ... per test; tests that draw a share of the count, such as a
third per storage hook, draw that share). Every round keeps hypothesis' example database in
``FOLDER/examples``: a failing example found once is saved there and replayed first by every
later round, and by a later campaign on the same folder, so nothing found is lost. Each
round's JSON report goes to ``FOLDER/round-N.json``; distinct failures (test, step, kind,
first error or headline) are printed as they appear. Ctrl-C stops the round in progress: its
report keeps every test it finished (the report is rewritten after each test), and the
summary is printed.

Coverage guidance (HypoFuzz) is not used: the suites' work runs in rank processes that an
in-process coverage tracer does not see, so it would guide by the controller's branches only.
"""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Campaign", "Finding", "failure_key", "round_examples"]

FIRST_EXAMPLES = 40
"""Examples per test in the first round (the dev profile's count); each round doubles it."""
MOST_EXAMPLES = 100_000


def round_examples(number: int) -> int:
    """Examples per test in round ``number`` (1-based): 40, 80, 160, ... up to 100,000."""
    return min(MOST_EXAMPLES, FIRST_EXAMPLES * 2 ** (number - 1))


def failure_key(test: dict[str, Any]) -> tuple[str, ...]:
    """What makes two failed tests of a report the same failure: the test, the failing step,
    its kind and its first error (or headline)."""
    failure = test.get("failure") or {}
    errors = failure.get("errors") or [failure.get("what") or test.get("error") or ""]
    first = str(errors[0]).split("\n", 1)[0][:200]
    return (test["id"], str(failure.get("step")), str(failure.get("kind")), first)


@dataclass
class Finding:
    """A distinct failure and where it was first seen."""

    key: tuple[str, ...]
    round: int
    report: str
    what: str


@dataclass
class Campaign:
    """A campaign's settings and what it found (see the module docstring)."""

    backend: str
    folder: Path
    budget: float
    """Seconds for the whole campaign."""
    select: str | None = None
    """A pytest ``-k`` expression choosing the tests (e.g. ``"TestPlans or TestResharding"``)."""
    seed: int | None = None
    """The seed of the seeds each round draws (default: random)."""
    extra: Sequence[str] = ()
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    rounds: int = 0
    examples: int = 0

    def command(self, number: int, seed: int, seconds: float) -> list[str]:
        """The ``ckptconf run`` command of round ``number``."""
        parts = [sys.executable, "-m", "ckptconf.conformance.cli", "run"]
        parts += ["--backend", self.backend, "--profile", "dev", "--no-preflight"]
        parts += ["--report", str(self.folder / f"round-{number}.json")]
        parts += ["--budget", f"{max(1.0, seconds):.0f}s"]
        if self.select:
            parts += ["-k", self.select]
        parts += ["--", "--hypothesis-seed", str(seed)]
        parts += ["--ckpt-max-examples", str(round_examples(number))]
        parts += ["--ckpt-database", str(self.folder / "examples"), *self.extra]
        return parts

    def run(self, say: Callable[[str], None] = print) -> int:
        """Run rounds until the budget is spent or Ctrl-C; 1 if any failure was found, else 0."""
        self.folder.mkdir(parents=True, exist_ok=True)
        draw = random.Random(self.seed)
        end = time.monotonic() + self.budget
        say(
            f"fuzzing {self.backend} for {self.budget:.0f} s; database and reports in {self.folder} "
            "(Ctrl-C stops and keeps everything found)"
        )
        try:
            while time.monotonic() < end - 15:  # a round needs seconds to start
                self.rounds += 1
                number, seed = self.rounds, draw.randrange(2**32)
                began = time.monotonic()
                say(
                    f"round {number}: {round_examples(number)} examples a test, seed {seed}, "
                    f"{end - began:.0f} s left"
                )
                status = self._round(self.command(number, seed, end - began))
                self._read(number, say, time.monotonic() - began)
                if status not in (0, 1):
                    say(f"round {number} stopped with exit status {status}: see its output above")
                    break
        except KeyboardInterrupt:
            say("stopped (Ctrl-C): the round's report keeps every test it finished")
            self._read(self.rounds, say, None)
        self._summary(say)
        return 1 if self.findings else 0

    def _round(self, command: list[str]) -> int:
        """Run one round; on Ctrl-C, let it stop itself (pytest writes what it has) first."""
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, errors = process.communicate()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)  # the terminal sent it too; once is enough
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        if process.returncode not in (0, 1) and errors:
            sys.stderr.write(errors.decode(errors="replace")[-4000:])
        return process.returncode

    def _read(self, number: int, say: Callable[[str], None], seconds: float | None) -> None:
        path = self.folder / f"round-{number}.json"
        if not path.exists():
            return
        tests = json.loads(path.read_text()).get("tests", [])
        examples = sum(t.get("examples") or 0 for t in tests)
        self.examples += examples
        new = []
        for test in tests:
            if test["outcome"] != "failed":
                continue
            key = failure_key(test)
            if key not in self.findings:
                what = (test.get("failure") or {}).get("what") or test.get("error") or ""
                self.findings[key] = Finding(key, number, str(path), str(what)[:200])
                new.append(self.findings[key])
        late = sum(1 for t in tests if t["outcome"] == "out of time")
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        say(
            f"round {number}: {len(tests)} tests, {examples} examples{took}"
            + (f", {late} stopped by the budget" if late else "")
            + f"; {len(self.findings)} distinct failure(s), {len(new)} new"
        )
        for finding in new:
            say(f"  new: {finding.key[0]}: {finding.what}")

    def _summary(self, say: Callable[[str], None]) -> None:
        say(
            f"{self.rounds} round(s), {self.examples} examples, {len(self.findings)} distinct "
            f"failure(s); hypothesis' database: {self.folder / 'examples'}"
        )
        for finding in self.findings.values():
            say(f"  {finding.key[0]} (round {finding.round}, {finding.report}): {finding.what}")
        if self.findings:
            again = [sys.executable, "-m", "ckptconf.conformance.cli", "run"]
            again += ["--backend", self.backend, "--profile", "dev"]
            again += ["--", "--ckpt-database", str(self.folder / "examples")]
            say(f"replay them (the database's examples run first): {shlex.join(again)}")
