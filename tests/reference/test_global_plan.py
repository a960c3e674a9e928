"""The one-pass global save plan gives what the readable steps give, or gives up.

The readable steps (dedup_save_plans, build_metadata, validate_global_plan) define the result;
``fast_global_plan`` must return the same plans and metadata when it accepts, and must never
accept a plan in which they find a problem.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ckptconf.bench.plan import local_plans
from ckptconf.harness.simulated import mesh_values
from ckptconf.reference import ReferenceSavePlanner
from ckptconf.reference.compat import set_up_save_planner
from ckptconf.reference.dedup import dedup_save_plans
from ckptconf.reference.global_plan import fast_global_plan
from ckptconf.reference.plan_metadata import build_metadata
from ckptconf.reference.validation import validate_global_plan
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


def readable(plans, dedup=True):
    """What the readable steps give: (plans, metadata, problems)."""
    out = dedup_save_plans(plans) if dedup else list(plans)
    out = [dataclasses.replace(p, planner_data=None) for p in out]
    metadata = build_metadata(out, planner_data="paths")
    return out, metadata, validate_global_plan(out, metadata)


def assert_same(fast, slow):
    plans, metadata = fast
    slow_plans, slow_metadata, problems = slow
    assert problems == [], "the fast path accepted plans the readable steps reject"
    assert plans == slow_plans
    assert metadata == slow_metadata
    assert list(metadata.state_dict_metadata) == list(slow_metadata.state_dict_metadata)
    for key, entry in metadata.state_dict_metadata.items():  # chunk order, not just the set
        assert getattr(entry, "chunks", None) == getattr(
            slow_metadata.state_dict_metadata[key], "chunks", None
        )


@st.composite
def world_states(draw):
    """States of one world: DTensors of drawn layouts on one mesh, replicated plain tensors,
    scalars, objects on every rank or some, keys only some ranks hold (pipeline stages)."""
    mesh = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    ranks = 1
    for n in mesh:
        ranks *= n
    states = [{} for _ in range(ranks)]
    for k in range(draw(st.integers(1, 3))):
        shape, _, placements = draw(layouts(max_mesh_dims=len(mesh), max_dim=6, strided=False))
        placements = (placements * len(mesh))[: len(mesh)]
        for rank, value in enumerate(mesh_values(f"d{k}", shape, mesh, placements, meta=True)):
            states[rank][f"d{k}"] = value
    if draw(st.booleans()):
        rows = draw(st.integers(0, 5))
        for state in states:
            state["plain"] = torch.zeros(rows, 3, device="meta")
    if draw(st.booleans()):
        for state in states:
            state["scalar"] = torch.zeros((), device="meta")
    holders = draw(st.sets(st.integers(0, ranks - 1)))
    for rank in holders:
        states[rank]["stage"] = {"w": torch.zeros(2, 2, device="meta"), "step": rank}
    for rank in range(ranks):
        states[rank][f"own{rank}"] = torch.zeros(rank + 1, device="meta")
    if draw(st.booleans()):
        for state in states:
            state["config"] = {"lr": 0.1}
    return states


@given(world_states())
def test_the_fast_path_takes_planned_states_and_gives_the_readable_result(states):
    plans = local_plans(states)
    fast = fast_global_plan(plans, dedup=True, planner_data="paths")
    assert fast is not None, "a layout that DTensor or a plain state gives is the fast path's case"
    assert_same(fast, readable(plans))


def item(fqn, offsets, sizes, size, dtype=torch.float32, offset="chunk", requires_grad=False):
    index_offset = offsets if offset == "chunk" else offset
    return WriteItem(
        index=MetadataIndex(fqn, index_offset),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)),
            properties=TensorProperties(dtype=dtype, requires_grad=requires_grad),
            size=torch.Size(size),
        ),
    )


box = st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))


@given(
    st.lists(st.lists(box, max_size=3), min_size=1, max_size=4),
    st.booleans(),
)
def test_the_fast_path_never_accepts_what_the_readable_steps_reject(boxes, dedup):
    """Random boxes of a 4x4 tensor on 1-4 ranks: mostly broken layouts (overlaps, gaps,
    out of bounds, replicas without dedup); whatever the fast path accepts must be valid and
    give the readable result."""
    plans = [
        SavePlan([item("t", (a, c), (b, d), (4, 4)) for a, b, c, d in rank_boxes])
        for rank_boxes in boxes
    ]
    fast = fast_global_plan(plans, dedup=dedup, planner_data="paths")
    if fast is not None:
        assert_same(fast, readable(plans, dedup))


def _good():
    return [
        SavePlan([item("t", (0, 0), (2, 4), (4, 4)), item("s", (), (), ())]),
        SavePlan([item("t", (2, 0), (2, 4), (4, 4)), item("s", (), (), ())]),
    ]


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (1, 0), (2, 4), (4, 4))), id="overlap"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (3, 0), (1, 4), (4, 4))), id="gap"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (2, 0), (3, 4), (4, 4))), id="bounds"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (2, 0), (2, 4), (4, 4), torch.float16)), id="dtype"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (2, 0), (2, 4), (4, 5))), id="size"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (2,), (2,), (4, 4))), id="rank"),
        pytest.param(lambda p: p[1].items.__setitem__(0, item("t", (2, 0), (2, 4), (4, 4), offset=(0, 0))), id="index"),
        pytest.param(lambda p: [q.items.__setitem__(0, item("t", c.offsets, c.sizes, (4, 4), offset=None)) for q in p for c in [q.items[0].tensor_data.chunk]], id="no-index"),
        pytest.param(lambda p: p[1].items.append(item("t", (2, 0), (0, 4), (4, 4))), id="empty-twice"),
        pytest.param(lambda p: p[1].items.append(item("s", (0,), (1,), (1,))), id="scalar-twice"),
        pytest.param(lambda p: p[1].items.append(WriteItem(index=MetadataIndex("t"), type=WriteItemType.BYTE_IO)), id="kinds"),
        pytest.param(lambda p: [q.items.append(WriteItem(index=MetadataIndex("o"), type=WriteItemType.BYTE_IO, tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size([0]), torch.Size([r + 1])), properties=TensorProperties(dtype=torch.float32), size=torch.Size([4])))) for r, q in enumerate(p)], id="bytes-with-tensor-data"),
    ],
)  # fmt: skip
def test_each_broken_plan_goes_to_the_readable_steps(breakage):
    plans = _good()
    assert_same(fast_global_plan(plans, dedup=True, planner_data="paths"), readable(plans))
    breakage(plans)
    assert readable(plans)[2] != []  # broken indeed
    assert fast_global_plan(plans, dedup=True, planner_data="paths") is None


def test_metadata_takes_requires_grad_from_the_first_kept_item_and_dedup_balances():
    # the replicated "w" goes to rank 1 (fewer bytes), whose item says requires_grad
    plans = [
        SavePlan([item("big", (0,), (8,), (8,)), item("w", (0,), (4,), (4,))]),
        SavePlan([item("w", (0,), (4,), (4,), requires_grad=True)]),
    ]
    fast = fast_global_plan(plans, dedup=True, planner_data="paths")
    assert [[i.index.fqn for i in p.items] for p in fast[0]] == [["big"], ["w"]]
    assert fast[1].state_dict_metadata["w"].properties.requires_grad is True
    assert_same(fast, readable(plans))


def test_the_planner_takes_the_fast_path_and_a_broken_plan_still_names_every_problem(
    monkeypatch,
):
    import ckptconf.reference.save_planner as save_planner

    values = mesh_values("t", (8, 2), (4,), [Shard(0)], meta=True)
    emb = mesh_values("e", (3, 3), (4,), [Replicate()], meta=True)
    plans = local_plans([{"t": v, "e": e} for v, e in zip(values, emb)])
    calls = []
    monkeypatch.setattr(save_planner, "dedup_save_plans", lambda p: calls.append(p) or p)
    planner = ReferenceSavePlanner()
    set_up_save_planner(planner, {}, True)
    out, metadata = planner.create_global_plan(plans)
    assert calls == [] and sum(len(p.items) for p in out) == 5
    monkeypatch.undo()
    broken = [dataclasses.replace(p, items=list(p.items)) for p in plans]
    broken[1].items[0] = item("t", (0, 0), (3, 2), (8, 2))
    with pytest.raises(Exception, match="overlap") as info:
        planner.create_global_plan(broken)
    assert any("not covered" in p for p in info.value.problems)


def test_metadata_lists_chunks_by_offsets_whatever_the_rank_order():
    # ranks hold the blocks of a 2-D mesh (Shard(1), Shard(0)): rank order is not offset order
    values = mesh_values("t", (4, 4), (2, 2), [Shard(1), Shard(0)], meta=True)
    plans = local_plans([{"t": v} for v in values])
    held = [tuple(p.items[0].tensor_data.chunk.offsets) for p in plans]
    assert held == [(0, 0), (2, 0), (0, 2), (2, 2)]
    fast = fast_global_plan(plans, dedup=True, planner_data="paths")
    chunks = fast[1].state_dict_metadata["t"].chunks
    assert [tuple(c.offsets) for c in chunks] == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert_same(fast, readable(plans))


def test_sizes_that_would_overflow_int64_go_to_the_readable_steps():
    big = 2**62
    # (4, 2**62 - 1) elements: a numpy product wraps; the chunk overlaps the four rows
    wraps = [
        SavePlan([item("h", (0, 1), (4, big - 1), (4, big), dtype=torch.int8)]),
        SavePlan([item("h", (k, 0), (1, big), (4, big), dtype=torch.int8) for k in range(4)]),
    ]
    beyond = [SavePlan([item("h", (0,), (big,), (big,)), item("h", (big,), (3 * big,), (big,))])]
    for plans in (wraps, beyond):
        assert readable(plans)[2] != []
        assert fast_global_plan(plans, dedup=True, planner_data="paths") is None
