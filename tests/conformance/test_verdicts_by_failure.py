"""Verdicts by failure, end to end: backends built on DCP that declare ``inherits="torch-dcp"``
get DCP's known failures as inherited and their own as their own, even where the two meet in
one test (the backends are in tests/planted/verdicts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .suite_runner import run_conformance

ROOT = Path(__file__).resolve().parents[2]

PLACEMENT = "TestResharding and test_placement_change"


def _tests(report: dict) -> dict[str, dict]:
    return {t["id"].split("::")[-1]: t for t in report["tests"]}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_an_own_defect_behind_a_dcp_failure_in_the_same_test_is_the_backends_own(tmp_path):
    """test_placement_change: DCP fails its pinned ShardedTensor example on 3 ranks (shards past
    the end); drawing goes on and finds the backend's own resharding read one row early on 4."""
    result, report = run_conformance("tests.planted.verdicts:dcp_row_offset", PLACEMENT, tmp_path)
    test = _tests(report)["test_placement_change"]
    assert test["outcome"] == "failed", result.stdout[-3000:]
    failure = test["failure"]
    assert (failure["step"], failure["kind"]) == ("load", "wrong_values"), failure
    (known,) = test["known"]
    assert known["origin"] == "torch-dcp" and known["count"] >= 1, known
    assert "out of bounds chunk" in known["signature"]
    assert result.returncode == 1  # a core test failed: the run fails


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_failure_resembling_dcps_is_the_backends_own(tmp_path):
    """Empty trailing ShardedTensor shards rejected with another message than DCP's: the entry
    does not match, and the failure is the backend's, in a test DCP fails at the same step."""
    result, report = run_conformance(
        "tests.planted.verdicts:dcp_resembling_error",
        "TestRoundTrip and test_round_trip_sharded_tensor_on_two_ranks",
        tmp_path,
    )
    (test,) = report["tests"]
    assert test["outcome"] == "failed", result.stdout[-3000:]
    failure = test["failure"]
    assert (failure["step"], failure["kind"]) == ("save", "raised")
    assert "out of range chunk" in "\n".join(failure["errors"])
    assert "known" not in test  # DCP's own failure never came: this backend fails first


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_hang_where_dcp_raises_is_the_backends_own(tmp_path):
    """test_round_trip_strided_shard: DCP's known failure is an exception at save; this backend
    hangs on 4 ranks, a failure no entry names."""
    result, report = run_conformance(
        "tests.planted.verdicts:dcp_hangs_on_four",
        "TestRoundTrip and test_round_trip_strided_shard",
        tmp_path,
        extra=["--ckpt-timeout", "15"],
    )
    (test,) = report["tests"]
    assert test["outcome"] == "failed", result.stdout[-3000:]
    assert test["failure"]["kind"] == "hang", test["failure"]
    assert test["failure"]["what"].startswith("save hung")


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_storage_of_its_own_does_not_inherit_dcps_storage_failures(tmp_path):
    """A backend on DCP's planners and driver with storage classes of its own that rewrite files
    in place: a failed save loses the previous checkpoint exactly as DCP's does, and DCP's
    entries for it (part "storage") match, yet the failure is the backend's own; DCP's planner
    failures stay inherited."""
    selection = (
        "(TestFaults and test_failed_save_keeps_the_previous_checkpoint and finish) or "
        "(TestKinds and int_keys)"
    )
    result, report = run_conformance(
        "tests.planted.verdicts:own_storage_in_place", selection, tmp_path
    )
    outcomes = {name: t["outcome"] for name, t in _tests(report).items()}
    assert outcomes == {
        "test_failed_save_keeps_the_previous_checkpoint[finish]": "failed",
        "test_int_keys_keep_their_type": "inherited",
    }, result.stdout[-3000:]
    parts = report["backend"]["inherited_parts"]
    assert parts["taken"] == ["driver", "planner", "staging"], parts
    assert parts["why"]["storage"] == (
        "_InPlaceWriter is no FileSystemWriter; _InPlaceReader is no FileSystemReader"
    )


