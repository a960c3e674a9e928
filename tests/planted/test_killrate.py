"""The conformance suite kills the planted bugs: the fast subset under ci and dev, all under thorough."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ckptconf.conformance.killrate import BugVerdict, KillTable, PlantedBug, short_test_id

from tests.planted import PLANTED

ROOT = Path(__file__).resolve().parents[2]


def test_table_counts_renders_and_serialises():
    bugs = [PlantedBug(f"b{i}", f"bug {i}", f"m:b{i}", ("roundtrip",)) for i in range(3)]
    table = KillTable(profile="ci", fast=False)
    table.verdicts = [
        BugVerdict(bugs[0], True, ["test_a.py::TestA::test_x[1]", "test_a.py::TestA::test_y"]),
        BugVerdict(bugs[1], False),
        BugVerdict(bugs[2], False, error="no test of suites plans ran"),
    ]
    assert (table.killed, round(table.rate, 3)) == (1, 0.333)
    assert [v.bug.name for v in table.survivors()] == ["b1", "b2"]
    markdown = table.to_markdown()
    assert "1/3 (33.3%)" in markdown and "| `b1` | roundtrip | bug 1 | SURVIVED |" in markdown
    assert "TestA::test_x[1], TestA::test_y" in markdown
    data = table.to_json()
    assert data["killed"] == 1 and data["bugs"][2]["error"] == "no test of suites plans ran"
    assert short_test_id("test_a.py::TestA::test_x") == "TestA::test_x"


@pytest.mark.multiprocess
@pytest.mark.slow
def test_planted_bugs_are_killed(tmp_path, request):
    """The fast subset under ci and dev; every planted bug under thorough (hours)."""
    profile = request.config.option.ckpt_profile
    full = profile == "thorough"
    out = tmp_path / "killrate.json"
    command = [sys.executable, "-m", "ckptconf.conformance.killrate", "tests.planted:PLANTED"]
    command += [] if full else ["--fast"]
    command += ["--profile", "thorough" if full else "ci", "--json", str(out), "--min-rate", "1.0"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=None if full else 900,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert out.exists(), result.stdout + result.stderr
    data = json.loads(out.read_text())
    expected = [b.name for b in PLANTED if full or b.fast]
    assert [b["name"] for b in data["bugs"]] == expected
    survivors = {b["name"]: b["error"] for b in data["bugs"] if not b["killed"]}
    assert not survivors, f"{survivors}\n{result.stdout[-4000:]}"
    for bug in data["bugs"]:  # killed by its own effect: the failure names the backend
        assert any(f"[{bug['name']}]" in reason for reason in bug["reasons"].values()), bug
    assert result.returncode == 0, result.stdout + result.stderr
