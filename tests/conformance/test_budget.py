"""The run's time budget (``--ckpt-budget``): shares, the stop at an example's first step, the
``out of time`` outcome (never a pass), and failures shrunk whatever the time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ckptconf.conformance.kit.budget import Budget, OutOfTime, Share, parse_duration
from ckptconf.conformance.kit.profiles import property_test, resolve
from ckptconf.conformance.session import Session
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2.5m", 150), (" 1H ", 3600)],
)
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m", "1h 30m", "0", "0s", "-5"])
def test_a_bad_duration_names_the_text_and_the_forms(text):
    with pytest.raises(ValueError, match="time budget") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


def test_each_test_gets_what_is_left_divided_among_the_tests_left():
    now = time.monotonic()
    budget = Budget(100.0, 4, started=now)
    first = budget.share()
    assert 24.9 < first.seconds <= 25.0 and first.budget == 100.0
    assert budget.left == 3
    late = Budget(10.0, 2, started=now - 20)  # collection took longer than the budget
    assert late.share().seconds == 0.0


def test_under_xdist_a_worker_given_more_tests_than_its_part_still_shares_evenly():
    budget = Budget(100.0, 8, workers=4, started=time.monotonic())  # 2 tests a worker
    assert 49.9 < budget.share().seconds <= 50.0
    assert 99.9 < budget.share().seconds <= 100.0  # all that is left, to its last expected test
    extra = budget.share()  # a third test: an even share of the whole, not all that is left
    assert 49.9 < extra.seconds <= 50.0 and budget.left == 0


def _share(*, ended: bool) -> Share:
    return Share(seconds=1.0, deadline=-math.inf if ended else math.inf, budget=1.0)


def test_an_example_is_stopped_at_its_first_step_or_at_its_end_never_between():
    share = _share(ended=False)
    share.example_begins()
    share.step()
    share.deadline = -math.inf
    share.step()  # the example goes on to its end
    with pytest.raises(OutOfTime, match=r"ran 1 example\(s\)"):
        share.example_ends()  # counted, then stopped: no example after it
    assert share.out_of_time and share.examples == 1
    share = _share(ended=True)
    share.example_begins()
    with pytest.raises(OutOfTime, match=r"ran 0 example\(s\)"):
        share.step()
    share.example_ends()  # stopped already: not counted
    assert share.examples == 0


def test_after_a_failure_the_time_stops_nothing():
    share = _share(ended=True)
    share.failure_seen()
    share.example_begins()
    share.step()
    share.example_ends()
    assert share.examples == 1 and not share.out_of_time


_SESSION = Session()  # dev, unseeded


class _Ckpt:
    """What a property test's ``ckpt`` gives the budget: its share and session (no verdict, no
    backend)."""

    def __init__(self, share: Share, session: Session = _SESSION):
        self.share, self.verdict, self.backend, self.session = share, None, None, session


def _examples_test(
    calls: list[int], *, ends_after: int, fails_at: int | None = None, session=_SESSION
):
    class Suite:
        @property_test()
        def test(self, ckpt, data):
            data.draw(st.integers(0, 1000), label="n")
            calls.append(1)
            if len(calls) > ends_after:
                ckpt.share.deadline = -math.inf  # the share runs out now
            ckpt.share.step()  # what BudgetedRanks does before every step
            if fails_at is not None and len(calls) >= fails_at:
                raise AssertionError("planted failure")

    resolve(Suite.test, session)  # what the ckpt fixture does
    return Suite().test


def test_hypothesis_stops_drawing_at_the_first_example_past_the_share():
    calls: list[int] = []
    share = _share(ended=False)
    with pytest.raises(OutOfTime):  # not shrunk as a failure, not flaky data generation
        _examples_test(calls, ends_after=3)(ckpt=_Ckpt(share))
    assert share.examples == 3 and len(calls) == 4 and share.out_of_time  # the 4th stopped


def test_a_failure_found_within_the_share_is_shrunk_and_reported_past_it():
    calls: list[int] = []
    share = _share(ended=False)
    with pytest.raises(AssertionError, match="planted failure"):
        _examples_test(calls, ends_after=2, fails_at=2)(ckpt=_Ckpt(share))
    assert not share.out_of_time and len(calls) > 2  # shrinking and the final replay ran


def _run(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run", "--report", str(report)]
        + ["--profile", "ci", "--no-preflight", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return result, (json.loads(report.read_text()) if report.exists() else {})


@pytest.mark.multiprocess
def test_a_spent_budget_is_out_of_time_with_its_count_never_a_pass(tmp_path):
    selected = "test_dtype_round_trip and (float32 or bfloat16) or test_scalar_dtensors"
    result, report = _run("--budget", "0.001", "-k", selected, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {
        t["id"].split("::", 1)[1]: (t["outcome"], t.get("message")) for t in report["tests"]
    }
    assert outcomes == {
        "TestKinds::test_dtype_round_trip[float32]": (
            "out of time",
            "out of time: ran 0 example(s) (of up to 20) in this test's 0.0 s share of the "
            "0.001 s budget; not a pass",
        ),
        "TestKinds::test_dtype_round_trip[bfloat16]": (
            "out of time",
            "out of time: ran 0 example(s) (of up to 20) in this test's 0.0 s share of the "
            "0.001 s budget; not a pass",
        ),
        # no examples to stop: a test that is not drawn runs whole
        "TestAsyncSave::test_scalar_dtensors_changed_after_call_are_not_saved": ("passed", None),
    }
    assert "1 passed, 0 failed, 2 out of time (not passed" in result.stdout


def test_a_bad_budget_stops_the_run_before_any_test(tmp_path):
    result, report = _run("--budget", "soon", tmp_path=tmp_path)
    assert result.returncode == 2 and not report
    assert "--budget: time budget 'soon': expected seconds or a duration" in result.stdout


def test_an_example_stopped_by_the_budget_is_not_saved_as_a_failure(tmp_path):
    database = tmp_path / "examples"
    session = Session(profile="dev", database=str(database))
    calls: list[int] = []
    with pytest.raises(OutOfTime):
        _examples_test(calls, ends_after=3, session=session)(
            ckpt=_Ckpt(_share(ended=False), session)
        )
    assert len(calls) == 4
    assert not [p for p in database.rglob("*") if p.is_file()]  # nothing replays next time
    calls.clear()
    with pytest.raises(AssertionError, match="planted failure"):  # the database does work
        _examples_test(calls, ends_after=100, fails_at=2, session=session)(
            ckpt=_Ckpt(_share(ended=False), session)
        )
    assert [p for p in database.rglob("*") if p.is_file()]


def test_the_ci_profile_refuses_an_example_database(tmp_path):
    with pytest.raises(ValueError, match="the ci profile is derandomized and keeps no example"):
        Session(profile="ci", database=str(tmp_path))
