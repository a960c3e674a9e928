"""ckptconf.bench: the suite's time split, and the reference with object-store costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.bench import object_store
from ckptconf.bench.suite import SuiteTimes
from ckptconf.reference.filesystem import DirectoryStore

ROOT = Path(__file__).resolve().parents[2]


def test_the_parts_of_a_run_add_up_to_its_tests_time():
    times = SuiteTimes("b", "ci", wall=100.0, before_collection=3.0, collection=1.0)
    times.world_start_seconds, times.steps, times.step_seconds = 4.0, 1000, 60.0
    times.step_overhead = 0.002
    times.suites = {"kinds": [10, 50.0], "storage": [2, 40.0]}
    assert times.tests == 12
    assert times.between_steps == 90.0 - 60.0 - 4.0
    rows = {part: (seconds, note) for part, seconds, note in times.rows()}
    assert rows["steps on the ranks"] == (
        60.0,
        "1000 steps; of which the harness ~2.0 s (2.0 ms a step)",
    )
    assert rows["controller between steps"][0] == 26.0


def test_each_storage_call_of_the_costly_store_waits_and_sink_writes_do_not(monkeypatch, tmp_path):
    waits: list[float] = []
    monkeypatch.setattr(object_store.time, "sleep", waits.append)
    store = object_store.CostlyStore(DirectoryStore(tmp_path / "c"), seconds=0.05)
    store.prepare()
    store.create_generation("g0")  # no folders in an object store: free
    with store.open_sink("g0/a") as sink:
        sink.write(b"abc")
        sink.write(b"def")
    store.seal_generation("g0")
    store.commit_metadata(b"{}")
    assert bytes(store.read_range("g0/a", 1, 4)) == b"bcd"
    assert store.size("g0/a") == 6 and store.read_metadata() == b"{}"
    assert waits == [0.05] * 7  # prepare, open, seal, commit, read, size, read_metadata


@pytest.mark.multiprocess
def test_the_costly_reference_keeps_the_reference_verdict_and_bench_suite_splits_a_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CKPTCONF_CALL_SECONDS": "0.001"}
    report = tmp_path / "r.json"
    selected = "test_round_trip_dtensor_on_two_ranks or test_storage_protocol_by_hand"
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run", "--profile", "ci"]
        + ["--backend", "ckptconf.bench.object_store:backend", "--report", str(report)]
        + ["-k", selected],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = {
        t["id"].split("::", 1)[1]: t["outcome"] for t in json.loads(report.read_text())["tests"]
    }
    assert outcomes == {
        "TestRoundTrip::test_round_trip_dtensor_on_two_ranks": "passed",
        "TestStorage::test_storage_protocol_by_hand": "passed",
    }
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "bench", "suite", "-k", selected],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for part in ("start-up", "collection", "rank pool starts", "steps on the ranks"):
        assert part in result.stdout
    assert "suite roundtrip" in result.stdout and "suite storage" in result.stdout
    assert "outcomes: 2 passed" in result.stdout
