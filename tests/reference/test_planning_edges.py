"""Exact values of the planning modules at their edges: metadata, validation, dedup, planners.

Written to kill the mutants that survived scripts/mutation (docs/mutation.md): each test
asserts the whole value (every problem message, every owner, every read item), so a
changed operator, constant or message shows.
"""

from __future__ import annotations

import dataclasses
import io

import ckptconf.reference.validation as validation
import pytest
import torch
from ckptconf.harness.simulated import mesh_values, simulate_save_planning
from ckptconf.reference import (
    LoadContractError,
    PlanValidationError,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    validate_global_plan,
)
from ckptconf.reference.dedup import dedup_save_plans, write_item_bytes, write_item_key
from ckptconf.reference.plan_metadata import build_metadata
from ckptconf.reference.resharding import SavedChunkIndex, read_items_for_chunk
from ckptconf.reference.validation import chunk_layout_problems
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    ReadItem,
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.tensor import Replicate, Shard


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def tensor_item(fqn, offsets, sizes, size, dtype=torch.float32, *, requires_grad=False, index=True):
    return WriteItem(
        index=MetadataIndex(fqn, offsets if index else None),
        type=WriteItemType.SHARD,
        tensor_data=TensorWriteData(
            chunk=chunk(offsets, sizes),
            properties=TensorProperties(dtype=dtype, requires_grad=requires_grad),
            size=torch.Size(size),
        ),
    )


def bytes_item(fqn) -> WriteItem:
    return WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO)


def tensor_entry(size, chunks, dtype=torch.float32) -> TensorStorageMetadata:
    return TensorStorageMetadata(
        properties=TensorProperties(dtype=dtype),
        size=torch.Size(size),
        chunks=[chunk(o, s) for o, s in chunks],
    )


# -- plan_metadata -----------------------------------------------------------------------


def test_metadata_records_properties_sorted_chunks_and_bytes():
    plans = [
        SavePlan([tensor_item("w", (2, 0), (2, 3), (4, 3), requires_grad=True), bytes_item("n")]),
        SavePlan([tensor_item("w", (0, 0), (2, 3), (4, 3), requires_grad=True), bytes_item("n")]),
    ]
    metadata = build_metadata(plans, planner_data={"w": ("w",)})
    entry = metadata.state_dict_metadata["w"]
    assert entry.properties.requires_grad is True
    assert entry.properties.dtype == torch.float32
    assert entry.size == torch.Size((4, 3))
    assert [(tuple(c.offsets), tuple(c.sizes)) for c in entry.chunks] == [
        ((0, 0), (2, 3)),
        ((2, 0), (2, 3)),
    ]
    assert isinstance(metadata.state_dict_metadata["n"], BytesStorageMetadata)
    assert metadata.planner_data == {"w": ("w",)}


def test_metadata_refuses_a_tensor_item_without_tensor_data():
    item = WriteItem(index=MetadataIndex("t"), type=WriteItemType.TENSOR)
    with pytest.raises(ValueError) as info:
        build_metadata([SavePlan([item])])
    assert str(info.value) == "write item 't' of type TENSOR carries no tensor data"


# -- validation --------------------------------------------------------------------------


def test_every_kind_of_plan_problem_is_reported_with_its_exact_message():
    metadata = Metadata(
        state_dict_metadata={
            "t": tensor_entry((4,), [((0,), (2,)), ((2,), (2,))]),
            "obj": BytesStorageMetadata(),
            "as_bytes": BytesStorageMetadata(),
            "as_tensor": tensor_entry((2,), [((0,), (2,))]),
            "unwritten": tensor_entry((2,), [((0,), (2,))]),
            "unwritten_obj": BytesStorageMetadata(),
        }
    )
    no_data = WriteItem(index=MetadataIndex("as_bytes"), type=WriteItemType.TENSOR)
    plans = [
        SavePlan(
            [
                tensor_item("t", (0,), (2,), (4,)),
                bytes_item("obj"),
                no_data,
                bytes_item("ghost"),
                bytes_item("as_tensor"),
            ]
        ),
        SavePlan(
            [
                WriteItem(
                    index=MetadataIndex("t", (3,)),
                    type=WriteItemType.SHARD,
                    tensor_data=tensor_item("t", (2,), (2,), (5,), torch.float16).tensor_data,
                ),
                bytes_item("obj"),
            ]
        ),
    ]
    assert validate_global_plan(plans, metadata) == [
        "rank 0: write item 'as_bytes' writes a tensor but carries no tensor data or the metadata records bytes",
        "rank 0: write item 'ghost' has no entry in the metadata",
        "rank 0: write item 'as_tensor' writes bytes but the metadata records a tensor",
        "rank 1: write item 't' says global size (5,), metadata says (4,)",
        "rank 1: write item 't' says dtype torch.float16, metadata says torch.float32",
        "rank 1: write item 't' is indexed at offsets (3,) but its chunk starts at (2,)",
        "key 'obj' is written 2 times, by ranks [0, 1]",
        "key 'as_tensor': the metadata lists 1 chunks but the plans write 0 that differ from them",
        "key 'as_tensor': 2 of 2 elements are not covered by any chunk (gaps at offsets (0,) sizes (2,))",
        "key 'unwritten' is in the metadata but no rank writes it",
        "key 'unwritten_obj' is in the metadata but no rank writes it",
    ]


