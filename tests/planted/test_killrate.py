"""The conformance suite kills the planted bugs: the fast subset under ci and dev, all under thorough."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.planted import PLANTED
from tests.planted.killrate import (
    BugVerdict,
    KillTable,
    PlantedBug,
    main,
    resumable_verdicts,
    run_killrate,
    short_test_id,
)

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


def _bugs(n: int) -> list[PlantedBug]:
    return [PlantedBug(f"b{i}", f"bug {i}", f"m:b{i}", ("roundtrip",)) for i in range(n)]


def test_a_partial_table_says_so_and_round_trips(tmp_path):
    bugs = _bugs(3)
    table = KillTable(profile="ci", fast=False, planned=3)
    table.verdicts = [BugVerdict(bugs[0], True, ["t.py::T::test_a"], {"t.py::T::test_a": "x"})]
    table.write(tmp_path / "k.json", tmp_path / "k.md")
    assert "**Partial**: 1 of 3 bugs" in (tmp_path / "k.md").read_text()
    data = json.loads((tmp_path / "k.json").read_text())
    assert (data["complete"], data["planned"], data["killed"]) == (False, 3, 1)
    again = BugVerdict.from_json(data["bugs"][0], bugs[0])
    assert again == table.verdicts[0]
    table.verdicts += [BugVerdict(bugs[1], False), BugVerdict(bugs[2], False, error="none ran")]
    table.write(None, tmp_path / "k.md")
    assert "Partial" not in (tmp_path / "k.md").read_text()
    assert not list(tmp_path.glob("*.partial"))


def test_resume_keeps_verdicts_of_the_same_settings_and_bugs(tmp_path):
    bugs = _bugs(4)
    table = KillTable(profile="ci", fast=False, planned=4)
    table.verdicts = [
        BugVerdict(bugs[0], True, ["t.py::test_a"]),
        BugVerdict(bugs[1], False),
        BugVerdict(bugs[2], False, error="no conformance test ran"),
    ]
    path = tmp_path / "k.json"
    table.write(path, None)
    moved = [*bugs[:1], dataclasses.replace(bugs[1], spec="m:elsewhere"), *bugs[2:]]
    kept = resumable_verdicts(path, moved, profile="ci", fast=False, first_kill=False)
    # b1's spec changed and b2 errored: only b0 is kept; b3 never ran
    assert list(kept) == ["b0"] and kept["b0"].killed_by == ["t.py::test_a"]
    with pytest.raises(ValueError, match="profile=ci, fast=False, first_kill=False"):
        resumable_verdicts(path, bugs, profile="thorough", fast=False, first_kill=False)
    assert (
        resumable_verdicts(tmp_path / "none.json", bugs, profile="ci", fast=False, first_kill=False)
        == {}
    )


def test_known_verdicts_are_not_run_again_and_each_is_reported(tmp_path):
    bugs = _bugs(2)
    known = {b.name: BugVerdict(b, True, [f"t.py::test_{b.name}"]) for b in bugs}
    seen = []
    table = run_killrate(
        bugs,
        profile="ci",
        known=known,
        on_verdict=lambda i, v, t: seen.append((i, v.bug.name, len(t.verdicts))),
    )
    assert seen == [(0, "b0", 1), (1, "b1", 2)]
    assert table.complete and table.killed == 2


def test_a_killing_test_that_fails_without_a_bug_is_no_kill(monkeypatch):
    from tests.planted import killrate

    # "t_bad" fails on every backend (the control too); "t_good" fails only on bug b0
    failing = {"b0": ["s.py::t_bad", "s.py::t_good"], "b1": ["s.py::t_bad"], "ctl": ["s.py::t_bad"]}
    calls = []

    def fake_run(bug, *, exclude=frozenset(), include=None, stop_early, **options):
        calls.append((bug.name, sorted(exclude), sorted(include or []), stop_early))
        tests = [t for t in ("s.py::t_bad", "s.py::t_good") if short_test_id(t) not in exclude]
        tests = [t for t in tests if include is None or short_test_id(t) in include]
        failed = [t for t in failing[bug.name] if t in tests][:1]  # first kill only
        return BugVerdict(bug, bool(failed), failed, {t: "x" for t in failed}, ran=tests)

    monkeypatch.setattr(killrate, "_run_one", fake_run)
    control = PlantedBug("ctl", "no bug", "m:ctl", ("roundtrip",))
    table = run_killrate(_bugs(2), profile="ci", first_kill=True, control=control)
    assert [(v.bug.name, v.killed, v.killed_by) for v in table.verdicts] == [
        ("b0", True, ["s.py::t_good"]),
        ("b1", False, []),
    ]
    assert table.control_failed == {"t_bad": True, "t_good": False}
    assert calls == [  # bugs stop at their first kill; the control runs every test it is given
        ("b0", [], [], True),
        ("ctl", [], ["t_bad"], False),
        ("b0", ["t_bad"], [], True),
        ("ctl", [], ["t_good"], False),
        ("b1", ["t_bad"], [], True),
    ]
    assert "1 failed there too" in table.to_markdown() and "t_bad" in table.to_markdown()


def test_the_cli_resumes_from_its_own_json(tmp_path, monkeypatch):
    module = tmp_path / "fake_planted.py"
    module.write_text(
        "from tests.planted.killrate import PlantedBug\n"
        "BUGS = [PlantedBug('b0', 'bug 0', 'm:b0', ('roundtrip',))]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out, md = tmp_path / "k.json", tmp_path / "k.md"
    table = KillTable(profile="ci", fast=False, planned=1)
    table.verdicts = [BugVerdict(_bugs(1)[0], True, ["t.py::test_a"])]
    table.write(out, None)
    args = ["fake_planted:BUGS", "--json", str(out), "--resume", "--markdown", str(md)]
    assert main(args) == 0
    assert "| `b0` | roundtrip | bug 0 | test_a |" in md.read_text()
    assert main(["fake_planted:BUGS", "--resume"]) == 2  # nothing to resume from


@pytest.mark.multiprocess
@pytest.mark.slow
def test_planted_bugs_are_killed(tmp_path, request):
    """The fast subset under ci and dev; every planted bug under thorough (hours)."""
    from ckptconf.conformance.session import of

    profile = of(request.config).profile
    full = profile == "thorough"
    out = tmp_path / "killrate.json"
    command = [sys.executable, "-m", "tests.planted.killrate", "tests.planted:PLANTED"]
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
    # every killing test was re-run on the scaffold without a bug, and passed there
    assert data["control"] == "tests.planted.control:control"
    assert data["control_failed"] and not any(data["control_failed"].values()), data
    survivors = {b["name"]: b["error"] for b in data["bugs"] if not b["killed"]}
    assert not survivors, f"{survivors}\n{result.stdout[-4000:]}"
    for bug in data["bugs"]:  # killed by its own effect: the failure names the backend
        assert any(f"[{bug['name']}]" in reason for reason in bug["reasons"].values()), bug
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_planted_bug_targets_suites_that_exist():
    from ckptconf.conformance.suites import SUITES

    unknown = {b.name: b.target_suites for b in PLANTED if set(b.target_suites) - set(SUITES)}
    assert not unknown, f"target suites not in {sorted(SUITES)}: {unknown}"