# what DCP fails in this selection, each test with the entries (torch-dcp.toml lines) it meets
SELECTION = (
    "(TestRoundTrip and (sharded_tensor or strided)) or (TestKinds and (int_keys or "
    "unexpected_key)) or (TestPlans and gap_on_one)"
)


def _dcp_checks_one_rank_coverage() -> bool:
    """Whether this torch's ``_validate_global_plan`` checks that a single rank's plan covers
    its tensors: torch 2.6 does, so DCP passes test_rejects_gap_on_one_rank there; 2.13 skips
    the check for one rank (the known failure torch-dcp.toml names)."""
    import torch
    from ckptconf.reference.compat import dcp_validation_errors
    from torch.distributed.checkpoint.default_planner import _validate_global_plan
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        Metadata,
        TensorProperties,
        TensorStorageMetadata,
    )
    from torch.distributed.checkpoint.planner import SavePlan

    half = ChunkStorageMetadata(offsets=torch.Size([0]), sizes=torch.Size([1]))
    entry = TensorStorageMetadata(TensorProperties(dtype=torch.float32), torch.Size([2]), [half])
    return bool(
        dcp_validation_errors(_validate_global_plan([SavePlan([])], Metadata({"t": entry})))
    )


PASSED = {"test_rejects_gap_on_one_rank"} if _dcp_checks_one_rank_coverage() else set()
INHERITED = {
    "test_round_trip_sharded_tensor_on_two_ranks",
    "test_round_trip_strided_shard",
    "test_int_keys_keep_their_type",
    "test_unexpected_key_in_checkpoint_raises",
    "test_rejects_gap_on_one_rank",
} - PASSED
OUTCOMES = {**dict.fromkeys(INHERITED, "inherited"), **dict.fromkeys(PASSED, "passed")}


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_correct_dcp_based_backend_inherits_dcps_failures_and_passes(tmp_path):
    """DCP under another name: each failure DCP has here is inherited (DCP, run on the same
    example, fails it the same way), and the run exits 0."""
    result, report = run_conformance("tests.planted.verdicts:dcp_inheriting", SELECTION, tmp_path)
    outcomes = {name: t["outcome"] for name, t in _tests(report).items()}
    assert outcomes == OUTCOMES, result.stdout[-3000:]
    for test in report["tests"]:
        if test["outcome"] == "inherited":
            assert {k["origin"] for k in test["known"]} == {"torch-dcp"}, test
    assert result.returncode == 0, result.stdout[-3000:]
    assert "inherited" in result.stdout  # pytest's own summary uses the report's words


CLASS_STYLE = """
import pytest
from ckptconf.conformance.suites import KindsTests, PlansTests, RoundTripTests

from tests.planted.verdicts import dcp_inheriting


@pytest.fixture(scope="session")
def backend():
    return dcp_inheriting()


class TestMyRoundTrip(RoundTripTests):
    pass


class TestMyKinds(KindsTests):
    pass


class TestMyPlans(PlansTests):
    pass
"""


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.not_in_ci  # the class-style path's verdicts are checked in test_class_style.py too
def test_class_style_runs_give_the_same_verdicts(tmp_path):
    """The same backend given by a fixture to subclasses of the suites in a user's module: the
    expectations apply by suite and test name, whatever the module and class are called."""
    (tmp_path / "test_mine.py").write_text(CLASS_STYLE)
    selection = SELECTION.replace("TestRoundTrip", "TestMyRoundTrip").replace(
        "TestKinds", "TestMyKinds"
    )
    selection = selection.replace("TestPlans", "TestMyPlans")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "test_mine.py", "-p", "no:cacheprovider", "-k", selection]
        + ["--ckpt-profile", "ci", "--ckpt-no-shrink", "--ckpt-report", str(report), "-v"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    tests = _tests(json.loads(report.read_text()))
    assert {n: t["outcome"] for n, t in tests.items()} == OUTCOMES
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{len(INHERITED)} inherited" in result.stdout.splitlines()[-1], result.stdout[-600:]
    assert "test_mine.py::TestMyKinds::test_int_keys_keep_their_type INHERITED" in result.stdout