def test_a_tensor_item_against_a_bytes_entry_and_an_unindexed_duplicate():
    metadata = Metadata(state_dict_metadata={"b": BytesStorageMetadata()})
    plans = [SavePlan([tensor_item("b", (0,), (2,), (2,), index=False)])] * 2
    assert validate_global_plan(plans, metadata) == [
        "rank 0: write item 'b' writes a tensor but carries no tensor data or the metadata records bytes",
        "rank 1: write item 'b' writes a tensor but carries no tensor data or the metadata records bytes",
        "key 'b' is written 2 times, by ranks [0, 1]",
    ]


def test_metadata_chunks_that_differ_from_the_plans_are_reported():
    metadata = Metadata(state_dict_metadata={"t": tensor_entry((4,), [((0,), (4,))])})
    plans = [
        SavePlan([tensor_item("t", (0,), (2,), (4,))]),
        SavePlan([tensor_item("t", (2,), (2,), (4,))]),
    ]
    assert validate_global_plan(plans, metadata) == [
        "key 't': the metadata lists 1 chunks but the plans write 2 that differ from them"
    ]


def test_gap_message_lists_cells_exactly():
    problems = chunk_layout_problems("k", (4, 4), [chunk((0, 0), (2, 4)), chunk((3, 0), (1, 4))])
    assert problems == [
        "key 'k': 4 of 16 elements are not covered by any chunk (gaps at offsets (2, 0) sizes (1, 4))"
    ]


def test_gap_listing_stops_at_ten_cells():
    # 12 single-element gaps between 13 single-element chunks on a line of 25
    chunks = [chunk((2 * i,), (1,)) for i in range(13)]
    (problem,) = chunk_layout_problems("k", (25,), chunks)
    gaps = "; ".join(f"offsets ({2 * i + 1},) sizes (1,)" for i in range(10))
    assert (
        problem == f"key 'k': 12 of 25 elements are not covered by any chunk (gaps at {gaps}; ...)"
    )


def test_exactly_ten_gaps_are_all_listed_without_an_ellipsis():
    chunks = [chunk((2 * i,), (1,)) for i in range(11)]  # 10 gaps on a line of 21
    (problem,) = chunk_layout_problems("k", (21,), chunks)
    gaps = "; ".join(f"offsets ({2 * i + 1},) sizes (1,)" for i in range(10))
    assert problem == f"key 'k': 10 of 21 elements are not covered by any chunk (gaps at {gaps})"


def test_gap_widths_and_volumes_are_summed_per_cell():
    problems = chunk_layout_problems(
        "k", (6, 5), [chunk((0, 0), (6, 2)), chunk((0, 4), (3, 1))], owners=["rank 0", "rank 1"]
    )
    assert problems == [
        "key 'k': 15 of 30 elements are not covered by any chunk "
        "(gaps at offsets (0, 2) sizes (3, 2); offsets (3, 2) sizes (3, 2); offsets (3, 4) sizes (3, 1))"
    ]


def test_overlaps_name_owners_and_stop_after_ten():
    # chunk i covers [i, i + 3): every pair closer than 3 overlaps; 13 chunks give 23 pairs
    chunks = [chunk((i,), (3,)) for i in range(13)]
    owners = [f"rank {i}" for i in range(13)]
    problems = chunk_layout_problems("k", (15,), chunks, owners=owners)
    assert len(problems) == 11
    assert problems[0] == (
        "key 'k': chunks offsets (0,) sizes (3,) (rank 0) and offsets (1,) sizes (3,) (rank 1) "
        "overlap at offsets (1,) sizes (2,)"
    )
    assert problems[1] == (
        "key 'k': chunks offsets (0,) sizes (3,) (rank 0) and offsets (2,) sizes (3,) (rank 2) "
        "overlap at offsets (2,) sizes (1,)"
    )
    assert problems[10] == "key 'k': more overlapping chunks not listed"


