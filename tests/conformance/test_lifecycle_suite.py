"""The lifecycle suite: steps print and read back, the reference passes, and planted backends whose
defect needs two or more operations are found, shrunk, and reproduced from the printed command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from ckptconf.conformance import select_backend
from ckptconf.conformance.kit.jobs import Holding, PerRankCase
from ckptconf.conformance.suites.lifecycle.cases import SALT_STEP, numbered_save, pinned_runs
from ckptconf.conformance.suites.lifecycle.runner import _newer_for, _same_keys, as_saved
from ckptconf.conformance.suites.lifecycle.steps import Load, Save, parse_steps, printed

from .suite_runner import run_conformance


def test_printed_steps_read_back_as_the_same_steps():
    for backend in ("reference", "torch-dcp"):
        for run in pinned_runs(select_backend(backend)):
            text = printed(list(run.steps))
            assert parse_steps(text) == list(run.steps), run.name
            assert '"' not in text  # so the command line quotes it in double quotes, readably


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "[Save(0, ().__class__)]",
        "[Load(0)] + [Load(1)]",
        "[print(1)]",
        "Load(0)",
    ],
)
def test_printed_steps_are_read_without_evaluating_code(text):
    with pytest.raises(ValueError, match="not a printed list of lifecycle steps"):
        parse_steps(text)


def test_each_save_has_values_of_its_own():
    case = PerRankCase("pipeline stages", (), 2, 2, (), ())
    spec_case = pinned_runs(select_backend("reference"))[0].steps[0].case
    again = numbered_save(spec_case, 7)
    assert [s.salt // SALT_STEP for s in again.tensors] == [7] * len(again.tensors)
    assert [s.salt % SALT_STEP for s in again.tensors] == [
        s.salt % SALT_STEP for s in spec_case.tensors
    ]
    assert all(o.value.startswith("save 7: ") for o in again.objects)
    assert numbered_save(numbered_save(spec_case, 3), 7) == again
    assert numbered_save(case, 2) == case  # nothing to number


def test_a_checkpoint_of_the_same_keys_is_one_a_load_may_return_whole():
    case = pinned_runs(select_backend("reference"))[0].steps[0].case
    # whoever saved them: the keys, shapes and dtypes are the checkpoint's
    moved = replace(case, saved=(Holding((1,)),) + case.saved[1:])
    assert _same_keys(case, numbered_save(moved, 9))
    newer = _newer_for(as_saved(case), numbered_save(moved, 9))
    assert [s.salt // SALT_STEP for s in newer.tensors] == [9] * len(case.tensors)
    assert newer.loaded == case.saved and newer.load_world == case.save_world
    other_shape = replace(
        case, tensors=(replace(case.tensors[0], shape=(5, 3)),) + case.tensors[1:]
    )
    assert not _same_keys(case, other_shape)
    assert not _same_keys(case, replace(case, tensors=case.tensors[1:], saved=case.saved[1:]))
    assert not _same_keys(case, replace(case, objects=case.objects[1:]))


@pytest.mark.multiprocess
@pytest.mark.slow
def test_the_reference_passes_the_lifecycle(tmp_path):
    result, report = run_conformance("reference", "lifecycle", tmp_path, shrink=True)
    outcomes = {t["test"]: t["outcome"] for t in report.get("tests", [])}
    assert outcomes == {
        "lifecycle::test_lifecycle": "passed",
        "lifecycle::test_lifecycle_with_failed_saves": "passed",
    }, result.stdout[-6000:]


def _name(planted) -> str:
    values = planted.values if hasattr(planted, "values") else planted
    return values[0].split(":")[1]


# (backend, test, the failing step's kind and step, words of the headline)
PLANTED = [
    (
        "tests.planted.lifecycle:reads_newest_generation",
        "test_lifecycle",
        ("wrong_values", "load"),
        "not those of one committed checkpoint",
    ),
    (
        "tests.planted.lifecycle:lock_left_by_failed_save",
        "test_lifecycle_with_failed_saves",
        ("raised", "save"),
        "save raised on",
    ),
    (
        "tests.planted.lifecycle:save_plan_cached",
        "test_lifecycle",
        ("raised", None),
        "raised on",
    ),
    pytest.param(  # a plan cache again, as save_plan_cached
        "tests.planted.lifecycle:plan_cache_ignores_dtype",
        "test_lifecycle",
        ("raised", None),
        "raised",
        marks=pytest.mark.not_in_ci,
    ),
    (
        "tests.planted.lifecycle:async_staging_buffers_reused",
        "test_lifecycle",
        ("wrong_values", "load"),
        "not those of one committed checkpoint",
    ),
    pytest.param(  # a racing load again, as reads_newest_generation
        "tests.planted.lifecycle:racing_load_refused_on_one_rank",
        "test_lifecycle",
        ("wrong_error", "load"),
        "the ranks of one job hold different states",
        marks=pytest.mark.not_in_ci,
    ),
    pytest.param(  # per-process state kept across saves again, as save_plan_cached
        "tests.planted.storage:stale_metadata_cache",
        "test_lifecycle",
        ("raised", "load"),
        "the load of a committed checkpoint raised",
        marks=pytest.mark.not_in_ci,
    ),
]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.parametrize("spec, test, how, headline", PLANTED, ids=[_name(p) for p in PLANTED])
def test_a_defect_of_several_operations_is_found_and_reproduced(
    tmp_path, spec, test, how, headline
):
    selection = "test_lifecycle and not failed" if test == "test_lifecycle" else test
    result, report = run_conformance(spec, selection, tmp_path, shrink=True)
    [entry] = [t for t in report["tests"] if t["test"] == f"lifecycle::{test}"]
    assert entry["outcome"] == "failed", result.stdout[-6000:]
    failure = entry["failure"]
    kind, step = how
    assert failure["kind"] == kind and (step is None or failure["step"] == step), failure
    assert headline in failure["what"], failure["what"]
    # the sequence is printed as numbered steps, the failing one marked, shrunk
    assert "-> " in failure["case"] and "step" in failure["case"]
    assert "shrunk from" in (failure["minimal_case"] or ""), failure["minimal_case"]
    steps = len(re.findall(r"^(?:->|  ) \d+\. ", failure["case"], flags=re.M))
    assert steps >= 2, f"a defect of several operations failed in {steps} step(s)"
    # the printed command runs the printed steps again, as printed, and fails the same way
    # a short folder: the forkserver's socket lies in it, and AF_UNIX paths stop at 108 bytes
    temporary = Path(tempfile.mkdtemp(prefix="ckl-"))
    replay = subprocess.run(
        ["bash", "-c", failure["reproduction"]],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    assert replay.returncode == 1, replay.stdout[-4000:] + replay.stderr[-4000:]
    assert f"kind {kind}" in replay.stdout and headline in replay.stdout, replay.stdout[-4000:]
    left = list(temporary.glob("ckptconf-lifecycle-*"))
    shutil.rmtree(temporary, ignore_errors=True)
    assert not left, "the replay left its checkpoints"


def test_the_printed_reproduction_names_the_folder_a_module_backend_imports_from():
    from ckptconf.conformance.suites.lifecycle.runner import replay_command

    steps = [Save(0, pinned_runs(select_backend("reference"))[0].steps[0].case), Load(0)]
    built_in = replay_command("reference", steps, strict=False)
    assert not built_in.startswith("cd ") and built_in.endswith(f'"{printed(steps)}"')
    line = replay_command("tests.planted.lifecycle:save_plan_cached", steps, strict=True)
    assert line.startswith("cd ") and " --strict " in line and line.endswith(f'"{printed(steps)}"')
