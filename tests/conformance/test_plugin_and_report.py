"""The pytest plugin's report (also under xdist), expectations files, markdown rendering."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.conformance import ConformanceFailure
from ckptconf.conformance.report import render_markdown

ROOT = Path(__file__).resolve().parents[2]


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
    expectations = tmp_path / "exp.toml"
    expectations.write_text(
        "[[known]]\n"
        'test = "kinds::test_dtype_round_trip[int8]"\n'
        'step = "load"\nkind = "wrong_values"\nmatch = "."\n'
        'reason = "pretend it is known to fail"\n'
        "[[known]]\n"
        'test = "kinds::test_mixed_dtypes"\n'
        'step = "save"\nkind = "hang"\n'
        'reason = "matches nothing, but a -k run cannot tell"\n'
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
    (unexpected,) = [t for t in report["tests"] if t["outcome"] == "unexpected pass"]
    assert unexpected["unmatched"] == [f"{expectations}:1: step load, kind wrong_values, match '.'"]
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
        "unmatched_expectations": ["exp.toml:3 kinds::test_gone: step load, kind hang"],
    }
    text = render_markdown(data)
    assert "| kinds | 3 | 1 | 0 | 0 | 0 | 0 |" in text
    assert "### `test_kinds.py::TestKinds::test_x`: failed" in text
    assert "[b] 1 loaded value(s) differ\ncase:\nsave on 1 rank(s)\n" in text
    assert "first difference: rank 0, key 'w', global index (2, 1), expected 14.0, got 7.0" in text
    assert "Minimal case:" in text and "Draw 1 (case)" in text
    assert "Reproduce: `python -m pytest t.py::TestKinds::test_x`" in text
    assert "- exp.toml:3 kinds::test_gone: step load, kind hang" in text
    assert "declared unsupported: dtensor" in text


def test_the_report_takes_the_outcome_and_known_failures_from_the_test():
    """Outcomes are decided where the test ran and travel as data: the report keeps them and
    the known failures' examples, never parsing a skip or xfail message."""
    from types import SimpleNamespace

    from ckptconf.conformance.report import Report, render_markdown

    report = Report(profile="ci", seed=None)
    known = {
        "entry": "torch-dcp.toml:40",
        "origin": "torch-dcp",
        "signature": "step save, kind raised",
        "reason": "chunks past the end",
        "count": 2,
        "examples": [{"case": "save on 3 rank(s)", "what": "save raised", "key": None}],
    }
    info = {
        "id": "t.py::T::test_x",
        "test": "s::test_x",
        "suite": "s",
        "level": "core",
        "outcome": "inherited",
        "message": "inherited from torch-dcp (2 example(s)): chunks past the end",
        "known": [known],
    }
    skipped = SimpleNamespace(when="call", passed=False, skipped=True, duration=0.1)
    report.record(info, skipped)
    (entry,) = report.tests
    assert entry["outcome"] == "inherited" and entry["known"] == [known]
    unsupported = {**info, "id": "t.py::T::test_y", "outcome": "unsupported", "known": []}
    unsupported["message"] = "declared unsupported: dtensor"
    report.record(unsupported, SimpleNamespace(when="setup", passed=False, duration=0.0))
    assert report.counts() == {"s": {"inherited": 1, "unsupported": 1}}
    assert report.core_failures() == 0
    text = render_markdown(report.to_json())
    assert (
        "2 example(s) inherited from torch-dcp (torch-dcp.toml:40: step save, kind raised)" in text
    )
    assert "save raised\nsave on 3 rank(s)" in text


def test_the_report_says_what_the_backend_takes_from_its_parent_once_a_test_found_it():
    """The parts inherited are found at the first test judged, which may come after an
    unsupported one: the report's backend gets them from whichever test has them."""
    from types import SimpleNamespace

    from ckptconf.conformance.report import Report, render_markdown

    report = Report(profile="ci", seed=None)
    backend = {"name": "mine", "inherits": "torch-dcp"}
    parts = {
        "parent": "torch-dcp",
        "taken": ["driver", "planner", "staging"],
        "why": {"storage": "ZipWriter is no FileSystemWriter"},
    }
    first = {"id": "t.py::T::a", "test": "s::a", "suite": "s", "level": "core"}
    report.record(
        {**first, "outcome": "unsupported", "backend": backend},
        SimpleNamespace(when="setup", passed=False, duration=0.0),
    )
    report.record(
        {
            **first,
            "id": "t.py::T::b",
            "outcome": "passed",
            "backend": {**backend, "inherited_parts": parts},
        },
        SimpleNamespace(when="call", passed=True, duration=0.1),
    )
    assert report.backend["inherited_parts"] == parts
    assert (
        "- inherits from: torch-dcp (planner, staging, driver taken; own storage: ZipWriter is no "
        "FileSystemWriter)" in render_markdown(report.to_json())
    )