def test_sweep_reports_overlaps_and_gaps_like_the_grid(monkeypatch):
    monkeypatch.setattr(validation, "_GRID_CELLS_PER_CHUNK", 0)
    monkeypatch.setattr(validation, "_GRID_MIN_CELLS", 0)
    chunks = [chunk((i,), (3,)) for i in range(13)]
    problems = chunk_layout_problems("k", (15,), chunks, owners=[f"r{i}" for i in range(13)])
    assert len(problems) == 10
    assert problems[0] == (
        "key 'k': chunks offsets (0,) sizes (3,) (r0) and offsets (1,) sizes (3,) (r1) "
        "overlap at offsets (1,) sizes (2,)"
    )
    assert problems[1] == (
        "key 'k': chunks offsets (0,) sizes (3,) (r0) and offsets (2,) sizes (3,) (r2) "
        "overlap at offsets (2,) sizes (1,)"
    )
    gaps = chunk_layout_problems("k", (6, 4), [chunk((0, 0), (2, 4)), chunk((4, 1), (2, 3))])
    assert gaps == ["key 'k': 10 of 24 elements are not covered by any chunk"]
    # touching chunks on the sweep dim do not overlap; a chunk past a finished one is not compared
    assert chunk_layout_problems("k", (6, 2), [chunk((0, 0), (3, 2)), chunk((3, 0), (3, 2))]) == []
    # the sweep dim is the one with the most distinct starts (here dim 1); overlaps on it are found
    cols = [chunk((0, 2 * i), (2, 3)) for i in range(3)]
    assert chunk_layout_problems("k", (2, 7), cols) == [
        "key 'k': chunks offsets (0, 0) sizes (2, 3) and offsets (0, 2) sizes (2, 3) overlap at offsets (0, 2) sizes (2, 1)",
        "key 'k': chunks offsets (0, 2) sizes (2, 3) and offsets (0, 4) sizes (2, 3) overlap at offsets (0, 4) sizes (2, 1)",
    ]


def test_grid_is_used_up_to_its_cell_budget():
    # 32 single elements on the diagonal of 64 x 64: 64 x 64 = 4096 cells, the budget exactly
    chunks = [chunk((2 * i, 2 * i), (1, 1)) for i in range(32)]
    (problem,) = chunk_layout_problems("k", (64, 64), chunks)
    assert problem.startswith(
        "key 'k': 4064 of 4096 elements are not covered by any chunk (gaps at offsets (0, 1) sizes (1, 1); "
    )


def test_scalars_need_exactly_one_chunk():
    assert chunk_layout_problems("s", (), [chunk((), ())]) == []
    assert chunk_layout_problems("s", (), []) == ["key 's': scalar has no chunk"]
    assert chunk_layout_problems("s", (), [], require_cover=False) == []
    assert chunk_layout_problems("s", (), [chunk((), ())] * 2) == [
        "key 's': scalar written by 2 chunks, expected 1"
    ]


def test_empty_tensors_and_empty_chunks_have_no_problems():
    assert chunk_layout_problems("e", (0, 3), [chunk((0, 0), (0, 3))]) == []
    assert chunk_layout_problems("e", (0, 3), []) == []
    # an empty chunk is in bounds and counts for nothing
    assert chunk_layout_problems("t", (2,), [chunk((0,), (2,)), chunk((2,), (0,))]) == []


def test_require_cover_false_allows_gaps_but_not_overlaps():
    chunks = [chunk((0,), (2,)), chunk((1,), (1,))]
    assert chunk_layout_problems("t", (5,), chunks, require_cover=False) == [
        "key 't': chunks offsets (0,) sizes (2,) and offsets (1,) sizes (1,) overlap at offsets (1,) sizes (1,)"
    ]
    assert chunk_layout_problems("t", (5,), chunks[:1], require_cover=False) == []


def test_out_of_bounds_chunks_are_named_and_left_out_of_the_layout():
    problems = chunk_layout_problems(
        "t", (4,), [chunk((0,), (4,)), chunk((3,), (2,))], owners=["rank 0", "rank 1"]
    )
    assert problems == [
        "key 't': chunk offsets (3,) sizes (2,) (rank 1) is out of bounds of size (4,)"
    ]


# -- dedup -------------------------------------------------------------------------------


def test_replicas_go_largest_first_to_the_least_loaded_rank():
    # largest first: c (10) to rank 0, b (6) to rank 1, a (5) to rank 1 (6 < 10, now 11),
    # e (4) to rank 0 (10 < 11); key order, smallest first, or a load that is not summed
    # would each give another split
    sizes = {"a": 5, "b": 6, "c": 10, "e": 4}
    items = [tensor_item(k, (0,), (n,), (n,)) for k, n in sizes.items()]
    out = dedup_save_plans([SavePlan(list(items)), SavePlan(list(items))])
    assert [[i.index.fqn for i in p.items] for p in out] == [["c", "e"], ["a", "b"]]


