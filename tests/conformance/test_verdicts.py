"""The suite's verdicts on backends that once drew wrong ones: no false pass, no false failure,
no hang shrunk for minutes (the backends are in tests/planted/verdicts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.conformance import (
    Layout,
    SaveLoadCase,
    TensorSpec,
    check_save_then_load,
    select_backend,
)

from tests.planted.verdicts import ATTEMPTS

from .suite_runner import run_conformance

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_a_backend_whose_writer_starts_processes_round_trips():
    """Ranks are not daemonic: a writer may start a helper process on every rank."""
    case = SaveLoadCase(
        (TensorSpec("w", (4, 3), "float32"),),
        (Layout("dtensor", (2,), ("S0",)),),
        (Layout("dtensor", (2,), ("S1",)),),
        2,
        2,
    )
    check_save_then_load(select_backend("tests.planted.verdicts:starts_child_processes"), case)


@pytest.mark.multiprocess
def test_a_backend_that_cannot_plan_passes_no_test_expecting_an_error(tmp_path):
    """Every plan test that expects create_global_plan to raise also plans the valid
    counterpart: a planner factory that raises fails them, it does not pass them."""
    result, report = run_conformance(
        "tests.planted.verdicts:unbuildable_planner",
        "TestPlans and (rejects_broken or rejects_gap or test_accepts_valid_plans)",
        tmp_path,
    )
    outcomes = {t["id"].split("::")[-1]: t for t in report["tests"]}
    assert len(outcomes) == 8, result.stdout[-3000:]
    for name, test in outcomes.items():
        assert test["outcome"] == "failed", (name, test)
        assert "could not be made and set up" in test["failure"]["what"], test["failure"]
        assert "has no attribute 'SavePlanner'" in test["failure"]["details"]


@pytest.mark.multiprocess
def test_fault_tests_of_a_backend_without_injectable_storage_are_unsupported(tmp_path):
    """A whole-system backend whose save and load take no storage writer or reader: its
    fault tests can inject nothing, so each is unsupported (never passed or failed)."""
    result, report = run_conformance(
        "tests.planted.dcp_planners:whole_system", "TestFaults", tmp_path
    )
    assert report["tests"], result.stdout[-3000:]
    for test in report["tests"]:
        assert test["outcome"] == "unsupported", test
        assert "no fault can be injected" in test["message"], test


@pytest.mark.multiprocess
def test_corruption_tests_run_on_the_objects_a_backend_says_it_stored(tmp_path):
    """A backend that stores each checkpoint away from its path (as an object store does):
    without ``stored_objects`` a corruption test is unsupported, saying what to give; with it
    the corruption reaches those objects (DCP, without checksums, fails the flipped-bit test)."""
    result, report = run_conformance(
        "tests.planted.verdicts:stored_elsewhere", "test_short_read", tmp_path
    )
    (test,) = report["tests"]
    assert test["outcome"] == "unsupported", result.stdout[-3000:]
    assert "stored nothing found at files under" in test["message"], test
    assert "stored_objects" in test["message"], test
    spec = "tests.planted.verdicts:stored_elsewhere_listed"
    result, report = run_conformance(spec, "test_flipped_bit", tmp_path)
    (flipped,) = report["tests"]
    assert flipped["outcome"] == "failed", result.stdout[-3000:]
    assert "flipped" in flipped["failure"]["case"] + flipped["failure"]["details"], flipped


@pytest.mark.multiprocess
def test_a_hang_fails_its_test_once_unshrunk(tmp_path):
    attempts = tmp_path / "attempts"
    os.environ[ATTEMPTS] = str(attempts)
    try:
        result, report = run_conformance(
            "tests.planted.verdicts:hangs_on_save",
            "TestRoundTrip and test_round_trip_dtensor_on_two_ranks",
            tmp_path,
            # long enough for rank 1 to reach write_data on a loaded 2-core machine
            extra=["--ckpt-timeout", "10"],
        )
    finally:
        del os.environ[ATTEMPTS]
    (test,) = report["tests"]
    assert test["outcome"] == "failed", result.stdout[-3000:]
    failure = test["failure"]
    assert failure["what"].startswith("save hung: "), failure
    assert "_HangingWriter" in failure["details"] or "write_data" in failure["details"]
    assert failure["minimal_case"].startswith("(not shrunk: a hang is not re-run)")
    assert attempts.read_text() == "save\n"  # one attempt: hypothesis did not re-run the hang


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.multiprocess
def test_failures_inherited_from_dcp_are_reported_apart_and_do_not_fail_the_run(tmp_path):
    """A backend on DCP's planners fails what DCP fails: without the declaration those are its
    failures, with the hint to declare ``inherits`` only because DCP, run on the same example,
    fails it the same way; with ``inherits`` (or ``--inherit``) they are inherited failures and
    the exit code follows its own failures only."""
    selection = "TestPlans and size_mismatch and rejects"
    report = tmp_path / "plain.json"
    plain = _cli(
        "--backend",
        "tests.planted.verdicts:dcp_planners",
        "-k",
        selection,
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert plain.returncode == 0, plain.stdout[-3000:]  # a strict test: failed, not core
    (test,) = json.loads(report.read_text())["tests"]
    assert test["outcome"] == "failed"
    assert test["hint"].startswith("torch-dcp fails this example the same way (")
    assert "declare inherits='torch-dcp'" in plain.stdout
    again = _cli(
        "--backend",
        "tests.planted.verdicts:dcp_planners",
        "--lf",
        "--report",
        str(report),
        cwd=tmp_path,
    )  # only the failed test, by its node id
    assert "re-running the 1 test(s) that failed" in again.stdout, again.stdout[-2000:]
    assert [t["id"] for t in json.loads(report.read_text())["tests"]] == [test["id"]]
    # the backend's own ``inherits`` and ``--inherit`` take the same path from here on
    # (test_inherits_is_the_option_or_the_backends_own); one run checks it
    report = tmp_path / "inherited.json"
    result = _cli(
        "--backend",
        "tests.planted.verdicts:dcp_planners",
        "--inherit",
        "torch-dcp",
        "-k",
        selection,
        "--report",
        str(report),
        cwd=tmp_path,
    )
    data = json.loads(report.read_text())
    (test,) = data["tests"]
    assert test["outcome"] == "inherited", result.stdout[-3000:]
    assert test["message"].startswith("inherited from torch-dcp (")
    assert "example(s), torch-dcp.toml:" in test["message"]
    assert "ranks disagreeing on a key's global size" in test["message"]
    assert data["backend"]["inherits"] == "torch-dcp"
    assert result.returncode == 0


def test_inherits_is_the_option_or_the_backends_own():
    from types import SimpleNamespace

    from ckptconf.conformance.selection import inherited_from

    from tests.planted.verdicts import dcp_planners, dcp_planners_inheriting

    def config(option):
        return SimpleNamespace(getoption=lambda name: {"ckpt_inherit": option}[name])

    assert inherited_from(config(None), dcp_planners_inheriting()) == "torch-dcp"
    assert inherited_from(config(None), dcp_planners()) is None
    assert inherited_from(config("torch-dcp-hf"), dcp_planners_inheriting()) == "torch-dcp-hf"
    with pytest.raises(pytest.UsageError, match="'acme' is not a built-in backend"):
        inherited_from(config("acme"), dcp_planners())


@pytest.mark.multiprocess
def test_a_backend_that_cannot_save_stops_the_run_after_its_preflight(tmp_path):
    result = _cli(
        "--backend",
        "tests.planted.verdicts:fails_every_save",
        "--report",
        str(tmp_path / "r.json"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "preflight failed" in result.stdout
    assert "access denied to the bucket" in result.stdout
    assert not (tmp_path / "r.json").exists()  # no test ran


def test_a_bad_expectations_file_stops_ckptconf_run_naming_every_bad_entry(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[known]]\ntest = "kinds::test_gone"\nstep = "load"\nkind = "no_error"\n'
        'match = "x"\nreason = "no such test"\n'
        '[[known]]\ntest = "kinds::test_dtype_mismatch_raises"\nstep = "load"\n'
        'kind = "no_error"\nmatch = "("\nreason = "a bad pattern"\n'
    )
    result = _cli("--backend", "reference", "--expectations", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    assert f"{bad}:7: match '(' is no regular expression" in result.stdout
    missing = _cli("--backend", "reference", "--expectations", "nope.toml", cwd=tmp_path)
    assert missing.returncode == 2 and "nope.toml: no such expectations file" in missing.stdout
