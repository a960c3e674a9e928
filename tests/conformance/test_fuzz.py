"""``ckptconf fuzz``: rounds of growing example counts and new seeds, distinct failures, the
example database kept in the campaign's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.conformance.fuzz import Campaign, failure_key, round_examples
from ckptconf.conformance.kit.profiles import profile_settings
from ckptconf.conformance.session import Session
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = Path(__file__).resolve().parents[2]


def test_each_round_doubles_the_examples_up_to_a_ceiling():
    assert [round_examples(n) for n in (1, 2, 3, 4)] == [40, 80, 160, 320]
    assert round_examples(40) == 100_000


def test_a_round_runs_the_suite_with_its_count_database_and_what_is_left(tmp_path):
    campaign = Campaign("torch-dcp", tmp_path, 600.0, select="TestPlans")
    command = campaign.command(3, 100.4)
    assert command[:4] == [sys.executable, "-m", "ckptconf.cli", "run"]
    after = command[command.index("--") + 1 :]
    # no --hypothesis-seed: hypothesis uses no example database in a seeded test
    assert after == ["--ckpt-max-examples", "160", "--ckpt-database", str(tmp_path / "examples")]
    before = command[: command.index("--")]
    for option, value in (
        ("--backend", "torch-dcp"),
        ("--profile", "dev"),
        ("--budget", "100s"),
        ("-k", "TestPlans"),
        ("--report", str(tmp_path / "round-3.json")),
    ):
        assert before[before.index(option) + 1] == value


def _failed(test_id: str, step: str, kind: str, error: str) -> dict:
    failure = {"step": step, "kind": kind, "errors": [error], "what": f"{step} broke"}
    return {"id": test_id, "outcome": "failed", "failure": failure}


def test_failures_are_the_same_whatever_their_paths_and_numbers():
    one = _failed("t.py::T::a", "load", "raised", "CheckpointError: load of /tmp/a/c7 failed at 12")
    other = _failed(
        "t.py::T::a", "load", "raised", "CheckpointError: load of /tmp/b/c9 failed at 3"
    )
    assert failure_key(one) == failure_key(other)
    s3 = _failed("t.py::T::a", "load", "raised", "CheckpointError: load of s3://b/k/c1 failed at 1")
    assert failure_key(s3) == failure_key(one)
    assert failure_key(one) != failure_key(_failed("t.py::T::a", "load", "raised", "OSError: x"))
    assert failure_key(one) != failure_key({**one, "id": "t.py::T::b"})
    assert failure_key(one) != failure_key(_failed("t.py::T::a", "save", "raised", "x"))


def test_failures_are_counted_once_and_printed_when_first_seen(tmp_path):
    same = _failed("t.py::T::a", "load", "raised", "ValueError: x\n  more")
    tests = [
        same,
        {**same, "failure": {**same["failure"], "errors": ["ValueError: x\n  other detail"]}},
        _failed("t.py::T::a", "load", "wrong_values", "rank 1, key 'w': expected 1, got 0"),
        _failed("t.py::T::b", "load", "raised", "ValueError: x"),
        {"id": "t.py::T::c", "outcome": "passed", "examples": 40},
        {"id": "t.py::T::d", "outcome": "out of time", "examples": 7},
    ]
    (tmp_path / "round-1.json").write_text(json.dumps({"tests": tests}))
    (tmp_path / "round-2.json").write_text(json.dumps({"tests": tests[2:4]}))
    said: list[str] = []
    campaign = Campaign("reference", tmp_path, 60.0)
    campaign._read(1, said.append)  # while the round runs
    campaign._finished(1, said.append, 12.0)
    campaign._finished(2, said.append, 9.0)
    assert said == [
        "  new failure: t.py::T::a: load broke",
        "  new failure: t.py::T::a: load broke",
        "  new failure: t.py::T::b: load broke",
        "round 1: 6 tests, 47 examples in 12 s, 1 stopped by the budget; 3 distinct failure(s) "
        "so far",
        "round 2: 2 tests, 0 examples in 9 s; 3 distinct failure(s) so far",
    ]
    assert [f.round for f in campaign.findings.values()] == [1, 1, 1]


def test_the_example_count_and_database_options_reach_the_profiles(tmp_path):
    chosen = profile_settings(
        Session(profile="dev", max_examples=123, database=str(tmp_path), seed=None)
    )
    assert chosen.max_examples == 123
    assert isinstance(chosen.database, DirectoryBasedExampleDatabase)
    assert Path(chosen.database.path) == tmp_path
    with pytest.raises(ValueError, match="--ckpt-max-examples 0: must be at least 1"):
        Session(profile="dev", max_examples=0)


@pytest.mark.multiprocess
def test_a_campaign_runs_rounds_until_its_budget_and_reports_them(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "fuzz", "--budget", "35s"]
        + ["--db", str(tmp_path / "fz"), "-k", "test_plans_are_deterministic"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fuzzing reference for 35 s; database and reports in ")
    assert lines[1].startswith("round 1: 40 examples a test, ")
    report = json.loads((tmp_path / "fz" / "round-1.json").read_text())
    (test,) = report["tests"]
    assert test["outcome"] in ("passed", "out of time") and test["examples"] >= 1
    assert any(line.startswith("round 1: 1 tests, ") for line in lines)
    assert lines[-1].endswith(
        " distinct failure(s); hypothesis' database: " + str(tmp_path / "fz" / "examples")
    )


def test_a_later_campaign_numbers_its_rounds_on_and_overwrites_no_report(tmp_path, monkeypatch):
    earlier = {"tests": [_failed("t.py::T::a", "load", "raised", "ValueError: x")]}
    for number in (1, 2):
        (tmp_path / f"round-{number}.json").write_text(json.dumps(earlier))
    ran: list[list[str]] = []

    def round_(self, number, seconds, say):
        ran.append(self.command(number, seconds))
        self.report(number).write_text(json.dumps({"tests": []}))
        raise KeyboardInterrupt  # Ctrl-C during the later campaign's first round

    monkeypatch.setattr(Campaign, "_round", round_)
    said: list[str] = []
    assert Campaign("reference", tmp_path, 600.0).run(said.append) == 0
    (command,) = ran
    # round 3, with the examples of a campaign's first round: rounds 1 and 2 keep their reports
    assert command[command.index("--report") + 1] == str(tmp_path / "round-3.json")
    assert command[command.index("--ckpt-max-examples") + 1] == "40"
    for number in (1, 2):
        assert json.loads((tmp_path / f"round-{number}.json").read_text()) == earlier
    assert said[1] == (
        "the folder holds earlier campaigns' reports up to round-2.json: this one's rounds go on "
        "from 3"
    )
    assert said[2].startswith("round 3: 40 examples a test, ")
    assert said[3:5] == [
        "stopped (Ctrl-C): the round's report keeps every test it finished",
        "round 3: 0 tests, 0 examples; 0 distinct failure(s) so far",
    ]
    assert said[5].startswith("1 round(s), 0 examples, 0 distinct failure(s); ")


def test_ctrl_c_again_while_a_round_stops_kills_it(monkeypatch):
    from ckptconf.conformance import fuzz

    # a round that takes its time to stop on SIGINT (here: ignores it)
    ignoring = "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); print(1)"
    process = subprocess.Popen(  # it waits for a signal, SIGKILL here
        [sys.executable, "-c", ignoring + "; import sys; sys.stdout.flush(); signal.pause()"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout.readline() == b"1\n"  # SIGINT ignored from now on
        waits: list[float | None] = []
        wait = process.wait

        def interrupted(timeout=None):
            waits.append(timeout)
            if len(waits) == 1:  # the grace wait: the user presses Ctrl-C again
                raise KeyboardInterrupt
            return wait(timeout)

        monkeypatch.setattr(process, "wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            fuzz._stop(process)
        assert waits[0] == fuzz.GRACE_SECONDS
        assert process.returncode == -9  # killed, not left running in its own session
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