def test_equal_replicas_are_assigned_in_key_order_not_plan_order():
    items = [tensor_item(k, (0,), (4,), (4,)) for k in ("d", "a")]
    out = dedup_save_plans([SavePlan(list(items)), SavePlan(list(items))])
    assert [[i.index.fqn for i in p.items] for p in out] == [["a"], ["d"]]


def test_balance_counts_every_item_a_rank_holds_alone():
    # rank 0 holds 2 + 2 bytes alone, rank 1 holds 3: the shared byte goes to rank 1
    plans = [
        SavePlan(
            [
                tensor_item("own1", (0,), (2,), (2,), torch.int8),
                tensor_item("own2", (0,), (2,), (2,), torch.int8),
                tensor_item("s", (0,), (1,), (1,), torch.int8),
            ]
        ),
        SavePlan(
            [
                tensor_item("mine", (0,), (3,), (3,), torch.int8),
                tensor_item("s", (0,), (1,), (1,), torch.int8),
            ]
        ),
    ]
    out = dedup_save_plans(plans)
    assert [[i.index.fqn for i in p.items] for p in out] == [["own1", "own2"], ["mine", "s"]]


def test_replica_balance_counts_bytes_of_each_dtype_and_objects_as_one():
    assert write_item_bytes(tensor_item("t", (0, 0), (2, 3), (4, 3), torch.float64)) == 48
    assert write_item_bytes(tensor_item("t", (0,), (5,), (5,), torch.int8)) == 5
    assert write_item_bytes(bytes_item("o")) == 1
    # rank 0 alone holds 3 bytes of int8, rank 1 alone one object (1). Replicas largest first,
    # then by key: s2 (2 bytes) to rank 1 (1 < 3, now 3), 'shared' (1) to rank 0 on the tie at
    # 3 (lowest rank, now 4), 'tie' (1) to rank 1 (3 < 4)
    plans = [
        SavePlan(
            [
                tensor_item("own", (0,), (3,), (3,), torch.int8),
                bytes_item("shared"),
                tensor_item("s2", (0,), (2,), (2,), torch.int8),
                bytes_item("tie"),
            ]
        ),
        SavePlan(
            [
                bytes_item("mine"),
                bytes_item("shared"),
                tensor_item("s2", (0,), (2,), (2,), torch.int8),
                bytes_item("tie"),
            ]
        ),
    ]
    out = dedup_save_plans(plans)
    assert [[i.index.fqn for i in p.items] for p in out] == [
        ["own", "shared"],
        ["mine", "s2", "tie"],
    ]


def test_distinct_objects_are_not_merged_and_a_repeated_item_is_kept_once():
    assert write_item_key(bytes_item("x")) == ("x", None)
    assert write_item_key(tensor_item("t", (1, 0), (2, 3), (4, 3))) == (
        "t",
        (1, 0),
        (2, 3),
        torch.float32,
        (4, 3),
    )
    item = tensor_item("t", (0,), (2,), (2,))
    out = dedup_save_plans([SavePlan([bytes_item("x"), bytes_item("y"), item, item])])
    assert [i.index.fqn for i in out[0].items] == ["x", "y", "t"]


def test_dedup_keeps_plan_fields_other_than_items():
    plan = SavePlan([bytes_item("x")], storage_data="s", planner_data={"p": 1})
    (out,) = dedup_save_plans([plan])
    assert (out.storage_data, out.planner_data, len(out.items)) == ("s", {"p": 1}, 1)


# -- save planner ------------------------------------------------------------------------


def test_local_plan_items_types_properties_and_paths():
    grad = torch.ones(2, 3, requires_grad=True)
    sharded = mesh_values("m.s", (4,), (2,), [Shard(0)])[1]
    planner = ReferenceSavePlanner()
    planner.set_up_planner({"m": {"w": grad, "s": sharded}, "step": 7}, None, True)
    plan = planner.create_local_plan()
    summary = [
        (
            i.index.fqn,
            i.type,
            None if i.tensor_data is None else tuple(i.tensor_data.chunk.offsets),
            None if i.tensor_data is None else i.tensor_data.properties.requires_grad,
        )
        for i in plan.items
    ]
    assert summary == [
        ("m.w", WriteItemType.TENSOR, (0, 0), True),
        ("m.s", WriteItemType.SHARD, (2,), False),
        ("step", WriteItemType.BYTE_IO, None, None),
    ]
    assert plan.planner_data["paths"] == {"m.w": ("m", "w"), "m.s": ("m", "s"), "step": ("step",)}
    # the replica check is on by default: one checksum per item, of what is written
    assert sorted(k[0] for k in plan.planner_data["checksums"]) == ["m.s", "m.w", "step"]
    written = planner.resolve_data(plan.items[0])
    assert torch.equal(written, grad) and not written.requires_grad
    obj = planner.resolve_data(plan.items[2])
    assert isinstance(obj, io.BytesIO) and obj.getvalue()
    with pytest.raises(
        KeyError, match=r"write item .*'nope'.* is not part of this rank's state dict"
    ):
        planner.resolve_data(bytes_item("nope"))


