"""Each planted bug really changes behaviour: its observable effect, next to the correct reference.

Cheap checks in this process (the reference drivers need no process group; multi-rank
saves run as simulated worlds), and one small real world for the DTensor and
ShardedTensor geometry bugs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ckptconf.conformance import select_backend
from ckptconf.conformance.kit.injection import FaultyStorageWriter
from ckptconf.harness.simulated import (
    checkpointable,
    chunk_list_value,
    index_encoded,
    simulate_save_planning,
)
from ckptconf.reference import (
    Checkpointer,
    CheckpointError,
    FileSystemReader,
    FileSystemWriter,
    ReferenceSavePlanner,
    async_save,
    load,
    local_pieces,
    save,
)
from ckptconf.reference.dedup import dedup_save_plans
from ckptconf.reference.errors import PlanValidationError
from ckptconf.reference.geometry import chunk_overlap
from ckptconf.reference.resharding import SavedChunkIndex, read_items_for_chunk
from ckptconf.reference.state_values import TensorPiece
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

from tests.planted import (
    PLANTED,
    _common,
    asyncsave,
    dedup,
    faults,
    geometry,
    validation,
)

REFERENCE = "tests.planted._common:reference_parts"
"""The correct backend the bugs are compared with: the reference parts, through the same drivers."""


def backend_of(name: str):
    return select_backend(f"{_module_of(name)}:{name}")


def _module_of(name: str) -> str:
    return next(b.spec for b in PLANTED if b.name == name).split(":")[0]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


def chunk(offsets, sizes) -> ChunkStorageMetadata:
    return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))


def save_load(backend, state: dict, dest: dict, path: str) -> dict:
    backend.run_save(state, path)
    backend.run_load(dest, path)
    return dest


def raises(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - CheckpointException is a BaseException
        return exc
    return None


def piece_state(fqn: str, shape, chunks, *, blank: bool = False) -> dict:
    """A one-process state holding ``chunks`` of an index-encoded tensor (a checkpointable value)."""
    fill = None if blank else index_encoded(shape)
    value = chunk_list_value(fqn, shape, chunks, dtype=torch.float64, fill=fill)
    return {fqn: checkpointable(value)}


def piece_values(state: dict, fqn: str) -> list[torch.Tensor]:
    return [p.view for p in state[fqn].pieces]


def expected_piece(shape, offsets, sizes) -> torch.Tensor:
    return index_encoded(shape)(tuple(offsets), tuple(sizes))


# --- the registry --------------------------------------------------------------------------------


def test_registry_names_specs_and_descriptions():
    names = [b.name for b in PLANTED]
    assert len(names) == len(set(names)) >= 45
    for bug in PLANTED:
        backend = select_backend(bug.spec)
        assert backend.name == bug.name
        assert bug.description and "\n" not in bug.description
        assert bug.target_suites
    assert 8 <= sum(b.fast for b in PLANTED) <= 12


def test_every_planted_bug_has_a_check_here():
    missing = [b.name for b in PLANTED if f"test_{b.name}" not in globals()]
    assert not missing, f"planted bugs without a check in this module: {missing}"


# --- geometry ------------------------------------------------------------------------------------


def test_wrong_offset_on_one_dim():
    index = SavedChunkIndex([chunk((0,), (4,)), chunk((4,), (4,))])
    piece = TensorPiece(MetadataIndex("w", (5,)), chunk((5,), (2,)), torch.zeros(2))
    good = read_items_for_chunk("w", index, piece.chunk, piece.index).items
    bad = geometry.GlobalRowOffsetLoadPlanner().read_items("w", index, piece, None).items
    assert [tuple(i.storage_offsets) for i in good] == [(1,)]
    assert [tuple(i.storage_offsets) for i in bad] == [(5,)]


def test_uneven_split_off_by_one():
    from torch.distributed.tensor import Shard

    def true_offset(shape, parts, index):
        return local_pieces(shape, (parts,), [Shard(0)], (index,))[0].global_offsets

    assert geometry.floor_split_offsets((5,), (2,), [Shard(0)], (1,)) == (2,)
    assert true_offset((5,), 2, 1) == (3,)
    assert geometry.floor_split_offsets((4,), (2,), [Shard(0)], (1,)) == true_offset((4,), 2, 1)


def test_dims_swapped_on_2d_mesh():
    from torch.distributed.tensor import Shard

    assert geometry.column_major_coordinate((2, 2), (0, 1)) == (1, 0)
    assert geometry.column_major_coordinate((1, 2), (0, 1)) == (0, 1)
    placements = [Shard(0), Shard(1)]
    right = local_pieces((4, 4), (2, 2), placements, (0, 1))[0].global_offsets
    wrong = local_pieces((4, 4), (2, 2), placements, (1, 0))[0].global_offsets
    assert right != wrong


def test_strided_shard_as_shard():
    from torch.distributed.tensor.placement_types import _StridedShard

    placements = [_StridedShard(0, split_factor=2)]
    pieces = [local_pieces((8,), (2,), placements, (r,)) for r in range(2)]
    assert chunk_overlap(pieces[0][0].chunk(), pieces[1][0].chunk()) is None
    as_shard = [
        geometry.first_offset_chunk(
            [TensorPiece(MetadataIndex("w"), p.chunk(), torch.zeros(0)) for p in rank_pieces],
            (sum(p.sizes[0] for p in rank_pieces),),
        )
        for rank_pieces in pieces
    ]
    assert chunk_overlap(as_shard[0], as_shard[1]) is not None


def test_first_overlapping_chunk_only():
    index = SavedChunkIndex([chunk((0,), (4,)), chunk((4,), (4,))])
    piece = TensorPiece(MetadataIndex("w", (2,)), chunk((2,), (4,)), torch.zeros(4))
    good = read_items_for_chunk("w", index, piece.chunk, piece.index)
    bad = geometry.FirstOverlapLoadPlanner().read_items("w", index, piece, None)
    assert (len(good.items), good.uncovered) == (2, 0)
    assert (len(bad.items), bad.uncovered) == (1, 0)


def test_saved_rank_mapping_on_world_change():
    chunks = [chunk((4,), (4,)), chunk((0,), (4,))]
    assert tuple(geometry.saved_chunk_for_rank(chunks, 1).offsets) == (4,)
    assert tuple(geometry.saved_chunk_for_rank(chunks, 2).offsets) == (0,)


def _sharded_states(shape, per_rank) -> list[dict]:
    fill = index_encoded(shape)
    return [
        {"w": checkpointable(chunk_list_value("w", shape, chunks, dtype=torch.float64, fill=fill))}
        for chunks in per_rank
    ]


def test_wrong_global_size_in_metadata():
    states = _sharded_states((4,), [[((0,), (2,))], [((2,), (2,))]])
    good, _ = simulate_save_planning(states, ReferenceSavePlanner)
    assert tuple(good.metadata.state_dict_metadata["w"].size) == (4,)
    with pytest.raises(PlanValidationError, match="out of bounds"):
        simulate_save_planning(states, geometry.LocalSizeSavePlanner)


def test_submesh_rank_as_coordinate_zero():
    assert geometry.coordinate_or_origin(None, 2) == (0, 0)
    assert geometry.coordinate_or_origin((1, 0), 2) == (1, 0)


def test_checkpointable_subclass_ignored():
    states = _sharded_states((4,), [[((2,), (2,))]])
    planner = ReferenceSavePlanner()
    planner.set_up_planner(states[0], None, True)
    assert [tuple(i.index.offset) for i in planner.create_local_plan().items] == [(2,)]
    buggy = geometry.ChunkListIgnoredSavePlanner()
    buggy.set_up_planner(states[0], None, True)
    items = buggy.create_local_plan().items
    assert [(tuple(i.index.offset), i.type) for i in items] == [((0,), WriteItemType.TENSOR)]


# --- a real world for DTensor and ShardedTensor geometry -----------------------------------------


def _loads_wrong_on_two_ranks(tmp_path: Path, bug: str, saved: tuple, loaded: tuple) -> None:
    """Save ``w`` (5 x 3) under ``saved`` on 2 ranks, load under ``loaded``: the reference loads
    every value, the bug does not."""
    from ckptconf.conformance import (
        ConformanceFailure,
        Layout,
        SaveLoadCase,
        TensorSpec,
        check_save_then_load,
    )

    case = SaveLoadCase((TensorSpec("w", (5, 3)),), (Layout(*saved),), (Layout(*loaded),), 2, 2)
    check_save_then_load(select_backend(REFERENCE), case, tmp_path / "good")
    with pytest.raises(ConformanceFailure, match="loaded value.* differ from what was saved"):
        check_save_then_load(backend_of(bug), case, tmp_path / "bad")


@pytest.mark.multiprocess
def test_sharded_tensor_offsets_ignored(tmp_path):
    layout = ("sharded_tensor", (), (), 0)
    _loads_wrong_on_two_ranks(tmp_path, "sharded_tensor_offsets_ignored", layout, layout)


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "bug, saved, loaded",
    [
        ("uneven_split_off_by_one", ("dtensor", (2,), ("S0",)), ("dtensor", (2,), ("S0",))),
        (
            "saved_rank_mapping_on_world_change",
            ("dtensor", (2,), ("S0",)),
            ("dtensor", (2,), ("R",)),
        ),
    ],
)
def test_dtensor_geometry_bugs_on_two_ranks(tmp_path, bug, saved, loaded):
    _loads_wrong_on_two_ranks(tmp_path, bug, saved, loaded)


# --- dedup ---------------------------------------------------------------------------------------


def _item(fqn, offsets, sizes, size, dtype=torch.float32, kind=WriteItemType.SHARD) -> WriteItem:
    return WriteItem(
        index=MetadataIndex(fqn, offsets),
        type=kind,
        tensor_data=TensorWriteData(
            chunk(offsets, sizes), TensorProperties(dtype=dtype), torch.Size(size)
        ),
    )


def _written(plans) -> list[list[tuple]]:
    return [[(i.index.fqn, tuple(i.index.offset)) for i in p.items] for p in plans]


def test_dedup_key_without_offsets():
    plans = [SavePlan([_item("w", (0,), (2,), (4,))]), SavePlan([_item("w", (2,), (2,), (4,))])]
    assert _written(dedup_save_plans(plans)) == [[("w", (0,))], [("w", (2,))]]
    assert _written(dedup.fqn_only_dedup(plans)) == [[("w", (0,))], []]


def test_dedup_owner_not_a_holder():
    replica = _item("r", (0,), (4,), (4,), kind=WriteItemType.TENSOR)
    own = [_item("w", (r * 8,), (8,), (16,)) for r in range(2)]
    plans = [SavePlan([own[0], replica]), SavePlan([own[1], replica]), SavePlan([])]
    assert ("r", (0,)) in sum(_written(dedup_save_plans(plans)), [])
    assert ("r", (0,)) not in sum(_written(dedup.balanced_dedup_any_rank(plans)), [])


def test_dedup_keeps_stale_replica():
    states = [{"r": torch.zeros(3)}, {"r": torch.ones(3)}]  # rank 1's replica differs
    with pytest.raises(PlanValidationError, match="replicas differ"):
        simulate_save_planning(states, lambda: ReferenceSavePlanner(verify_replicas=True))
    result, _ = simulate_save_planning(states, dedup.StaleReplicaSavePlanner)
    assert _written(result.global_plan) == [[], [("r", (0,))]]


def test_no_dedup_duplicate_chunks(path):
    states = [{"r": torch.arange(3.0)}, {"r": torch.arange(3.0)}]
    good, _ = simulate_save_planning(states, ReferenceSavePlanner)
    bad, _ = simulate_save_planning(states, dedup.NoDedupSavePlanner)
    assert len(good.metadata.state_dict_metadata["r"].chunks) == 1
    assert len(bad.metadata.state_dict_metadata["r"].chunks) == 2


def test_nondeterministic_plan_order():
    import random

    items = [_item(f"k{i}", (0,), (4,), (4,), kind=WriteItemType.TENSOR) for i in range(8)]
    plans = [SavePlan(list(items)) for _ in range(4)]
    reference = {str(_written(dedup_save_plans(plans))) for _ in range(5)}
    shuffled = {str(_written(dedup.shuffled_dedup(plans, random.Random(s)))) for s in range(5)}
    assert len(reference) == 1 and len(shuffled) > 1


# --- storage -------------------------------------------------------------------------------------


def test_ranged_read_off_by_bytes(path):
    shape = (1024,)  # 8 KiB of float64: the piece starts mid-page
    for name, expect_right in (("reference", True), ("ranged_read_off_by_bytes", False)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        target = f"{path}-{name}"
        backend.run_save(piece_state("w", shape, [((0,), shape)]), target)
        dest = piece_state("w", shape, [((700,), (100,))], blank=True)
        backend.run_load(dest, target)
        right = torch.equal(piece_values(dest, "w")[0], expected_piece(shape, (700,), (100,)))
        assert right == expect_right, name


def test_last_chunk_skipped(path):
    state = {"a": torch.arange(3.0), "b": torch.arange(4.0) + 1}
    good = save_load(
        select_backend(REFERENCE), state, {"a": torch.zeros(3), "b": torch.zeros(4)}, path
    )
    bad = save_load(
        backend_of("last_chunk_skipped"),
        state,
        {"a": torch.zeros(3), "b": torch.zeros(4)},
        path + "2",
    )
    assert torch.equal(good["b"], state["b"]) and not torch.equal(bad["b"], state["b"])
    assert torch.equal(bad["a"], state["a"])


def test_empty_shards_dropped(path):
    fill = index_encoded((4,))
    state = {"w": chunk_list_value("w", (4,), [((0,), (4,)), ((4,), (0,))], fill=fill)}
    select_backend(REFERENCE).run_save(state, path)
    assert len(FileSystemReader(path).read_metadata().state_dict_metadata["w"].chunks) == 2
    error = raises(lambda: backend_of("empty_shards_dropped").run_save(state, path + "2"))
    assert error is not None and "no data region" in str(error)


def test_truncated_final_write(path):
    state = {"a": torch.arange(10.0)}
    good = save_load(select_backend(REFERENCE), state, {"a": torch.zeros(10)}, path)
    assert torch.equal(good["a"], state["a"])
    backend = backend_of("truncated_final_write")
    backend.run_save(state, path + "2")  # reported as success
    error = raises(lambda: backend.run_load({"a": torch.zeros(10)}, path + "2"))
    assert error is not None and "truncated" in str(error)


def test_reader_ignores_storage_offsets(path):
    shape = (8,)
    for name, expect_right in (("reference", True), ("reader_ignores_storage_offsets", False)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        target = f"{path}-{name}"
        backend.run_save(piece_state("w", shape, [((0,), (8,))]), target)
        dest = piece_state("w", shape, [((3,), (4,))], blank=True)
        backend.run_load(dest, target)
        right = torch.equal(piece_values(dest, "w")[0], expected_piece(shape, (3,), (4,)))
        assert right == expect_right, name


def _flip_first_data_byte(path: str) -> None:
    data_file = next(Path(path).glob("gen-*/r0.bin"))
    raw = bytearray(data_file.read_bytes())
    raw[1] ^= 0x40
    data_file.write_bytes(bytes(raw))


def test_checksum_not_verified(path):
    state = {"a": torch.arange(8.0)}
    select_backend(REFERENCE).run_save(state, path)
    _flip_first_data_byte(path)
    error = raises(lambda: select_backend(REFERENCE).run_load({"a": torch.zeros(8)}, path))
    assert isinstance(error, CheckpointError) and "checksum mismatch" in str(error)
    dest = {"a": torch.zeros(8)}
    backend_of("checksum_not_verified").run_load(dest, path)
    assert not torch.equal(dest["a"], state["a"])


def test_read_errors_become_zeros(path):
    state = {"a": torch.arange(8.0) + 1}
    select_backend(REFERENCE).run_save(state, path)
    _flip_first_data_byte(path)
    dest = {"a": torch.full((8,), 5.0)}
    backend_of("read_errors_become_zeros").run_load(dest, path)
    assert torch.equal(dest["a"], torch.zeros(8))


def test_stale_metadata_cache(path):
    for name in ("reference", "stale_metadata_cache"):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        target = f"{path}-{name}"
        save_load(backend, {"a": torch.zeros(3)}, {"a": torch.ones(3)}, target)
        loaded = save_load(backend, {"a": torch.full((3,), 7.0)}, {"a": torch.ones(3)}, target)
        assert torch.equal(loaded["a"], torch.full((3,), 7.0)) == (name == "reference"), name


def test_resave_leaves_old_keys(path):
    for name in ("reference", "resave_leaves_old_keys"):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        target = f"{path}-{name}"
        backend.run_save({"a": torch.zeros(2), "old": torch.zeros(2)}, target)
        backend.run_save({"a": torch.ones(2)}, target)
        keys = set(FileSystemReader(target).read_metadata().state_dict_metadata)
        assert keys == ({"a"} if name == "reference" else {"a", "old"}), name


def test_metadata_missing_bytes_entries(path):
    state = {"t": torch.arange(2.0), "step": 5}
    good = save_load(select_backend(REFERENCE), state, {"t": torch.zeros(2), "step": None}, path)
    assert good["step"] == 5
    backend_of("metadata_missing_bytes_entries").run_save(state, path + "2")
    entries = FileSystemReader(path + "2").read_metadata().state_dict_metadata
    assert set(entries) == {"t"}


def test_overwrites_in_place(path):
    for name in ("reference", "overwrites_in_place"):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        target = f"{path}-{name}"
        backend.run_save(
            {"first_key_with_a_long_name": torch.zeros(2), "b": torch.zeros(3)}, target
        )
        error = raises(lambda b=backend, t=target: b.run_save({"a": torch.ones(2)}, t))
        if error is None:  # the shorter metadata document was written over the longer one
            error = raises(lambda b=backend, t=target: b.run_load({"a": torch.zeros(2)}, t))
        assert (error is None) == (name == "reference"), (name, error)


def test_prefix_listing(path):
    for name in ("reference", "prefix_listing"):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        backend.run_save({"a": torch.zeros(2)}, f"{path}-{name}/step_1")
        backend.run_save({"b": torch.ones(2)}, f"{path}-{name}/step_10")
        keys = set(
            backend.storage_reader(f"{path}-{name}/step_1").read_metadata().state_dict_metadata
        )
        assert keys == ({"a"} if name == "reference" else {"a", "b"}), name


def test_zero_fill_short_read(path):
    state = {"a": torch.arange(8.0) + 1}
    select_backend(REFERENCE).run_save(state, path)
    data_file = next(Path(path).glob("gen-*/r0.bin"))
    data_file.write_bytes(data_file.read_bytes()[:-8])  # the last two float32 elements cut
    error = raises(lambda: select_backend(REFERENCE).run_load({"a": torch.zeros(8)}, path))
    assert isinstance(error, CheckpointError), error
    dest = {"a": torch.full((8,), 5.0)}
    backend_of("zero_fill_short_read").run_load(dest, path)
    assert torch.equal(dest["a"], torch.cat([state["a"][:-2], torch.zeros(2)]))


# --- faults --------------------------------------------------------------------------------------


def _faulty_save(backend, path, hook):
    writer = FaultyStorageWriter(backend.storage_writer(path), hook=hook, rank=0)
    return raises(lambda: backend.run_save({"a": torch.arange(4.0)}, path, storage_writer=writer))


@pytest.fixture
def on_rank_one(monkeypatch):
    """The planted drivers believe they run on rank 1 (the fault wrappers still fail here)."""
    monkeypatch.setattr(_common, "current_rank", lambda: 1)


def test_exception_swallowed_on_non_coordinator(path, on_rank_one):
    assert _faulty_save(select_backend(REFERENCE), path, "prepare_local_plan") is not None
    bug = backend_of("exception_swallowed_on_non_coordinator")
    assert _faulty_save(bug, path + "2", "prepare_local_plan") is None


def test_failed_write_future_ignored(path):
    good = _faulty_save(select_backend(REFERENCE), path, "write_data_future")
    bad = _faulty_save(backend_of("failed_write_future_ignored"), path + "2", "write_data_future")
    assert "injected fault at write_data_future" in str(good)
    assert bad is not None and "injected fault" not in str(bad)


def test_error_raised_only_on_coordinator(path, on_rank_one):
    assert _faulty_save(select_backend(REFERENCE), path, "write_data") is not None
    assert (
        _faulty_save(backend_of("error_raised_only_on_coordinator"), path + "2", "write_data")
        is None
    )


def test_hang_on_non_coordinator_after_failure(path, on_rank_one, monkeypatch):
    barriers = []

    class FakeDist:
        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def barrier():
            barriers.append("entered a barrier the coordinator never reaches")

    monkeypatch.setattr(faults, "dist", FakeDist)
    assert _faulty_save(backend_of("hang_on_non_coordinator_after_failure"), path, "write_data")
    assert barriers
    monkeypatch.setattr(_common, "current_rank", lambda: 0)
    barriers.clear()
    assert _faulty_save(
        backend_of("hang_on_non_coordinator_after_failure"), path + "2", "write_data"
    )
    assert not barriers


def _previous_survives(name: str, path: str, hook: str) -> bool:
    backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
    backend.run_save({"a": torch.arange(4.0)}, path)
    writer = FaultyStorageWriter(backend.storage_writer(path), hook=hook, rank=0)
    assert raises(lambda: backend.run_save({"a": torch.ones(4)}, path, storage_writer=writer))
    dest = {"a": torch.zeros(4)}
    return raises(lambda: backend.run_load(dest, path)) is None and torch.equal(
        dest["a"], torch.arange(4.0)
    )


def test_metadata_before_data_no_atomic_rename(path):
    assert _previous_survives("reference", path, "write_data")
    assert not _previous_survives("metadata_before_data_no_atomic_rename", path + "2", "write_data")


def test_data_overwritten_in_place(path):
    assert _previous_survives("reference", path, "finish")
    assert not _previous_survives("data_overwritten_in_place", path + "2", "finish")


def test_checkpointer_passes_removed_argument(path):
    state = {"a": torch.arange(3.0)}
    Checkpointer(FileSystemWriter(path), FileSystemReader(path)).save(state)
    bug = backend_of("checkpointer_passes_removed_argument").checkpointer(path + "2")
    with pytest.raises(TypeError, match="coordinator"):
        bug.save(state)


# --- async save ----------------------------------------------------------------------------------


def test_async_reads_live_tensors(path):
    import threading

    for name, expect_saved in (("reference", 0.0), ("async_reads_live_tensors", -1.0)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        state = {"a": torch.zeros(1000)}
        busy = threading.Event()  # hold the bug's save thread until the state has changed
        asyncsave._executor("live").submit(busy.wait, 30)
        future = backend.run_async_save(state, f"{path}-{name}")
        state["a"].sub_(1)
        busy.set()
        future.result()
        loaded = {"a": torch.full((1000,), 9.0)}
        backend.run_load(loaded, f"{path}-{name}")
        assert loaded["a"][0].item() == expect_saved, name


def test_async_future_resolves_before_write(path):
    backend = backend_of("async_future_resolves_before_write")
    backend.run_async_save({"a": torch.arange(3.0)}, path).result()
    assert not (Path(path) / "ckptconf.json").exists()
    asyncsave.flush_uploads()
    assert (Path(path) / "ckptconf.json").exists()


def test_async_objects_not_copied(path):
    import threading

    for name, expect in (("reference", [1]), ("async_objects_not_copied", [1, 2])):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        state = {"t": torch.zeros(1), "o": [1]}
        staged = asyncsave.stage_tensors_only(state) if name != "reference" else None
        if staged is not None:
            assert staged["o"] is state["o"]
        busy = threading.Event()  # hold the bug's save thread until the state has changed
        asyncsave._executor("objects").submit(busy.wait, 30)
        future = backend.run_async_save(state, f"{path}-{name}")
        state["o"].append(2)
        busy.set()
        future.result()
        loaded = {"t": torch.zeros(1), "o": None}
        backend.run_load(loaded, f"{path}-{name}")
        assert loaded["o"] == expect, name


# --- loading -------------------------------------------------------------------------------------


def _rejects(name: str, saved: dict, dest: dict, path: str) -> bool:
    backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
    backend.run_save(saved, path)
    return raises(lambda: backend.run_load(dest, path)) is not None


def test_missing_key_ignored(path):
    saved = {"a": torch.ones(2)}
    assert _rejects("reference", saved, {"a": torch.zeros(2), "b": torch.zeros(2)}, path)
    assert not _rejects(
        "missing_key_ignored", saved, {"a": torch.zeros(2), "b": torch.zeros(2)}, path + "2"
    )


def test_unexpected_key_ignored(path):
    saved = {"a": torch.ones(2), "b": torch.ones(2)}
    assert _rejects("reference", saved, {"a": torch.zeros(2)}, path)
    assert not _rejects("unexpected_key_ignored", saved, {"a": torch.zeros(2)}, path + "2")


def test_silent_dtype_cast_on_load(path):
    saved = {"a": torch.arange(3.0, dtype=torch.float64)}
    assert _rejects("reference", saved, {"a": torch.zeros(3, dtype=torch.float32)}, path)
    assert not _rejects("silent_dtype_cast_on_load", saved, {"a": torch.zeros(3)}, path + "2")


def test_shape_mismatch_not_checked(path):
    saved = {"a": torch.arange(4.0)}
    assert _rejects("reference", saved, {"a": torch.zeros(2)}, path)
    dest = {"a": torch.zeros(2)}
    assert not _rejects("shape_mismatch_not_checked", saved, dest, path + "2")
    assert torch.equal(dest["a"], torch.arange(2.0))


def test_contract_checked_after_load(path):
    for name, modified in (("reference", False), ("contract_checked_after_load", True)):
        dest = {"a": torch.zeros(2), "b": torch.zeros(2)}
        assert _rejects(name, {"a": torch.ones(2)}, dest, f"{path}-{name}")
        assert bool(dest["a"].any()) == modified, name


def test_objects_decoded_as_none(path):
    state = {"t": torch.zeros(1), "o": [np.float64(1.5), {"a"}, 1]}
    good = save_load(select_backend(REFERENCE), state, {"t": torch.zeros(1), "o": None}, path)
    bad = save_load(
        backend_of("objects_decoded_as_none"), state, {"t": torch.zeros(1), "o": None}, path + "2"
    )
    assert good["o"] == [1.5, {"a"}, 1] and type(good["o"][0]) is np.float64 and bad["o"] is None


def test_objects_not_loaded(path):
    state = {"t": torch.zeros(1), "o": None, "n": 3}
    dest = {"t": torch.zeros(1), "o": "placeholder", "n": 0}
    good = save_load(select_backend(REFERENCE), state, dict(dest), path)
    bad = save_load(backend_of("objects_not_loaded"), state, dict(dest), path + "2")
    assert (good["o"], good["n"]) == (None, 3) and (bad["o"], bad["n"]) == ("placeholder", 0)


def test_nested_objects_set_by_flat_key(path):
    state = {"x": {"o": 5, "t": torch.ones(1)}}
    good = save_load(
        select_backend(REFERENCE), state, {"x": {"o": None, "t": torch.zeros(1)}}, path
    )
    bad = save_load(
        backend_of("nested_objects_set_by_flat_key"),
        state,
        {"x": {"o": None, "t": torch.zeros(1)}},
        path + "2",
    )
    assert good["x"]["o"] == 5
    assert bad["x"]["o"] is None and bad["x.o"] == 5


def test_bytes_values_lost(path):
    state = {"t": torch.zeros(1), "blob": b"abc", "n": 3}
    assert not _rejects("reference", state, {"t": torch.zeros(1), "blob": None, "n": None}, path)
    backend_of("bytes_values_lost").run_save(state, path + "2")
    assert set(FileSystemReader(path + "2").read_metadata().state_dict_metadata) == {"t", "n"}


def test_dotted_keys_split_on_load(path):
    state = {"a.b": 5, "t": torch.zeros(1)}
    good = save_load(select_backend(REFERENCE), state, {"a.b": None, "t": torch.zeros(1)}, path)
    bad = save_load(
        backend_of("dotted_keys_split_on_load"),
        state,
        {"a.b": None, "t": torch.zeros(1)},
        path + "2",
    )
    assert good == {"a.b": 5, "t": good["t"]}
    assert bad["a.b"] is None and bad["a"] == {"b": 5}


def test_list_containers_loaded_as_dicts(path):
    state = {"layers": [torch.ones(1), torch.ones(2)]}
    good = save_load(
        select_backend(REFERENCE), state, {"layers": [torch.zeros(1), torch.zeros(2)]}, path
    )
    bad = save_load(
        backend_of("list_containers_loaded_as_dicts"),
        state,
        {"layers": [torch.zeros(1), torch.zeros(2)]},
        path + "2",
    )
    assert isinstance(good["layers"], list) and isinstance(bad["layers"], dict)


def test_noncontiguous_destination_copy(path):
    state = {"a": torch.arange(6.0).reshape(2, 3)}
    for name, filled in (("reference", True), ("noncontiguous_destination_copy", False)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        dest = {"a": torch.zeros(3, 2).t()}
        save_load(backend, state, dest, f"{path}-{name}")
        assert torch.equal(dest["a"], state["a"]) == filled, name


# --- state-dict kinds ----------------------------------------------------------------------------


def test_zero_dim_saved_as_one_element(path):
    state = {"s": torch.tensor(3.0)}
    assert not _rejects("reference", state, {"s": torch.tensor(0.0)}, path)
    assert _rejects("zero_dim_saved_as_one_element", state, {"s": torch.tensor(0.0)}, path + "2")


def test_size0_tensors_dropped(path):
    state = {"e": torch.zeros(0, 3), "t": torch.ones(1)}
    assert not _rejects("reference", state, {"e": torch.zeros(0, 3), "t": torch.zeros(1)}, path)
    assert _rejects(
        "size0_tensors_dropped", state, {"e": torch.zeros(0, 3), "t": torch.zeros(1)}, path + "2"
    )


def test_bfloat16_saved_as_float16(path):
    state = {"a": torch.arange(1.0, 9.0, dtype=torch.bfloat16)}
    for name, same in (("reference", True), ("bfloat16_saved_as_float16", False)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        dest = save_load(
            backend, state, {"a": torch.zeros(8, dtype=torch.bfloat16)}, f"{path}-{name}"
        )
        assert torch.equal(dest["a"], state["a"]) == same, name


def test_bool_saved_as_uint8(path):
    state = {"m": torch.tensor([True, False, True])}
    assert not _rejects("reference", state, {"m": torch.zeros(3, dtype=torch.bool)}, path)
    assert _rejects(
        "bool_saved_as_uint8", state, {"m": torch.zeros(3, dtype=torch.bool)}, path + "2"
    )


def test_noncontiguous_view_storage_written(path):
    state = {"a": torch.arange(6.0).reshape(3, 2).t()}
    for name, same in (("reference", True), ("noncontiguous_view_storage_written", False)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        dest = save_load(backend, state, {"a": torch.zeros(2, 3)}, f"{path}-{name}")
        assert torch.equal(dest["a"], state["a"]) == same, name


def test_tied_weights_saved_once(path):
    tied = torch.arange(3.0)
    state = {"embed": tied, "head": tied}
    dest = {"embed": torch.zeros(3), "head": torch.zeros(3)}
    assert not _rejects("reference", state, dict(dest), path)
    assert _rejects("tied_weights_saved_once", state, dest, path + "2")


def test_key_collision_silent(path):
    state = {"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}}
    assert isinstance(
        raises(lambda: select_backend(REFERENCE).run_save(state, path)), CheckpointError
    )
    backend_of("key_collision_silent").run_save(state, path + "2")
    assert set(FileSystemReader(path + "2").read_metadata().state_dict_metadata) == {"a.b"}


# --- validation ----------------------------------------------------------------------------------


def _global_plan(planner_cls, plans):
    planner = planner_cls()
    planner.set_up_planner({}, None, True)
    return raises(lambda: planner.create_global_plan(plans))


def _validators_disagree(planner_cls, plans) -> None:
    built = [SavePlan([_item("w", o, s, (4,)) for o, s in rank]) for rank in plans]
    assert isinstance(_global_plan(ReferenceSavePlanner, built), PlanValidationError)
    assert _global_plan(planner_cls, built) is None


def test_validator_misses_gaps():
    _validators_disagree(validation.NoCoverageCheckPlanner, [[((0,), (2,))], [((3,), (1,))]])


def test_validator_misses_overlaps():
    _validators_disagree(validation.NoOverlapCheckPlanner, [[((0,), (3,))], [((2,), (2,))]])


def test_validator_misses_out_of_bounds():
    _validators_disagree(validation.NoBoundsCheckPlanner, [[((0,), (2,))], [((2,), (3,))]])


def test_validator_ignores_dtype_disagreement():
    plans = [
        SavePlan([_item("w", (0,), (2,), (4,))]),
        SavePlan([_item("w", (2,), (2,), (4,), dtype=torch.float64)]),
    ]
    assert isinstance(_global_plan(ReferenceSavePlanner, plans), PlanValidationError)
    assert _global_plan(validation.NoDtypeAgreementPlanner, plans) is None


# --- state that differs between ranks ------------------------------------------------------------


def test_unexpected_keys_checked_per_rank(path):
    from ckptconf.reference import ReferenceLoadPlanner

    from tests.planted.per_rank import PerRankKeysLoadPlanner

    select_backend(REFERENCE).run_save({"a": torch.zeros(2), "b": torch.ones(2)}, path)
    metadata = FileSystemReader(path).read_metadata()
    for planner_type, accepted in ((ReferenceLoadPlanner, True), (PerRankKeysLoadPlanner, False)):
        planners = [planner_type(), planner_type()]  # two ranks: one holds a, the other b
        planners[0].set_up_planner({"a": torch.zeros(2)}, metadata, True)
        planners[1].set_up_planner({"b": torch.zeros(2)}, metadata, False)
        plans = [p.create_local_plan() for p in planners]
        error = raises(lambda ps=planners, pl=plans: ps[0].create_global_plan(pl))
        assert (error is None) == accepted, (planner_type, error)


def test_int_keys_stringified_on_load(path):
    state = {"opt": {0: {"step": torch.tensor(2.0), "n": 7}}}
    select_backend(REFERENCE).run_save(state, path)
    for name, gains_str_key in (("reference", False), ("int_keys_stringified_on_load", True)):
        backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
        dest = {"opt": {0: {"step": torch.tensor(0.0), "n": 0}}}
        backend.run_load(dest, path)
        assert ("0" in dest["opt"]) == gains_str_key, (name, dest)
        assert (dest["opt"][0]["n"] == 7) != gains_str_key, (name, dest)


def test_meta_destinations_skipped(path):
    select_backend(REFERENCE).run_save({"w": torch.arange(4.0)}, path)
    error = raises(
        lambda: select_backend(REFERENCE).run_load({"w": torch.empty(4, device="meta")}, path)
    )
    assert isinstance(error, CheckpointError) and "meta device" in str(error)
    dest = {"w": torch.empty(4, device="meta")}
    backend_of("meta_destinations_skipped").run_load(dest, path)  # no error
    assert dest["w"].device.type == "meta"


@pytest.mark.multiprocess
def test_coordinator_group_rank_as_global(tmp_path):
    from ckptconf.harness import get_world

    from tests.planted import rank_functions

    for name, works in (("reference", True), ("coordinator_group_rank_as_global", False)):
        spec = REFERENCE if name == "reference" else f"tests.planted.per_rank:{name}"
        results = get_world(4).run(
            rank_functions.save_in_group_without_rank_0, spec, str(tmp_path / name), timeout=60
        )
        assert [r for r in results if r is not None] == ["saved" if works else "raised"] * 2, name


@pytest.mark.multiprocess
def test_replicas_written_by_coordinator_only(tmp_path):
    from ckptconf.harness import get_world

    from tests.planted import rank_functions

    for name, outcome in (
        ("reference", "loaded"),
        ("replicas_written_by_coordinator_only", "raised"),
    ):
        spec = REFERENCE if name == "reference" else f"tests.planted.per_rank:{name}"
        results = get_world(2).run(
            rank_functions.save_a_key_only_rank_1_holds, spec, str(tmp_path / name), timeout=60
        )
        assert results == [outcome, outcome], name


# --- durability order (crash_states) -----------------------------------------------------------


def _durability_events(name: str, path: str, monkeypatch) -> list[tuple[str, str]]:
    """``(what, file name)`` for every fsync and rename of a re-save by ``name`` (or the
    reference), in order."""
    import os

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.path.basename(str(target))))
        return real_replace(source, target)

    backend = select_backend(REFERENCE) if name == "reference" else backend_of(name)
    backend.run_save({"a": torch.zeros(2)}, path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    backend.run_save({"a": torch.ones(2)}, path)
    monkeypatch.undo()
    return events


def _first(events, event) -> int:
    return events.index(event) if event in events else len(events)


def test_metadata_renamed_before_data_synced(path, monkeypatch):
    for name in ("reference", "metadata_renamed_before_data_synced"):
        events = _durability_events(name, f"{path}-{name}", monkeypatch)
        data_synced = _first(events, ("fsync", "r0.bin"))
        renamed = _first(events, ("rename", "ckptconf.json"))
        assert renamed < len(events), events
        assert (data_synced < renamed) == (name == "reference"), (name, events)


def test_metadata_written_in_place(path, monkeypatch):
    for name in ("reference", "metadata_written_in_place"):
        events = _durability_events(name, f"{path}-{name}", monkeypatch)
        assert (("rename", "ckptconf.json") in events) == (name == "reference"), (name, events)


def test_metadata_synced_after_rename(path, monkeypatch):
    for name in ("reference", "metadata_synced_after_rename"):
        events = _durability_events(name, f"{path}-{name}", monkeypatch)
        renamed = _first(events, ("rename", "ckptconf.json"))
        synced_before = any(what == "fsync" and ".tmp" in file for what, file in events[:renamed])
        assert synced_before == (name == "reference"), (name, events)


# --- lifecycle: defects of two or more operations ------------------------------------------------


def test_reads_newest_generation(path):
    # two generations on disk (a load read the first's metadata, then a save made the second):
    # the reference reads the file its metadata names, the planted reader the newest one
    from ckptconf.reference.filesystem import DirectoryStore

    from tests.planted.lifecycle import NewestGenerationReader

    root = Path(path)
    for generation, data in (("gen-old", b"old!"), ("gen-new", b"new!")):
        (root / generation).mkdir(parents=True)
        (root / generation / "r0.bin").write_bytes(data)
    os.utime(root / "gen-old", ns=(1, 1))
    reference, planted = DirectoryStore(root), NewestGenerationReader(root).store
    assert bytes(reference.read_range("gen-old/r0.bin", 0, 4)) == b"old!"
    assert bytes(planted.read_range("gen-old/r0.bin", 0, 4)) == b"new!"
    assert NewestGenerationReader(root).verify_checksums is False


def test_lock_left_by_failed_save(path):
    from tests.planted.lifecycle import LockingWriter

    state = {"a": torch.ones(2)}
    for writer, retry_works in ((FileSystemWriter, True), (LockingWriter, False)):
        where = f"{path}-{writer.__name__}"
        failing = FaultyStorageWriter(writer(where), hook="write_data", rank=0)
        with pytest.raises(CheckpointError):
            save(state, storage_writer=failing)
        if retry_works:
            save(state, storage_writer=writer(where))
        else:
            with pytest.raises(CheckpointError, match="another save holds"):
                save(state, storage_writer=writer(where))


def test_save_plan_cached():
    from tests.planted.lifecycle import _CachingPlanners

    def plan(factory, state):
        planner = factory()
        planner.set_up_planner(state, None, True)
        return planner.create_local_plan()

    first, other = {"a": torch.ones(2)}, {"b": torch.ones(3)}  # one item each
    for factory, reused in ((ReferenceSavePlanner, False), (_CachingPlanners(), True)):
        plan(factory, first)
        keys = [item.index.fqn for item in plan(factory, other).items]
        assert keys == (["a"] if reused else ["b"]), (factory, keys)


def test_plan_cache_ignores_dtype():
    from ckptconf.reference.compact_plan import decode_save_plans, encode_save_plan
    from ckptconf.reference.plan_cache import PlanCache

    from tests.planted.lifecycle import DtypeBlindPlanCache

    def wire(dtype):
        planner = ReferenceSavePlanner()
        planner.set_up_planner({"w": torch.ones(2, dtype=dtype)}, None, True)
        return decode_save_plans([encode_save_plan(planner.create_local_plan())])

    for cache, same in ((PlanCache(), False), (DtypeBlindPlanCache(), True)):
        keys = {cache.key(wire(dtype), ("options",)) for dtype in (torch.float32, torch.float64)}
        assert (len(keys) == 1) == same, cache


def test_async_staging_buffers_reused(path):
    from tests.planted.lifecycle import _async_save_reusing_buffers

    first = _async_save_reusing_buffers({"w": torch.full((3,), 1.0)}, f"{path}-1")
    second = _async_save_reusing_buffers({"w": torch.full((3,), 2.0)}, f"{path}-2")
    first.result()
    second.result()
    loaded = {"w": torch.zeros(3)}
    load(loaded, f"{path}-1")
    assert torch.equal(loaded["w"], torch.full((3,), 2.0))  # the first save holds the second's
    async_save({"w": torch.full((3,), 1.0)}, f"{path}-3").result()  # the reference: its own
    load(loaded, f"{path}-3")
    assert torch.equal(loaded["w"], torch.full((3,), 1.0))


def test_racing_load_refused_on_one_rank(path, monkeypatch):
    # the load's last collective is done; then rank 1 alone finds a newer save and raises
    from tests.planted import lifecycle

    save({"a": torch.ones(2)}, path)

    class Racing(lifecycle._SeenReader):
        def read_data(self, plan, planner):
            result = super().read_data(plan, planner)
            save({"a": torch.zeros(2)}, storage_writer=lifecycle._keeping_writer(path))
            return result

    for rank, raises in ((0, False), (1, True)):
        monkeypatch.setattr(lifecycle, "current_rank", lambda rank=rank: rank)
        state = {"a": torch.zeros(2)}
        if raises:
            with pytest.raises(RuntimeError, match="a newer save committed meanwhile"):
                lifecycle._load_then_check_on_rank_1(state, storage_reader=Racing(path))
        else:
            lifecycle._load_then_check_on_rank_1(state, storage_reader=Racing(path))
            assert torch.equal(state["a"], torch.ones(2))  # the old checkpoint, whole
