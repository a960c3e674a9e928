"""The plan-validation suite catches broken planners, and its own checks see what they must."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from ckptconf.conformance.kit.oracle import cover_problems
from ckptconf.conformance.suites.plans.cases import PlanStateCase, SimLayout, SimTensor
from ckptconf.conformance.suites.plans.checks import dedup_problems, metadata_problems
from ckptconf.conformance.suites.plans.states import build_states
from ckptconf.harness.simulated import simulate_save_planning
from ckptconf.reference import ReferenceSavePlanner
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

from .suite_runner import failure_text, run_conformance


def run_suite(spec: str, tests: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    return run_conformance(spec, f"TestPlans and ({tests})", tmp_path)


@pytest.mark.parametrize(
    "backend, tests, failing",
    [
        (
            "dropping_dedup",
            "test_dedup_writes_each_chunk_once or test_metadata_covers_the_state",
            {
                "test_dedup_writes_each_chunk_once": "is written by no rank",
                "test_metadata_covers_the_state": "the metadata lacks key(s) of the state",
            },
        ),
        (
            "random_dedup",
            "test_plans_are_deterministic",
            {"test_plans_are_deterministic": "planning the same state twice gave different plans"},
        ),
        (
            "unvalidated",
            "test_rejects_broken_plan and (overlap or gap or bounds)",
            {
                "test_rejects_broken_plan[overlap]": "accepted a plan with overlapping chunks",
                "test_rejects_broken_plan[gap]": "accepted a plan with a gap",
                "test_rejects_broken_plan[out_of_bounds]": "accepted a plan with an out-of-bounds",
            },
        ),
        (
            "volume_only",
            "test_rejects_broken_plan and (overlap or gap or bounds)",
            {"test_rejects_broken_plan[overlap]": "accepted a plan with overlapping chunks"},
        ),
        (
            "double_read",
            "test_load_plan_reads_every_element_once",
            {"test_load_plan_reads_every_element_once": "covered by more than one of the reads"},
        ),
        (
            "first_piece",
            "test_strided_shard_plans",
            {"test_strided_shard_plans": "covered by none of the reads"},
        ),
    ],
)
def test_a_broken_planner_fails_the_suite(tmp_path, backend, tests, failing):
    spec = f"tests.planted.dcp_planners:{backend}"
    result, report = run_suite(spec, tests, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    outcomes = {t["id"].split("::")[-1]: t for t in report["tests"]}
    assert {name for name, t in outcomes.items() if t["outcome"] == "failed"} == set(failing), (
        outcomes
    )
    for name, message in failing.items():
        text = failure_text(outcomes[name])
        assert text.startswith(f"[{backend}]"), text
        assert message in text, text
        assert f"--ckpt-backend {spec}" in outcomes[name]["failure"]["reproduction"]


def test_a_backend_without_planners_is_unsupported(tmp_path):
    spec = "tests.planted.dcp_planners:whole_system"
    result, report = run_suite(
        spec, "scale or oracle_accepts or load_plan or deterministic", tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(report["tests"]) == 7
    for test in report["tests"]:
        assert test["outcome"] == "unsupported", test
        assert "exposes no save planner" in test["message"], test


def _case() -> PlanStateCase:
    return PlanStateCase(
        4,
        (
            SimTensor(("model", "w"), (5, 3), "float32", SimLayout("mesh", (2, 2), ("S0", "R"))),
            SimTensor(("model", "b"), (3,), "int64", SimLayout()),
            SimTensor(
                ("opt", "m"),
                (4,),
                "float64",
                SimLayout("chunks", chunks=((3, (0,), (1,)), (1, (1,), (3,)))),
            ),
            SimTensor(("head",), (2, 6), "float32", SimLayout("mesh", (2,), ("S1",), first_rank=2)),
        ),
        ((("step",), 7),),
    )


@pytest.mark.parametrize("planner", [DefaultSavePlanner, ReferenceSavePlanner])
def test_dcp_and_the_reference_plan_simulated_values(planner):
    case = _case()
    result, _ = simulate_save_planning(build_states(case), planner)
    assert metadata_problems(case, result.metadata) == []
    assert dedup_problems(result.local_plans, result.global_plan, result.metadata) == []
    assert (
        sum(len(p.items) for p in result.global_plan) == 2 + 1 + 2 + 2 + 1
    )  # w: two row blocks, each on two ranks


def test_cover_problems_names_overlaps_gaps_and_bounds():
    assert cover_problems("t", (4,), [(((0,), (2,)), "r0"), (((2,), (2,)), "r1")]) == []
    overlap, gap = cover_problems("t", (4, 1), [(((0, 0), (3, 1)), "r0"), (((2, 0), (1, 1)), "r1")])
    assert "covered by more than one" in overlap and "(2, 0)" in overlap and "r1" in overlap
    assert "1 of 4 element(s) covered by none" in gap and "(3, 0)" in gap
    (bounds,) = cover_problems("t", (2,), [(((0,), (3,)), "r0")])[:1]
    assert "out of bounds" in bounds
    assert cover_problems("s", (), [(((), ()), "r0")]) == []  # a scalar is one element


def test_dedup_problems_sees_a_rank_writing_what_it_does_not_hold():
    case = _case()
    result, _ = simulate_save_planning(build_states(case), DefaultSavePlanner)
    moved = list(result.global_plan)
    moved[0], moved[1] = moved[1], moved[0]
    problems = dedup_problems(result.local_plans, moved, result.metadata)
    assert any("which only ranks" in p for p in problems), problems


def test_meta_states_hold_no_data():
    (state,) = build_states(
        PlanStateCase(
            1,
            (
                SimTensor(
                    ("w",), (2, 2), "float32", SimLayout("chunks", chunks=((0, (0, 0), (2, 2)),))
                ),
            ),
        )
    )
    assert state["w"].pieces[0].view.device == torch.device("meta")
    with pytest.raises(TypeError):
        state["w"] + 1


def test_states_are_flat_for_a_backend_taking_flat_state_dicts_only():
    """Megatron's planners take flat state dicts (its adapter declares nested_state_dicts
    unsupported): the plans suite once gave them nested ones and reported its own mistake as
    the backend's failure."""
    case = PlanStateCase(
        2, (SimTensor(("model", "w"), (2,), "float32", SimLayout()),), ((("opt", "step"), 3),)
    )
    nested = build_states(case, data="encoded")
    flat = build_states(case, data="encoded", nested=False)
    assert sorted(nested[1]) == ["model", "opt"] and nested[1]["opt"] == {"step": 3}
    assert sorted(flat[1]) == ["model.w", "opt.step"] and flat[1]["opt.step"] == 3
    assert torch.equal(flat[0]["model.w"], nested[0]["model"]["w"])