def test_unflattened_save_keeps_top_level_keys():
    planner = ReferenceSavePlanner(flatten=False, verify_replicas=False)
    planner.set_up_planner({"m": {"w": 1}, "t": torch.zeros(2)})
    assert planner.is_coordinator is False and planner.storage_meta is None
    plan = planner.create_local_plan()
    assert [i.index.fqn for i in plan.items] == ["m", "t"]
    assert plan.planner_data == {"paths": {"m": ("m",), "t": ("t",)}}


def test_global_plan_carries_paths_storage_meta_and_no_planner_data():
    meta = StorageMeta(checkpoint_id="ck", save_id="s1")
    states = [{"m": {"w": torch.zeros(2)}, "a": 1}, {"m": {"w": torch.zeros(2)}, "b": 2}]
    planners = [ReferenceSavePlanner() for _ in states]
    locals_ = []
    for rank, (p, s) in enumerate(zip(planners, states)):
        p.set_up_planner(s, meta, rank == 0)
        locals_.append(p.create_local_plan())
    plans, metadata = planners[0].create_global_plan(locals_)
    assert metadata.storage_meta is meta
    assert metadata.planner_data == {"m.w": ("m", "w"), "a": ("a",), "b": ("b",)}
    assert [p.planner_data for p in plans] == [None, None]
    assert planners[0].metadata is metadata
    assert [[i.index.fqn for i in p.items] for p in plans] == [["m.w", "a"], ["b"]]
    assert planners[1].finish_plan(plans[1]) is plans[1] and planners[1].plan is plans[1]


def test_without_dedup_replicas_are_an_error():
    states = [{"w": torch.zeros(2)}, {"w": torch.zeros(2)}]
    with pytest.raises(PlanValidationError) as info:
        simulate_save_planning(states, lambda: ReferenceSavePlanner(dedup=False))
    assert info.value.problems == [
        "key 'w' at offsets (0,) is written 2 times, by ranks [0, 1]",
        "key 'w': chunks offsets (0,) sizes (2,) (rank 0) and offsets (0,) sizes (2,) (rank 1) "
        "overlap at offsets (0,) sizes (2,)",
    ]


def test_replica_check_names_offsets_groups_and_checksums():
    import xxhash

    states = [{"w": torch.zeros(2), "o": "x"}, {"w": torch.ones(2), "o": "y"}]
    with pytest.raises(PlanValidationError) as info:
        simulate_save_planning(states, ReferenceSavePlanner)  # on by default
    zeros = xxhash.xxh3_64_intdigest(torch.zeros(2).numpy().tobytes())
    ones = xxhash.xxh3_64_intdigest(torch.ones(2).numpy().tobytes())
    assert info.value.problems[1] == (
        f"key 'w' at offsets (0,): replicas differ (ranks [0] have checksum {zeros:016x}; "
        f"ranks [1] have checksum {ones:016x})"
    )
    assert info.value.problems[0].startswith("key 'o': replicas differ (ranks [0] have checksum ")


# -- load planner ------------------------------------------------------------------------


def load_metadata() -> Metadata:
    return Metadata(
        state_dict_metadata={
            "t": tensor_entry((4, 2), [((0, 0), (2, 2)), ((2, 0), (2, 2))]),
            "o": BytesStorageMetadata(),
        }
    )


def test_load_plan_read_items_are_exact():
    planner = ReferenceLoadPlanner()
    dest = {"t": torch.zeros(4, 2), "o": None}
    planner.set_up_planner(dest, load_metadata(), True)
    plan = planner.create_local_plan()
    as_tuples = [
        (
            i.type,
            i.dest_index,
            tuple(i.dest_offsets),
            i.storage_index,
            tuple(i.storage_offsets),
            tuple(i.lengths),
        )
        for i in plan.items
    ]
    assert as_tuples == [
        (
            LoadItemType.TENSOR,
            MetadataIndex("t", (0, 0)),
            (0, 0),
            MetadataIndex("t", (0, 0)),
            (0, 0),
            (2, 2),
        ),
        (
            LoadItemType.TENSOR,
            MetadataIndex("t", (0, 0)),
            (2, 0),
            MetadataIndex("t", (2, 0)),
            (0, 0),
            (2, 2),
        ),
        (LoadItemType.BYTE_IO, MetadataIndex("o"), (0,), MetadataIndex("o"), (0,), (0,)),
    ]
    # the coordinator checks every rank's problems and keys, and passes the items on unchanged
    assert planner.create_global_plan([plan]) == [dataclasses.replace(plan, planner_data=None)]
    assert planner.finish_plan(plan) is plan
    view = planner.resolve_tensor(plan.items[1])
    assert view.shape == (2, 2) and view.data_ptr() == dest["t"][2:].data_ptr()


