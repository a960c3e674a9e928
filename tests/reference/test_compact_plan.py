"""Save plans as arrays (issue 30): what the coordinator makes of them is what it makes of DCP's
``SavePlan`` objects, and bytes off the wire that are not a plan are refused, naming the rank
and the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ckptconf.bench.plan import local_plans
from ckptconf.harness.simulated import mesh_values
from ckptconf.reference import PlanValidationError, ReferenceSavePlanner
from ckptconf.reference import compact_plan as cp
from ckptconf.reference.compat import set_up_save_planner
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.tensor import Replicate, Shard

from .test_global_plan import world_states


def _planner(dedup=True, verify=True):
    planner = ReferenceSavePlanner(dedup=dedup, verify_replicas=verify)
    set_up_save_planner(planner, {}, True)
    return planner


def _wire(plans):
    return cp.decode_save_plans([cp.encode_save_plan(p) for p in plans])


def _outcome(run):
    try:
        return run()
    except PlanValidationError as exc:
        return exc.problems


def _plans_with_values(states, verify=True):
    """Local plans whose objects and real tensors carry replica checksums."""
    plans = []
    for rank, state in enumerate(states):
        planner = ReferenceSavePlanner(verify_replicas=verify)
        set_up_save_planner(planner, state, rank == 0)
        plans.append(planner.create_local_plan())
    return plans


@given(world_states(), st.booleans(), st.booleans())
def test_the_array_path_gives_the_object_paths_plans_and_metadata(states, dedup, verify):
    plans = _plans_with_values(states, verify)
    objects = _outcome(lambda: _planner(dedup, verify).create_global_plan(plans))
    arrays = _outcome(lambda: _planner(dedup, verify).create_global_plan_compact(_wire(plans)))
    if isinstance(objects, list):  # the problems of a rejected plan (replicas differ, ...)
        assert arrays == objects
        return
    out, metadata = objects
    kept, compact_metadata = arrays
    assert compact_metadata == metadata
    assert list(compact_metadata.state_dict_metadata) == list(metadata.state_dict_metadata)
    for key, entry in metadata.state_dict_metadata.items():
        assert getattr(compact_metadata.state_dict_metadata[key], "chunks", None) == getattr(
            entry, "chunks", None
        )
    for local, global_plan, positions in zip(plans, out, kept):
        mine = cp.finish_save_plan(local, positions, None)
        assert mine.items == global_plan.items
        assert mine.planner_data is None and global_plan.planner_data is None


@given(world_states())
def test_a_plan_comes_back_off_the_wire_as_it_was_made(states):
    plans = _plans_with_values(states)
    for plan, back in zip(plans, _wire(plans)):
        rebuilt = back.to_save_plan()
        assert rebuilt.items == plan.items
        assert rebuilt.planner_data == plan.planner_data


def test_the_common_case_never_builds_save_plan_objects(monkeypatch):
    states = [{}] * 1
    values = mesh_values("t", (8, 2), (4,), [Shard(0)], meta=True)
    emb = mesh_values("e", (3, 3), (4,), [Replicate()], meta=True)
    states = [{"t": v, "e": e} for v, e in zip(values, emb)]
    wire = _wire(local_plans(states))
    monkeypatch.setattr(cp.CompactSavePlan, "to_save_plan", lambda self: pytest.fail("objects"))
    kept, metadata = _planner().create_global_plan_compact(wire)
    # "e" is replicated: written once, by the rank with the fewest bytes (ties: the lowest)
    assert [None if k is None else k.tolist() for k in kept] == [None, [0], [0], [0]]
    assert [tuple(c.offsets) for c in metadata.state_dict_metadata["t"].chunks] == [
        (0, 0), (2, 0), (4, 0), (6, 0)
    ]  # fmt: skip
    assert metadata.planner_data == {"t": ("t",), "e": ("e",)}


def test_replicas_that_differ_are_named_through_the_readable_steps():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 3.0])}]
    with pytest.raises(PlanValidationError, match=r"key 'w' at offsets \(0,\): replicas differ"):
        _planner().create_global_plan_compact(_wire(_plans_with_values(states)))
    kept, _ = _planner(verify=False).create_global_plan_compact(
        _wire(_plans_with_values(states, verify=False))
    )
    assert [None if k is None else k.tolist() for k in kept] == [None, []]


def test_paths_merge_as_dict_update_in_rank_order():
    maps = [{"a": ("a",)}, {"b": ("b",), "a": ("x",)}, {"a": ("a",)}]
    plans = [dataclasses.replace(cp.decode_save_plans([_blob()])[0], paths=m) for m in maps]
    assert list(cp.merged_paths(plans).items()) == [("a", ("a",)), ("b", ("b",))]
    plans = plans[:2]
    assert cp.merged_paths(plans) == {"a": ("x",), "b": ("b",)}


def _blob():
    values = mesh_values("t", (4, 2), (2,), [Shard(0)], meta=True)
    planner = ReferenceSavePlanner()
    set_up_save_planner(planner, {"t": values[1], "o": {"k": [1, "z"]}}, False)
    return cp.encode_save_plan(planner.create_local_plan())


def test_every_truncation_of_a_plan_is_refused_naming_the_rank():
    blob = _blob()
    assert len(cp.decode_save_plans([blob, blob])) == 2
    for n in range(len(blob)):
        with pytest.raises(cp.PlanWireError, match="rank 1's save plan off the wire"):
            cp.decode_save_plans([blob, blob[:n]])
    with pytest.raises(cp.PlanWireError, match="bytes, expected"):
        cp.decode_save_plans([blob + b"\0"])


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (b"CKPTPLN1", b"CKPTPLN2", "starts with"),
        (b'"float32"', b'"floatXX"', "unknown dtype 'floatXX'"),
        (b'"kinds":[1,2]', b'"kinds":[1,7]', "has kind 7"),
        (b'"sizes":[[4,2],[]]', b'"sizes":[[4,-2],[]]', "integers in"),
        (b'"keys":["t","o.k"]', b'"keys":["t","t"]', "distinct strings"),
        (b'"o.k":["o","k"]', b'"o.k":["o",1.5]', "paths of key 'o.k'"),
        (b'"requires_grad":[false,false]', b'"requires_grad":[0,false]', "booleans"),
    ],
)
def test_a_plan_with_a_wrong_field_is_refused_naming_it(old, new, message):
    blob = _blob()
    assert old in blob
    changed = blob.replace(old, new)
    header = cp._HEADER.unpack_from(blob)
    grown = len(new) - len(old)
    if old not in blob[: cp._HEADER.size] and grown:  # keep the section lengths right
        table_end = cp._HEADER.size + header[2]
        in_table = blob.index(old) < table_end
        fixed = (
            header[0],
            header[1],
            header[2] + grown * in_table,
            header[3] + grown * (not in_table),
        )
        changed = cp._HEADER.pack(*fixed) + changed[cp._HEADER.size :]
    with pytest.raises(cp.PlanWireError, match=message):
        cp.decode_save_plans([changed])


def test_items_naming_keys_out_of_the_table_or_negative_chunks_are_refused():
    blob = bytearray(_blob())
    _, n, table, paths = cp._HEADER.unpack_from(blob)
    keys_at = cp._HEADER.size + table + paths
    bad = bytearray(blob)
    bad[keys_at : keys_at + 4] = np.int32(5).tobytes()
    with pytest.raises(cp.PlanWireError, match="names key number 5, the table has 2"):
        cp.decode_save_plans([bytes(bad)])
    bad = bytearray(blob)
    bad[keys_at + 4 * n : keys_at + 4 * n + 8] = np.int64(-1).tobytes()
    with pytest.raises(cp.PlanWireError, match=r"lie in \[0, 2\*\*62\)"):
        cp.decode_save_plans([bytes(bad)])


def test_a_global_plan_is_checked_before_a_rank_writes_by_it():
    blob = cp.encode_global_plan(np.array([0, 2]), "gen-abc")
    kept, generation = cp.decode_global_plan(blob, 3)
    assert kept.tolist() == [0, 2] and generation == "gen-abc"
    assert cp.decode_global_plan(cp.encode_global_plan(None, "gen-1"), 0) == (None, "gen-1")
    for bad, message in [
        (cp.encode_global_plan(np.array([0, 3]), "gen-abc"), r"within \[0, 3\)"),
        (cp.encode_global_plan(np.array([1, 1]), "gen-abc"), "rise strictly"),
        (cp.encode_global_plan(None, "../etc"), "not gen-<id>"),
        (cp.encode_global_plan(None, "gen-a/../../b"), "not gen-<id>"),
        (blob[:-1], "not int32"),
        (b"CKPTGPL1" + b"\xff" * 8, "runs past"),
        (b"pickle..." * 3, "does not start"),
    ]:
        with pytest.raises(cp.PlanWireError, match=message):
            cp.decode_global_plan(bad, 3)


def test_plans_the_format_cannot_carry_are_refused_at_the_rank():
    values = mesh_values("t", (4, 2), (2,), [Shard(0)], meta=True)
    plan = local_plans([{"t": v} for v in values])[0]
    with pytest.raises(ValueError, match="planner data"):
        cp.encode_save_plan(dataclasses.replace(plan, planner_data={"mine": 1}))
    with pytest.raises(ValueError, match="storage data"):
        cp.encode_save_plan(dataclasses.replace(plan, storage_data="x"))
    item = plan.items[0]
    moved = dataclasses.replace(
        item, index=dataclasses.replace(item.index, offset=torch.Size([1, 0]))
    )
    with pytest.raises(ValueError, match="whose index is not its chunk's"):
        cp.encode_save_plan(dataclasses.replace(plan, items=[moved]))
