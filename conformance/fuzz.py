"""A fuzzing campaign: ``ckptconf fuzz --backend NAME --budget 2h --db FOLDER``.

Runs the chosen suites round after round until the budget is spent, each round in a fresh
process (``ckptconf run``'s pytest session) with hypothesis' own random seed and twice the
examples of the round before (40, 80, 160, ... per test; tests that draw a share of the count,
such as a third per storage hook, draw that share). Every round keeps hypothesis' example
database in ``FOLDER/examples``: a failing example found once is saved there and replayed
first by every later round, and by a later campaign on the same folder, so nothing found is
lost (hypothesis uses no database in a seeded test, so rounds are not seeded). Each round's
JSON report goes to ``FOLDER/round-N.json``, rewritten after every test; a later campaign on the
folder numbers its rounds on from the last report there (its examples start again at 40), so
it overwrites no report of an earlier one. The campaign reads the report as the round runs and
prints each distinct failure (test, step, kind and the error's type, with paths and numbers
left out) when it first appears. Ctrl-C stops the round in progress, which keeps every test it
finished, and prints the summary; so does the end of the budget (a round running past it is
stopped after a minute's grace).

Coverage guidance (HypoFuzz) is not used: the suites' work runs in rank processes that an
in-process coverage tracer does not see, so it would guide by the controller's branches only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Campaign", "Finding", "failure_key", "round_examples"]

FIRST_EXAMPLES = 40
"""Examples per test in the first round (the dev profile's count); each round doubles it."""
MOST_EXAMPLES = 100_000
POLL_SECONDS = 5.0
"""How often a running round's report is read for new failures."""
GRACE_SECONDS = 60.0
"""How long a round may run past the campaign's end (or after Ctrl-C) before it is killed."""


def round_examples(number: int) -> int:
    """Examples per test in round ``number`` (1-based): 40, 80, 160, ... up to 100,000."""
    return min(MOST_EXAMPLES, FIRST_EXAMPLES * 2 ** (number - 1))


def failure_key(test: dict[str, Any]) -> tuple[str, ...]:
    """What makes two failed tests of reports the same failure: the test, the failing step, its
    kind and its first error (or headline) with paths and numbers left out, since they differ
    from one example and one run to the next."""
    failure = test.get("failure") or {}
    errors = failure.get("errors") or [failure.get("what") or test.get("error") or ""]
    first = str(errors[0]).split("\n", 1)[0]
    first = re.sub(r"\d+", "N", re.sub(r"(?:[A-Za-z][\w+.-]*://|/)[^\s'\"]*", "<path>", first))
    return (test["id"], str(failure.get("step")), str(failure.get("kind")), first[:200])


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
    extra: Sequence[str] = ()
    findings: dict[tuple[str, ...], Finding] = field(default_factory=dict)
    rounds: int = 0
    """Rounds this campaign ran."""
    first: int = 1
    """The number of this campaign's first round: one after the folder's last report."""
    examples: int = 0

    def command(self, number: int, seconds: float) -> list[str]:
        """The ``ckptconf run`` command of round ``number``, given ``seconds``: the examples of
        this campaign's ``number - first + 1``-th round."""
        parts = [sys.executable, "-m", "ckptconf.cli", "run"]
        parts += ["--backend", self.backend, "--profile", "dev", "--no-preflight"]
        parts += ["--report", str(self.report(number))]
        parts += ["--budget", f"{max(1.0, seconds):.0f}s"]
        if self.select:
            parts += ["-k", self.select]
        parts += ["--", "--ckpt-max-examples", str(self.round_examples(number))]
        parts += ["--ckpt-database", str(self.folder / "examples"), *self.extra]
        return parts

    def round_examples(self, number: int) -> int:
        """Examples per test in round ``number``: a campaign's first round draws 40."""
        return round_examples(number - self.first + 1)

    def earlier_rounds(self) -> int:
        """The last round number of a report in the folder (earlier campaigns'), 0 if none."""
        names = (re.fullmatch(r"round-(\d+)\.json", p.name) for p in self.folder.iterdir())
        return max((int(m[1]) for m in names if m), default=0)

    def report(self, number: int) -> Path:
        """Where round ``number`` writes its JSON report."""
        return self.folder / f"round-{number}.json"

    def run(self, say: Callable[[str], None] = print) -> int:
        """Run rounds until the budget is spent or Ctrl-C; 1 if any failure was found, else 0."""
        self.folder.mkdir(parents=True, exist_ok=True)
        end = time.monotonic() + self.budget
        self.first = self.earlier_rounds() + 1
        say(
            f"fuzzing {self.backend} for {self.budget:.0f} s; database and reports in {self.folder} "
            "(Ctrl-C stops and keeps everything found)"
        )
        if self.first > 1:
            say(
                f"the folder holds earlier campaigns' reports up to round-{self.first - 1}.json: "
                f"this one's rounds go on from {self.first}"
            )
        number = 0
        try:
            while time.monotonic() < end - 15:  # a round needs seconds to start
                number, began = self.first + self.rounds, time.monotonic()
                self.rounds += 1
                say(
                    f"round {number}: {self.round_examples(number)} examples a test, "
                    f"{end - began:.0f} s left"
                )
                status = self._round(number, end - began, say)
                self._finished(number, say, time.monotonic() - began)
                if status not in (0, 1):
                    say(f"round {number} stopped with exit status {status}")
                    break
        except KeyboardInterrupt:
            say("stopped (Ctrl-C): the round's report keeps every test it finished")
            if number:
                self._finished(number, say, None)
        self._summary(say)
        return 1 if self.findings else 0

    def _round(self, number: int, seconds: float, say: Callable[[str], None]) -> int:
        """Run round ``number``, printing new failures from its report as they appear; stopped
        (SIGINT, then SIGKILL) a minute after ``seconds``, or at once on Ctrl-C."""
        process = subprocess.Popen(
            self.command(number, seconds),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the campaign, which stops the round once
        )
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
        drain.start()
        deadline = time.monotonic() + seconds + GRACE_SECONDS
        try:
            while process.poll() is None:
                try:
                    process.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    self._read(number, say)
                if time.monotonic() > deadline:
                    say(f"round {number} ran past the budget: stopping it")
                    _stop(process)
        except KeyboardInterrupt:
            say(f"stopping round {number} (Ctrl-C again kills it)")
            _stop(process)
            raise
        drain.join(timeout=10)
        text = b"".join(errors).decode(errors="replace")
        if process.returncode not in (0, 1) and text:
            sys.stderr.write(text[-4000:])
        return process.returncode

    def _read(self, number: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
        """Round ``number``'s tests so far; new distinct failures are recorded and printed."""
        path = self.report(number)
        try:
            tests = json.loads(path.read_text()).get("tests", [])
        except (OSError, ValueError):  # not written yet, or being rewritten
            return []
        for test in tests:
            if test["outcome"] != "failed":
                continue
            key = failure_key(test)
            if key not in self.findings:
                what = (test.get("failure") or {}).get("what") or test.get("error") or ""
                self.findings[key] = Finding(key, number, str(path), str(what)[:200])
                say(f"  new failure: {key[0]}: {self.findings[key].what}")
        return tests

    def _finished(self, number: int, say: Callable[[str], None], seconds: float | None) -> None:
        tests = self._read(number, say)
        examples = sum(t.get("examples") or 0 for t in tests)
        self.examples += examples
        late = sum(1 for t in tests if t["outcome"] == "out of time")
        took = f" in {seconds:.0f} s" if seconds is not None else ""
        say(
            f"round {number}: {len(tests)} tests, {examples} examples{took}"
            + (f", {late} stopped by the budget" if late else "")
            + f"; {len(self.findings)} distinct failure(s) so far"
        )

    def _summary(self, say: Callable[[str], None]) -> None:
        say(
            f"{self.rounds} round(s), {self.examples} examples, {len(self.findings)} distinct "
            f"failure(s); hypothesis' database: {self.folder / 'examples'}"
        )
        for finding in self.findings.values():
            say(f"  {finding.key[0]} (round {finding.round}, {finding.report}): {finding.what}")
        if self.findings:
            again = [sys.executable, "-m", "ckptconf.cli", "run"]
            again += ["--backend", self.backend, "--profile", "dev"]
            again += ["--", "--ckpt-database", str(self.folder / "examples")]
            say(f"replay them (the database's examples run first): {shlex.join(again)}")


def _stop(process: subprocess.Popen) -> None:
    """Ask a round to stop as Ctrl-C would (it writes its report), then kill it (and what it
    started) if it runs past the grace, or at once on another Ctrl-C: the round runs in a
    session of its own, which the terminal's Ctrl-C does not reach."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _kill(process)
    except KeyboardInterrupt:
        _kill(process)
        raise


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