def test_load_planner_needs_metadata_and_names_bad_read_items():
    planner = ReferenceLoadPlanner()
    with pytest.raises(LoadContractError) as info:
        planner.set_up_planner({"t": torch.zeros(4, 2)}, None, True)
    assert str(info.value) == "the load planner needs the checkpoint metadata"
    planner.set_up_planner({"t": torch.zeros(4, 2)}, load_metadata(), True)
    stray = ReadItem(
        type=LoadItemType.TENSOR,
        dest_index=MetadataIndex("t", (9, 9)),
        dest_offsets=torch.Size((0, 0)),
        storage_index=MetadataIndex("t", (0, 0)),
        storage_offsets=torch.Size((0, 0)),
        lengths=torch.Size((1, 1)),
    )
    with pytest.raises(LoadContractError) as info:
        planner.resolve_tensor(stray)
    assert "names no destination piece of this rank" in str(info.value)


def test_load_problems_are_listed_exactly():
    planner = ReferenceLoadPlanner()
    dest = {f"k{i:02d}": torch.zeros(1) for i in range(23)}
    dest["o"] = torch.zeros(1)
    dest["t"] = [1]
    planner.set_up_planner(dest, load_metadata(), True)
    with pytest.raises(LoadContractError) as info:
        planner.create_global_plan([planner.create_local_plan()])
    listed = ", ".join(repr(f"k{i:02d}") for i in range(20))
    assert str(info.value) == (
        "cannot load: 3 problem(s):\n"
        f"  23 key(s) of the destination are not in the checkpoint: {listed}, ... (3 more)"
        " (pass allow_missing_keys=True to skip them)\n"
        "  key 'o': the destination holds a tensor, the checkpoint an object\n"
        "  key 't': the checkpoint holds a tensor, the destination a list"
    )


def test_unflattened_load_and_unexpected_keys_listing():
    planner = ReferenceLoadPlanner(flatten=False, allow_missing_keys=True)
    planner.set_up_planner({"t": torch.zeros(4, 2), "x": {"y": 1}}, load_metadata(), True)
    with pytest.raises(LoadContractError) as info:
        planner.create_global_plan([planner.create_local_plan()])
    assert str(info.value) == (
        "cannot load: 1 problem(s):\n"
        "  1 key(s) of the checkpoint are not in the destination (held by no rank): 'o'"
        " (a world that shrank would drop them; pass allow_unexpected_keys=True to ignore them)"
    )
    assert planner.paths == {"t": ("t",), "x": ("x",)}


def test_a_cast_load_stages_in_the_saved_dtype_and_casts_on_commit():
    planner = ReferenceLoadPlanner(cast_dtypes=True, allow_unexpected_keys=True)
    dest = {"t": torch.zeros(4, 2, dtype=torch.float64)}
    planner.set_up_planner(dest, load_metadata(), True)
    plan = planner.create_local_plan()
    staged = planner.resolve_tensor(plan.items[1])
    assert staged.dtype == torch.float32 and staged.shape == (2, 2)
    staged.fill_(3.0)
    planner.commit_tensor(plan.items[1], staged)
    assert torch.equal(dest["t"][2:], torch.full((2, 2), 3.0, dtype=torch.float64))
    assert torch.equal(dest["t"][:2], torch.zeros(2, 2, dtype=torch.float64))


# -- resharding --------------------------------------------------------------------------


def test_read_items_cover_a_destination_from_chunks_of_every_length():
    # saved chunks of lengths 5, 1, 2 along dim 0; a destination [5, 8) overlaps the first by
    # none, so bisection must still find the long chunk that starts 4 before [4, 9)
    saved = [chunk((0, 0), (5, 2)), chunk((5, 0), (1, 2)), chunk((6, 0), (2, 2))]
    index = SavedChunkIndex(saved)
    result = read_items_for_chunk("t", index, chunk((4, 1), (3, 1)))
    assert result.uncovered == 0
    assert [
        (tuple(i.dest_offsets), tuple(i.storage_offsets), tuple(i.lengths), i.storage_index)
        for i in result.items
    ] == [
        ((0, 0), (4, 1), (1, 1), MetadataIndex("t", (0, 0))),
        ((1, 0), (0, 1), (1, 1), MetadataIndex("t", (5, 0))),
        ((2, 0), (0, 1), (1, 1), MetadataIndex("t", (6, 0))),
    ]
    assert all(i.dest_index == MetadataIndex("t", (4, 1)) for i in result.items)
    assert read_items_for_chunk("t", index, chunk((8, 0), (0, 2))).items == []


