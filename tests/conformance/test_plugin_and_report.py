"""The pytest plugin's report (also under xdist), expectations files, markdown rendering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.conformance import ConformanceFailure
from ckptconf.conformance.expectations import Expectations, ExpectationsError
from ckptconf.conformance.report import render_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_expectations_parse_match_longest_prefix_and_list_unmatched(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(
        "# comment\n"
        "test_a.py::T::test_x  # broad reason\n"
        "test_a.py::T::test_x[int8]  # narrow reason\n"
        "test_b.py::T::test_gone  # no such test\n"
    )
    expectations = Expectations.load(path)
    assert expectations.match("test_a.py::T::test_x[int8]").reason == "narrow reason"
    assert expectations.match("test_a.py::T::test_x[bool]").reason == "broad reason"
    assert expectations.match("test_a.py::T::test_y") is None
    assert expectations.unmatched(["test_a.py::T::test_x[bool]"]) == [
        f"{path}:3 test_a.py::T::test_x[int8]",
        f"{path}:4 test_b.py::T::test_gone",
    ]
    assert Expectations.load(tmp_path / "missing.txt").entries == []


def test_an_expectation_without_a_reason_is_an_error(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("test_a.py::T::test_x\n")
    with pytest.raises(ExpectationsError, match=r"x.txt:1: an entry needs a reason"):
        Expectations.load(path)


def _pytest(*args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--pyargs",
            "ckptconf.conformance",
            "-p",
            "no:cacheprovider",
        ]
        + ["--ckpt-profile", "ci", "--ckpt-report", str(report), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return result, (json.loads(report.read_text()) if report.exists() else {})


def test_the_report_is_written_by_the_xdist_controller(tmp_path):
    """Under -n 2 the tests run in workers; the controller still gets every outcome."""
    expectations = tmp_path / "exp.txt"
    expectations.write_text(
        "test_kinds.py::TestKinds::test_dtype_round_trip[int8]  # pretend it is known to fail\n"
        "test_nothing.py::TestNothing  # matches nothing, but a -k run cannot tell\n"
    )
    selected = "TestKinds and test_dtype_round_trip and (int8 or uint8)"
    result, report = _pytest(
        "-n", "2", "-k", selected, "--ckpt-expectations", str(expectations), tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {t["id"]: t["outcome"] for t in report["tests"]}
    assert outcomes == {
        "test_kinds.py::TestKinds::test_dtype_round_trip[int8]": "unexpected pass",
        "test_kinds.py::TestKinds::test_dtype_round_trip[uint8]": "passed",
    }
    assert report["backend"]["name"] == "reference"
    assert report["summary"] == {"kinds": {"unexpected pass": 1, "passed": 1}}
    assert report["unmatched_expectations"] == []
    assert "ckptconf conformance: reference" in result.stdout


def test_markdown_lists_failures_with_case_and_reproduction():
    data = {
        "backend": {"name": "b", "spec": "m:b", "description": "d", "unsupported": ["dtensor"]},
        "versions": {"torch": "x"},
        "profile": "ci",
        "seed": None,
        "summary": {"kinds": {"passed": 3, "failed": 1}},
        "tests": [
            {
                "id": "test_kinds.py::TestKinds::test_x",
                "outcome": "failed",
                "message": "1 loaded value(s) differ",
                "failure": ConformanceFailure(
                    "1 loaded value(s) differ",
                    backend="b",
                    suite="kinds",
                    test="test_kinds.py::TestKinds::test_x",
                    case="save on 1 rank(s)",
                    rank=0,
                    key="w",
                    index=(2, 1),
                    expected=14.0,
                    actual=7.0,
                    minimal_case="Draw 1 (case): SaveLoadCase(...)",
                    reproduction="python -m pytest t.py::TestKinds::test_x",
                ).fields(),
            }
        ],
        "unmatched_expectations": ["exp.txt:3 test_gone"],
    }
    text = render_markdown(data)
    assert "| kinds | 3 | 1 | 0 | 0 | 0 | 0 |" in text
    assert "### `test_kinds.py::TestKinds::test_x`: failed" in text
    assert "[b] 1 loaded value(s) differ\ncase:\nsave on 1 rank(s)\n" in text
    assert "first difference: rank 0, key 'w', global index (2, 1), expected 14.0, got 7.0" in text
    assert "Minimal case:" in text and "Draw 1 (case)" in text
    assert "Reproduce: `python -m pytest t.py::TestKinds::test_x`" in text
    assert "- exp.txt:3 test_gone" in text
    assert "declared unsupported: dtensor" in text


def test_a_when_drawn_entry_that_passes_is_not_an_unexpected_pass():
    from types import SimpleNamespace

    from ckptconf.conformance.report import Report

    report = Report(profile="ci", seed=None)
    info = {"id": "t.py::T::test_x", "suite": "s", "level": "core"}
    for wasxfail, outcome in (
        ("expected failure: a reason", "unexpected pass"),
        ("expected failure: when drawn: a reason", "passed"),
        ("inherited from torch-dcp: a reason", "passed"),
    ):
        passed = SimpleNamespace(
            when="call",
            passed=True,
            failed=False,
            skipped=False,
            duration=0.1,
            wasxfail=wasxfail,
            longrepr=None,
        )
        report.record(info, passed)
        assert report.tests[-1]["outcome"] == outcome, wasxfail
