"""Global plan validation finds every planted problem; dedup keeps one copy, deterministically."""

from __future__ import annotations

import dataclasses
import math

import ckptconf.reference.validation as validation
import numpy as np
import pytest
import torch
from ckptconf.harness.simulated import mesh_values, simulate_save_planning
from ckptconf.reference import PlanValidationError, ReferenceSavePlanner, validate_global_plan
from ckptconf.reference.dedup import dedup_save_plans
from ckptconf.reference.plan_metadata import build_metadata
from ckptconf.reference.validation import chunk_layout_problems
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.tensor import Replicate, Shard

from .strategies import layouts


def write_item(fqn, offsets, sizes, size, dtype=torch.float32):
    chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
    return WriteItem(
        index=MetadataIndex(fqn, offsets),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=chunk, properties=TensorProperties(dtype=dtype), size=torch.Size(size)
        ),
    )


def problems_of(plans):
    return validate_global_plan(plans, build_metadata(plans))


@given(layouts(max_dim=7))
def test_planned_layouts_are_valid_and_stored_once(layout):
    shape, mesh, placements = layout
    values = mesh_values("t", shape, mesh, placements, meta=True)
    result, _ = simulate_save_planning([{"t": v} for v in values], ReferenceSavePlanner)
    assert validate_global_plan(result.global_plan, result.metadata) == []
    counts = np.zeros(shape, dtype=np.int64)
    for plan in result.global_plan:
        for item in plan.items:
            c = item.tensor_data.chunk
            counts[tuple(slice(o, o + n) for o, n in zip(c.offsets, c.sizes))] += 1
    assert (counts == 1).all()


def test_dedup_is_deterministic_and_balanced():
    # four replicated tensors of equal size on four ranks: one each, lowest rank first
    state = {f"w{i}": torch.ones(4, 4) for i in range(4)}
    runs = [simulate_save_planning([state] * 4, ReferenceSavePlanner)[0] for _ in range(2)]
    owners = [
        {item.index.fqn: rank for rank, p in enumerate(r.global_plan) for item in p.items}
        for r in runs
    ]
    assert owners[0] == owners[1]
    assert sorted(owners[0].values()) == [0, 1, 2, 3]
    # a big replica goes to the rank with the least bytes so far
    plans = [
        SavePlan(
            [
                write_item("big", (0,), (16,), (16,)),
                write_item(f"own{r}", (0,), (r * 8 + 1,), (r * 8 + 1,)),
            ]
        )
        for r in range(2)
    ]
    out = dedup_save_plans(plans)
    assert [[i.index.fqn for i in p.items] for p in out] == [["big", "own0"], ["own1"]]


def test_a_replicated_chunk_is_kept_by_exactly_one_rank():
    values = mesh_values("t", (6, 4), (2, 3), [Replicate(), Shard(1)], meta=True)
    result, _ = simulate_save_planning([{"t": v} for v in values], ReferenceSavePlanner)
    # 4 columns over 3 ranks as torch.chunk splits them (2, 2, 0 wide), replicated twice: each once
    written = [
        (tuple(i.tensor_data.chunk.offsets), tuple(i.tensor_data.chunk.sizes))
        for p in result.global_plan
        for i in p.items
    ]
    assert sorted(written) == [((0, 0), (6, 2)), ((0, 2), (6, 2)), ((0, 4), (6, 0))]


def good_plans():
    return [
        SavePlan([write_item("t", (0, 0), (2, 4), (4, 4))]),
        SavePlan([write_item("t", (2, 0), (2, 4), (4, 4))]),
    ]


def test_valid_plan_has_no_problems():
    assert problems_of(good_plans()) == []


@pytest.mark.parametrize(
    "breakage, message",
    [
        (
            lambda p: p[1].items.__setitem__(0, write_item("t", (1, 0), (2, 4), (4, 4))),
            r"overlap at offsets \(1, 0\) sizes \(1, 4\)",
        ),
        (
            lambda p: p[1].items.__setitem__(0, write_item("t", (3, 0), (1, 4), (4, 4))),
            r"4 of 16 elements are not covered .*offsets \(2, 0\) sizes \(1, 4\)",
        ),
        (
            lambda p: p[1].items.__setitem__(0, write_item("t", (2, 0), (3, 4), (4, 4))),
            r"out of bounds of size \(4, 4\)",
        ),
        (
            lambda p: p[1].items.__setitem__(
                0, write_item("t", (2, 0), (2, 4), (4, 4), torch.float16)
            ),
            r"rank 1: write item 't' says dtype torch.float16, metadata says torch.float32",
        ),
        (
            lambda p: p[1].items.__setitem__(0, write_item("t", (2, 0), (2, 4), (4, 5))),
            r"rank 1: write item 't' says global size \(4, 5\), metadata says \(4, 4\)",
        ),
        (
            lambda p: p[1].items.append(write_item("t", (2, 0), (2, 4), (4, 4))),
            r"key 't' at offsets \(2, 0\) is written 2 times, by ranks \[1, 1\]",
        ),
        (
            lambda p: p[0].items.append(write_item("t", (2, 0), (2, 4), (4, 4))),
            r"is written 2 times, by ranks \[0, 1\]",
        ),
    ],
)
def test_each_broken_plan_is_reported(breakage, message):
    plans = good_plans()
    breakage(plans)
    problems = problems_of(plans)
    assert any(__import__("re").search(message, p) for p in problems), problems


