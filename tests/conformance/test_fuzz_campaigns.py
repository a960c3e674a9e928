"""``ckptconf fuzz`` end to end, through the real command: Ctrl-C keeps what a campaign found,
and a later campaign on the same folder replays every failure found first.

The backend is planted here (a ``module:attr`` the command imports, as ``tests/planted``'s are):
its save planner leaves three-dimensional tensors out of the checkpoint's metadata, a bug the
plans suite's ``test_metadata_covers_the_state`` meets in a third of its drawn cases but never
in the simplest one, which hypothesis draws first. With ``CKPTCONF_FUZZ_LOG`` set, every global
plan it makes appends a line to that file, ``3d`` or ``-``: which case a round planned first.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ckptconf.conformance import Backend
from ckptconf.conformance.fuzz import failure_key
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan

from tests.planted._common import HookedSavePlanner, planted_backend

ROOT = Path(__file__).resolve().parents[2]
SPEC = "tests.conformance.test_fuzz_campaigns:three_d_tensors_left_out"
TEST = "test_metadata_covers_the_state"


# --- the planted backend -------------------------------------------------------------------


def _three_d(plans: list[SavePlan]) -> list[str]:
    return sorted(
        {
            item.index.fqn
            for plan in plans
            for item in plan.items
            if item.tensor_data is not None and len(item.tensor_data.size) == 3
        }
    )


class ThreeDLeftOutPlanner(HookedSavePlanner):
    """Builds the metadata without the entries of three-dimensional tensors."""

    def metadata_for(self, plans: list[SavePlan], paths: dict[str, Any]) -> Metadata:
        metadata = super().metadata_for(plans, paths)
        left_out = _three_d(plans)
        log = os.environ.get("CKPTCONF_FUZZ_LOG")
        if log:
            with open(log, "a") as file:
                file.write("3d\n" if left_out else "-\n")
        for fqn in left_out:
            metadata.state_dict_metadata.pop(fqn, None)
        return metadata

    def plan_problems(self, plans: list[SavePlan], metadata: Metadata) -> list[str]:
        return []  # the reference's validation would name the missing entries


def three_d_tensors_left_out() -> Backend:
    """The reference with a save planner whose metadata omits three-dimensional tensors."""
    return planted_backend(
        "three_d_tensors_left_out",
        "the checkpoint's metadata has no entry for a three-dimensional tensor",
        save_planner=ThreeDLeftOutPlanner,
    )


# --- running the command -------------------------------------------------------------------


class Campaign:
    """``ckptconf fuzz`` running in its own process group, as a terminal's foreground job."""

    def __init__(self, folder: Path, budget: str, select: str, log: Path):
        self.folder = folder
        self.errors = log.with_suffix(".stderr")  # a file: a pipe nobody reads could fill
        env = {**os.environ, "CKPTCONF_FUZZ_LOG": str(log), "COLUMNS": "200"}
        with self.errors.open("w") as errors:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ckptconf.cli", "fuzz", "--backend", SPEC]
                + ["--budget", budget, "--db", str(folder), "-k", select],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,
                # as a terminal's foreground job: SIGINT stops it even where this test runs
                # with SIGINT ignored (in a script's background job), which children inherit
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        with self.process.stdout:
            for line in self.process.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first line starting with ``prefix`` (read as the command prints it)."""
        end = time.monotonic() + timeout
        seen = next((line for line in self.lines if line.startswith(prefix)), None)
        while seen is None:
            try:
                line = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                self.fail(f"no line starting with {prefix!r} in {timeout:.0f} s")
            if line is None:
                self.fail(f"the command ended before a line starting with {prefix!r}")
            self.lines.append(line)
            if line.startswith(prefix):
                seen = line
        return seen

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def finish(self, timeout: float) -> tuple[int, str]:
        """The exit status and stderr, once the command ended (within ``timeout``)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"still running after {timeout:.0f} s")
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return self.process.returncode, self.errors.read_text()

    def fail(self, why: str) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in rounds_running(self.folder):  # a round runs in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while True:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        stdout = "\n".join(self.lines)
        pytest.fail(
            f"ckptconf fuzz: {why}\n--- stdout\n{stdout}\n--- stderr\n{self.errors.read_text()}"
        )


def rounds_running(folder: Path) -> list[int]:
    """The processes whose command line names ``folder``: the rounds (``ckptconf run``) of a
    campaign on it, and their workers."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(folder).encode() in word for word in words):
            pids.append(int(entry.name))
    return pids


def wait_for_failure(campaign: Campaign, report: Path, test: str, timeout: float) -> dict:
    """The first failed ``test`` in the JSON ``report`` of a running round, polled."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            tests = json.loads(report.read_text())["tests"]
        except (OSError, ValueError, KeyError):
            tests = []
        failed = [t for t in tests if t["outcome"] == "failed" and t["id"].endswith(f"::{test}")]
        if failed:
            return failed[0]
        if campaign.process.poll() is not None:
            campaign.fail(f"the command ended before {report} had {test} failed")
        time.sleep(0.2)
    campaign.fail(f"{report} had no failed {test} after {timeout:.0f} s")
    raise AssertionError  # not reached