def test_uncovered_elements_and_scalars():
    index = SavedChunkIndex([chunk((0,), (3,)), chunk((5,), (0,))])
    result = read_items_for_chunk("t", index, chunk((2,), (4,)), MetadataIndex("t", (7,)))
    assert (result.uncovered, len(result.items)) == (3, 1)
    assert result.items[0].dest_index == MetadataIndex("t", (7,))
    scalar = SavedChunkIndex([chunk((), ())])
    result = read_items_for_chunk("s", scalar, chunk((), ()))
    assert result.uncovered == 0 and [tuple(i.lengths) for i in result.items] == [()]
    assert read_items_for_chunk("s", SavedChunkIndex([]), chunk((), ())).uncovered == 1


def test_replicated_save_and_sharded_load_end_to_end():
    values = mesh_values("t", (6, 4), (2, 3), [Replicate(), Shard(1)], meta=True)
    result, _ = simulate_save_planning([{"t": v} for v in values], ReferenceSavePlanner)
    index = SavedChunkIndex(result.metadata.state_dict_metadata["t"].chunks)
    total = 0
    for dest in mesh_values("t", (6, 4), (4,), [Shard(0)], meta=True):
        r = read_items_for_chunk("t", index, dest.pieces[0].chunk)
        assert r.uncovered == 0
        total += sum(int(torch.Size(i.lengths).numel()) for i in r.items)
    assert total == 24


def test_load_bytes_decodes_into_the_state_dict_and_names_the_key_when_unsafe():
    from ckptconf.reference.serialization import encode_object

    planner = ReferenceLoadPlanner(allow_unexpected_keys=True)
    dest = {"m": {"o": None}}
    metadata = Metadata(state_dict_metadata={"m.o": BytesStorageMetadata()})
    planner.set_up_planner(dest, metadata, True)
    (item,) = planner.create_local_plan().items
    planner.load_bytes(item, io.BytesIO(encode_object({"lr": 0.5})))
    assert dest == {"m": {"o": {"lr": 0.5}}}
    assert planner.values["m.o"] == {"lr": 0.5}
    with pytest.raises(Exception) as info:
        planner.load_bytes(item, io.BytesIO(b"not a pickle"))
    assert "object for key 'm.o' cannot be loaded safely" in str(info.value)


def test_a_cast_load_stages_in_a_saved_dtype_other_than_the_default():
    metadata = Metadata(
        state_dict_metadata={"h": tensor_entry((3,), [((0,), (3,))], torch.float16)}
    )
    planner = ReferenceLoadPlanner(cast_dtypes=True)
    dest = {"h": torch.zeros(3, dtype=torch.float64)}
    planner.set_up_planner(dest, metadata, True)
    (item,) = planner.create_local_plan().items
    staged = planner.resolve_tensor(item)
    assert staged.dtype == torch.float16 and staged.shape == (3,)
    staged.copy_(torch.tensor([1.5, 2.5, -1.0]))
    planner.commit_tensor(item, staged)
    assert torch.equal(dest["h"], torch.tensor([1.5, 2.5, -1.0], dtype=torch.float64))


def test_a_key_that_is_a_tensor_on_one_rank_and_an_object_on_another_is_a_plan_problem():
    states = [{"x": torch.zeros(2)}, {"x": "text"}]
    for verify in (False, True):
        with pytest.raises(PlanValidationError) as info:
            simulate_save_planning(states, lambda v=verify: ReferenceSavePlanner(verify_replicas=v))
        assert info.value.problems == [
            "rank 1: write item 'x' writes bytes but the metadata records a tensor"
        ]


def test_replica_problems_are_sorted_by_key():
    keys = ["d", "a", "c", "b", "e"]
    states = [{k: torch.full((2,), float(r)) for k in keys} for r in range(2)]
    with pytest.raises(PlanValidationError) as info:
        simulate_save_planning(states, lambda: ReferenceSavePlanner(verify_replicas=True))
    assert [p.split("'")[1] for p in info.value.problems] == sorted(keys)


def test_sweep_finds_overlaps_whatever_the_order_chunks_come_in(monkeypatch):
    monkeypatch.setattr(validation, "_GRID_CELLS_PER_CHUNK", 0)
    monkeypatch.setattr(validation, "_GRID_MIN_CELLS", 0)
    # listed out of position order: [0, 2), [5, 8), [1, 3); [0, 2) and [1, 3) overlap
    chunks = [chunk((0,), (2,)), chunk((5,), (3,)), chunk((1,), (2,))]
    assert chunk_layout_problems("k", (8,), chunks) == [
        "key 'k': chunks offsets (0,) sizes (2,) and offsets (1,) sizes (2,) overlap at offsets (1,) sizes (1,)"
    ]