def test_pytest_shows_a_failure_brief_and_the_whole_record_under_vv(tmp_path):
    args = ["--ckpt-backend", "tests.planted.storage:last_chunk_skipped", "--ckpt-no-shrink"]
    args += ["-k", "test_round_trip and not strided and not dtensor and not sharded"]
    result, report = _pytest(*args, tmp_path=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (failed,) = [t for t in report["tests"] if t["outcome"] == "failed"]
    # the failure section ends at its captured output, if any, or at the next "=== ... ===" line
    failures = result.stdout.split("= FAILURES =", 1)[1]
    shown = re.split(r"\n(?:-+ Captured |=+ )", failures, maxsplit=1)[0]
    assert "[last_chunk_skipped]" in shown and "reproduce: " in shown
    assert f"full record (every rank's traceback and output): {tmp_path / 'report.json'}" in shown
    assert "Falsifying" not in shown and "raise self.fail(" not in shown  # no pytest traceback
    assert len(shown.strip().splitlines()) <= 27  # the test's title line, and about 25
    result, _ = _pytest(*args, "-vv", tmp_path=tmp_path)
    assert "raise self.fail(" in result.stdout  # pytest's own long form: the frame that raised
    assert failed["failure"]["what"] in result.stdout


def test_ckptconfs_own_session_ignores_the_projects_pytest_options(tmp_path):
    """``ckptconf run`` and ``bench suite`` run pytest in a folder of their own: an option in the
    pytest.ini of the folder they run in that pytest does not know is not even read."""
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    collect = (
        "import pytest\n"
        "from ckptconf.conformance.options import own_session\n"
        "with own_session() as args:\n"
        "    assert '--assert=plain' in args\n"
        "    code = pytest.main(['--co', '--pyargs', 'ckptconf.conformance.suites.roundtrip', *args])\n"
        "raise SystemExit(int(code))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c"]
    own = subprocess.run(run + [collect], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert own.returncode == 0, own.stdout + own.stderr
    plain = collect.replace("*args]", "]")
    theirs = subprocess.run(run + [plain], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert theirs.returncode == 4, theirs.stdout + theirs.stderr  # usage error: the bad option


def test_memory_folder_is_a_writable_tmpfs_with_room(tmp_path):
    from ckptconf.conformance.options import memory_folder

    mounts = Path("/proc/self/mounts")
    if not mounts.exists() or " /dev/shm tmpfs " not in mounts.read_text():
        pytest.skip("no tmpfs at /dev/shm on this machine")
    assert memory_folder("/dev/shm") == "/dev/shm"
    assert memory_folder("/dev/shm", room=1 << 60) is None  # not that much room
    assert memory_folder(str(tmp_path / "none")) is None
    on_disk = [p for p in ("/var/tmp", "/root", "/home") if os.path.isdir(p)]
    for path in on_disk:  # a disk filesystem (whatever its room) is not memory
        kind = _filesystem_of(path, mounts.read_text())
        assert (memory_folder(path) is not None) == (kind in ("tmpfs", "ramfs")), (path, kind)


def _filesystem_of(path: str, table: str) -> str:
    rows = [line.split()[1:3] for line in table.splitlines()]
    real = os.path.realpath(path)
    inside = [(p, k) for p, k in rows if real == p or real.startswith(p.rstrip("/") + "/")]
    return max(inside, key=lambda row: len(row[0]))[1]


@pytest.mark.multiprocess
def test_ckptconf_run_puts_checkpoints_in_memory_and_leaves_none_there(tmp_path):
    """A failed run removes its folder in memory and says that --dir keeps the failed tests'
    checkpoints; with --dir they are kept, and a passing run leaves the --dir folder as it found
    it (the folder it made there is removed with the passed tests' checkpoints)."""
    from ckptconf.conformance.options import memory_folder

    if memory_folder() is None:
        pytest.skip("no folder in memory here: ckptconf run uses pytest's temporary folder")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    chosen, passing = tmp_path / "chosen", tmp_path / "passing"
    runs = {}
    for name, spec, more in (
        ("reference", "reference", ["--dir", str(passing)]),
        ("bad", "tests.planted.storage:last_chunk_skipped", []),
        ("bad in a folder", "tests.planted.storage:last_chunk_skipped", ["--dir", str(chosen)]),
    ):
        runs[name] = subprocess.run(
            [sys.executable, "-m", "ckptconf.cli", "run", "--backend", spec, "--profile", "ci"]
            + ["-k", "test_round_trip_dtensor_on_two_ranks", "--no-shrink", "--no-preflight"]
            + more,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    found = re.search(r"checkpoints in (/\S+), in memory", runs["bad"].stdout)
    assert found, runs["bad"].stdout[-3000:]
    assert not Path(found.group(1)).exists()
    assert runs["reference"].returncode == 0 and runs["bad"].returncode == 1
    assert list(passing.iterdir()) == [], runs["reference"].stdout[-3000:]
    assert "in memory and are removed; --dir PATH keeps them" in runs["bad"].stdout
    kept = runs["bad in a folder"]
    assert kept.returncode == 1 and "in memory" not in kept.stdout, kept.stdout[-3000:]
    assert [p for p in chosen.rglob("*") if p.is_file()], "no checkpoint kept under --dir"
