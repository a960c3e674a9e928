"""The suite's verdicts on backends that once drew wrong ones: no false pass, no false failure,
no hang shrunk for minutes (the backends are in tests/planted/verdicts.py)."""

from __future__ import annotations

import os

import pytest
from ckptconf.conformance import (
    Layout,
    SaveLoadCase,
    TensorSpec,
    check_save_then_load,
    load_backend,
)

from tests.planted.verdicts import ATTEMPTS

from .suite_runner import run_conformance


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
    check_save_then_load(load_backend("tests.planted.verdicts:starts_child_processes"), case)


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
def test_a_hang_fails_its_test_once_unshrunk(tmp_path):
    attempts = tmp_path / "attempts"
    os.environ[ATTEMPTS] = str(attempts)
    try:
        result, report = run_conformance(
            "tests.planted.verdicts:hangs_on_save",
            "TestRoundTrip and test_round_trip_dtensor_on_two_ranks",
            tmp_path,
            extra=["--ckpt-timeout", "5"],
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