def test_every_problem_is_reported_not_just_the_first():
    plans = [
        SavePlan([write_item("a", (0,), (3,), (4,)), write_item("b", (0,), (2,), (4,))]),
        SavePlan([write_item("a", (2,), (2,), (4,)), write_item("c", (0,), (5,), (4,))]),
    ]
    problems = problems_of(plans)
    assert any("'a'" in p and "overlap" in p for p in problems)
    assert any("'b'" in p and "not covered" in p for p in problems)
    assert any("'c'" in p and "out of bounds" in p for p in problems)


def test_the_planner_raises_with_all_problems():
    planner = ReferenceSavePlanner()
    planner.set_up_planner({}, None, True)
    planner.storage_meta = None
    plans = [
        SavePlan([write_item("a", (0,), (3,), (4,))]),
        SavePlan([write_item("a", (1,), (3,), (4,))]),
    ]
    with pytest.raises(
        PlanValidationError, match=r"invalid global save plan \(1 problems\)"
    ) as info:
        planner.create_global_plan(plans)
    assert "overlap" in info.value.problems[0]


box = st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 5), st.integers(0, 4))


@pytest.mark.parametrize("path", ["grid", "sweep"])
@given(chunks=st.lists(box, min_size=1, max_size=6))
def test_overlaps_and_gaps_match_an_element_count(path, chunks):
    size = (6, 6)
    specs = [
        ChunkStorageMetadata(offsets=torch.Size([a, c]), sizes=torch.Size([b, d]))
        for a, b, c, d in chunks
    ]
    counts = np.zeros(size, dtype=np.int64)
    in_bounds = True
    for s in specs:
        if any(o + n > m for o, n, m in zip(s.offsets, s.sizes, size)):
            in_bounds = False
        counts[tuple(slice(o, o + n) for o, n in zip(s.offsets, s.sizes))] += 1
    saved = validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS
    if path == "sweep":
        validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = 0, 0
    try:
        problems = chunk_layout_problems("k", size, specs)
    finally:
        validation._GRID_CELLS_PER_CHUNK, validation._GRID_MIN_CELLS = saved
    if not in_bounds:
        assert any("out of bounds" in p for p in problems)
        return
    assert any("overlap" in p for p in problems) == bool((counts > 1).any())
    if not (counts > 1).any():
        assert any("not covered" in p for p in problems) == bool((counts == 0).any())
        if (counts == 0).any():
            assert any(f"{int((counts == 0).sum())} of 36 elements" in p for p in problems)


def test_ten_thousand_simulated_ranks():
    n = 10_000
    values = mesh_values("t", (n * 2, 8), (n,), [Shard(0)], meta=True)
    result, _ = simulate_save_planning([{"t": v, "step": 1} for v in values], ReferenceSavePlanner)
    assert validate_global_plan(result.global_plan, result.metadata) == []
    assert sum(len(p.items) for p in result.global_plan) == n + 1
    broken = [dataclasses.replace(p, items=list(p.items)) for p in result.global_plan]
    broken[5000].items[0] = write_item("t", (9_999, 0), (3, 8), (n * 2, 8))
    problems = validate_global_plan(broken, build_metadata(broken))
    assert any("overlap" in p for p in problems)


def test_load_planning_is_not_a_quadratic_scan(monkeypatch):
    """1,000 destination ranks against 1,000 saved chunks: overlap checks stay linear."""
    import ckptconf.reference.resharding as resharding
    from ckptconf.reference.resharding import SavedChunkIndex, read_items_for_chunk

    calls = 0
    real = resharding.chunk_overlap

    def counting(a, b):
        nonlocal calls
        calls += 1
        return real(a, b)

    monkeypatch.setattr(resharding, "chunk_overlap", counting)
    n = 1000
    saved = [v.pieces[0].chunk for v in mesh_values("t", (3 * n, 4), (n,), [Shard(0)], meta=True)]
    index = SavedChunkIndex(saved)
    dests = [
        v.pieces[0].chunk
        for v in mesh_values("t", (3 * n, 4), (n // 2, 2), [Shard(0), Shard(1)], meta=True)
    ]
    covered = 0
    for dest in dests:
        result = read_items_for_chunk("t", index, dest)
        assert result.uncovered == 0
        covered += sum(math.prod(item.lengths) for item in result.items)
    assert covered == 3 * n * 4
    assert calls <= 4 * len(dests)  # a quadratic scan would make 1,000,000 checks


def test_verify_replicas_reports_replicas_that_differ():
    states = [
        {"w": torch.zeros(4), "lr": 0.1},
        {"w": torch.zeros(4), "lr": 0.1},
        {"w": torch.ones(4), "lr": 0.2},
    ]
    with pytest.raises(PlanValidationError) as info:
        simulate_save_planning(states, ReferenceSavePlanner)  # verify_replicas by default
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("key 'lr': replicas differ (ranks [0, 1] have checksum")
    assert "ranks [2] have checksum" in problems[0]
    assert problems[1].startswith("key 'w' at offsets (0,): replicas differ (ranks [0, 1]")
    # equal replicas pass, and with the check off differing replicas are not compared
    simulate_save_planning(states[:2], ReferenceSavePlanner)
    simulate_save_planning(states, lambda: ReferenceSavePlanner(verify_replicas=False))