def summary(lines: list[str], folder: Path) -> tuple[int, int]:
    """The rounds and distinct failures of a campaign's summary line."""
    pattern = (
        r"(\d+) round\(s\), \d+ examples, (\d+) distinct failure\(s\); hypothesis' database: "
        + re.escape(str(folder / "examples"))
    )
    found = [m for line in lines if (m := re.fullmatch(pattern, line))]
    assert len(found) == 1, lines
    return int(found[0][1]), int(found[0][2])


@pytest.fixture
def folder(tmp_path):
    """A campaign's folder; what still runs on it at the end of the test is killed."""
    yield tmp_path / "fz"
    for pid in rounds_running(tmp_path / "fz"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


FINDING = "test_plans.py::TestPlans::test_metadata_covers_the_state"
WHAT = "the global plan's metadata does not describe the saved state"


@pytest.mark.slow
def test_ctrl_c_stops_a_campaign_and_keeps_what_it_found(tmp_path, folder):
    # a round of a failing test, then a slower passing one: Ctrl-C comes as soon as the
    # report shows the failure, while the round goes on
    campaign = Campaign(folder, "10m", f"{TEST} or test_plans_at_scale", tmp_path / "plans.log")
    campaign.wait_for_line("round 1: 40 examples a test, ", timeout=60)
    wait_for_failure(
        campaign, folder / "round-1.json", TEST, timeout=240
    )  # three xdist workers on two cores: slow
    campaign.interrupt()
    status, errors = campaign.finish(timeout=90)
    lines = campaign.lines
    assert status == 1, lines  # a failure was found
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors
    stop = lines.index("stopped (Ctrl-C): the round's report keeps every test it finished")
    after = lines[stop + 1 :]
    # what the stopped round finished, then the summary
    pattern = r"round \d+: \d+ tests, \d+ examples; \d+ distinct failure\(s\) so far"
    assert any(re.fullmatch(pattern, line) for line in after), lines
    rounds, failures = summary(after, folder)
    assert rounds >= 1 and failures >= 1
    assert f"  {FINDING} (round 1, {folder / 'round-1.json'}): {WHAT}" in after
    assert any(
        line.startswith("replay them (the database's examples run first): ") for line in after
    )
    # the folder keeps round 1's report, its failure and the example database
    report = json.loads((folder / "round-1.json").read_text())
    failed = [t for t in report["tests"] if t["id"] == FINDING]
    assert failed and failed[0]["outcome"] == "failed", report
    assert "shape=(" in failed[0]["failure"]["minimal_case"]
    assert any(p.is_file() for p in (folder / "examples").rglob("*"))
    # the round in progress was stopped, not left running in its own session
    assert rounds_running(folder) == []


@pytest.mark.slow
# in CI, test_fuzz.py's units check that the database reaches the rounds and that a later
# campaign numbers its rounds on; this one checks hypothesis' replay end to end (two campaigns)
@pytest.mark.not_in_ci
def test_a_later_campaign_replays_what_an_earlier_one_found_first(tmp_path, folder):
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # 18 s: one round (the next would start only with 15 s left)
    first = Campaign(folder, "18s", TEST, first_log)
    status, errors = first.finish(timeout=90)
    assert status == 1, (first.lines, errors)
    (found,) = [t for t in json.loads((folder / "round-1.json").read_text())["tests"]]
    assert found["outcome"] == "failed", found
    key = failure_key(found)
    drawn = first_log.read_text().split()
    # hypothesis drew the simplest case first, which has no 3-D tensor, and found one later
    assert drawn[0] == "-" and "3d" in drawn, drawn
    saved = [p for p in (folder / "examples").rglob("*") if p.is_file()]
    assert saved

    second = Campaign(folder, "18s", TEST, second_log)
    status, errors = second.finish(timeout=90)
    assert status == 1, (second.lines, errors)
    # its first round, numbered on from the first campaign's, draws as a first round does
    assert second.lines[1] == (
        "the folder holds earlier campaigns' reports up to round-1.json: this one's rounds go on "
        "from 2"
    ), second.lines
    assert second.lines[2].startswith("round 2: 40 examples a test, "), second.lines
    (again,) = json.loads((folder / "round-2.json").read_text())["tests"]
    assert again["outcome"] == "failed" and failure_key(again) == key, again
    assert f"  {FINDING} (round 2, {folder / 'round-2.json'}): {WHAT}" in second.lines
    # the first case the second campaign's round planned was the one found: from the database,
    # since a fresh draw begins with the simplest case
    assert second_log.read_text().split()[0] == "3d"
    assert again["examples"] < found["examples"], (again, found)
    # and the first campaign's report is still there
    assert json.loads((folder / "round-1.json").read_text())["tests"] == [found]