def test_a_missing_key_does_not_stop_planning_the_keys_after_it():
    planner = ReferenceLoadPlanner(allow_missing_keys=True, allow_unexpected_keys=True)
    planner.set_up_planner(
        {"absent": torch.zeros(1), "o": None, "t": torch.zeros(4, 2)}, load_metadata()
    )
    assert planner.is_coordinator is False
    plan = planner.create_local_plan()
    assert [(i.dest_index.fqn, i.type) for i in plan.items] == [
        ("o", LoadItemType.BYTE_IO),
        ("t", LoadItemType.TENSOR),
        ("t", LoadItemType.TENSOR),
    ]


def test_shape_and_dtype_problems_are_listed_exactly():
    planner = ReferenceLoadPlanner(allow_unexpected_keys=True)
    metadata = Metadata(
        state_dict_metadata={
            "a": tensor_entry((4, 2), [((0, 0), (4, 2))]),
            "b": tensor_entry((3,), [((0,), (3,))], torch.int32),
        }
    )
    planner.set_up_planner({"a": torch.zeros(4, 3), "b": torch.zeros(3)}, metadata, True)
    with pytest.raises(LoadContractError) as info:
        planner.create_global_plan([planner.create_local_plan()])
    assert str(info.value) == (
        "cannot load: 2 problem(s):\n"
        "  key 'a': saved with global shape (4, 2), destination has (4, 3)\n"
        "  key 'b': saved as torch.int32, destination is torch.float32"
        " (pass cast_dtypes=True to cast on load)"
    )


def _forced_sweep(monkeypatch):
    monkeypatch.setattr(validation, "_GRID_CELLS_PER_CHUNK", 0)
    monkeypatch.setattr(validation, "_GRID_MIN_CELLS", 0)


def test_sweep_compares_two_chunks_and_identical_boxes(monkeypatch):
    _forced_sweep(monkeypatch)
    assert chunk_layout_problems("k", (4,), [chunk((0,), (3,)), chunk((2,), (2,))]) == [
        "key 'k': chunks offsets (0,) sizes (3,) and offsets (2,) sizes (2,) overlap at offsets (2,) sizes (1,)"
    ]
    same = [chunk((0, 0), (2, 2))] * 3
    assert chunk_layout_problems("k", (2, 2), same, owners=["r0", "r1", "r2"]) == [
        "key 'k': chunks offsets (0, 0) sizes (2, 2) (r0) and offsets (0, 0) sizes (2, 2) (r1) overlap at offsets (0, 0) sizes (2, 2)",
        "key 'k': chunks offsets (0, 0) sizes (2, 2) (r0) and offsets (0, 0) sizes (2, 2) (r2) overlap at offsets (0, 0) sizes (2, 2)",
    ]


def test_sweep_lists_ten_overlaps_across_slabs(monkeypatch):
    _forced_sweep(monkeypatch)
    # rows 0..8 and 10 hold one overlapping pair each, row 9 three: 13 pairs, 10 listed, in row order
    chunks, owners = [], []
    for row in range(11):
        boxes = [((row, 0), (1, 3)), ((row, 1), (1, 3))]
        if row == 9:
            boxes.append(((row, 2), (1, 2)))
        for n, (o, s) in enumerate(boxes):
            chunks.append(chunk(o, s))
            owners.append(f"row {row} #{n}")
    problems = chunk_layout_problems("k", (11, 4), chunks, owners=owners)
    assert len(problems) == 10
    assert [p.split("(")[3].split(")")[0] for p in problems] == [
        *(f"row {r} #0" for r in range(9)),
        "row 9 #0",
    ]


def test_a_one_element_tensor_is_still_checked_for_overlaps_and_gaps():
    assert chunk_layout_problems("t", (1,), [chunk((0,), (1,))] * 2) == [
        "key 't': chunks offsets (0,) sizes (1,) and offsets (0,) sizes (1,) overlap at offsets (0,) sizes (1,)"
    ]
    assert chunk_layout_problems("t", (1, 1), []) == [
        "key 't': 1 of 1 elements are not covered by any chunk (gaps at offsets (0, 0) sizes (1, 1))"
    ]


def test_twenty_missing_keys_are_all_listed_without_a_remainder():
    planner = ReferenceLoadPlanner(allow_unexpected_keys=True)
    planner.set_up_planner({f"k{i:02d}": torch.zeros(1) for i in range(20)}, load_metadata())
    with pytest.raises(LoadContractError) as info:
        planner.create_global_plan([planner.create_local_plan()])
    listed = ", ".join(repr(f"k{i:02d}") for i in range(20))
    assert str(info.value) == (
        "cannot load: 1 problem(s):\n"
        f"  20 key(s) of the destination are not in the checkpoint: {listed}"
        " (pass allow_missing_keys=True to skip them)"
    )
