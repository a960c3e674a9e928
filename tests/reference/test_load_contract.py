"""Load checks keys, shapes, dtypes and coverage before touching the destination."""

from __future__ import annotations

import json

import pytest
import torch
from ckptconf.conformance.kit.injection import FaultyStorageReader
from ckptconf.reference import (
    Checkpointer,
    CheckpointError,
    FileSystemReader,
    FileSystemWriter,
    InMemoryReader,
    InMemoryWriter,
    LoadContractError,
    MemoryStore,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    async_save,
    load,
    save,
)
from ckptconf.reference.filesystem import METADATA_FILE


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "ck"
    save(
        {
            "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.ones(4, dtype=torch.int32),
            "c": 5,
        },
        path,
    )
    return path


def untouched(dest) -> bool:
    return torch.equal(dest["a"], torch.full((2, 3), -1.0))


def test_missing_and_unexpected_keys_are_errors_by_default(saved):
    dest = {"a": torch.full((2, 3), -1.0), "z": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load(dest, saved)
    text = str(info.value)
    assert "1 key(s) of the destination are not in the checkpoint: 'z'" in text
    assert (
        "2 key(s) of the checkpoint are not in the destination (held by no rank): 'b', 'c'" in text
    )
    assert untouched(dest)


def test_an_error_names_the_checkpoint_it_is_about(saved, tmp_path):
    # a job that loads while another writes, or rotates paths, must know which checkpoint failed
    with pytest.raises(CheckpointError, match=f"checkpoint load planning of {saved} failed"):
        load({"z": torch.zeros(1)}, saved)
    with pytest.raises(CheckpointError, match=f"of {tmp_path / 'nothing'} failed"):
        load({"a": torch.zeros(2, 3)}, tmp_path / "nothing")
    reader = FaultyStorageReader(FileSystemReader(saved), hook="read_data", rank=0)
    with pytest.raises(CheckpointError, match=f"checkpoint load reading of {saved} failed"):
        load(
            {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.int32), "c": 0},
            storage_reader=reader,
        )


def test_missing_and_unexpected_keys_can_be_allowed(saved):
    dest = {"a": torch.full((2, 3), -1.0), "z": torch.zeros(1)}
    load(
        dest,
        saved,
        planner=ReferenceLoadPlanner(allow_missing_keys=True, allow_unexpected_keys=True),
    )
    assert torch.equal(dest["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(dest["z"], torch.zeros(1))


def test_shape_mismatch_names_both_shapes(saved):
    dest = {"a": torch.full((2, 3), -1.0), "b": torch.zeros(5, dtype=torch.int32), "c": None}
    with pytest.raises(
        CheckpointError, match=r"key 'b': saved with global shape \(4,\), destination has \(5,\)"
    ):
        load(dest, saved)
    assert untouched(dest)


def test_dtype_mismatch_is_an_error_unless_cast_is_asked_for(saved):
    dest = {
        "a": torch.full((2, 3), -1.0, dtype=torch.float64),
        "b": torch.zeros(4, dtype=torch.int32),
        "c": None,
    }
    with pytest.raises(
        CheckpointError, match=r"key 'a': saved as torch.float32, destination is torch.float64"
    ):
        load(dest, saved)
    assert torch.equal(dest["a"], torch.full((2, 3), -1.0, dtype=torch.float64))
    load(dest, saved, planner=ReferenceLoadPlanner(cast_dtypes=True))
    assert dest["a"].dtype == torch.float64
    assert torch.equal(dest["a"], torch.arange(6, dtype=torch.float64).reshape(2, 3))


def test_tensor_versus_object_mismatch(saved):
    dest = {
        "a": torch.full((2, 3), -1.0),
        "b": torch.zeros(4, dtype=torch.int32),
        "c": torch.zeros(1),
    }
    with pytest.raises(
        CheckpointError, match=r"key 'c': the destination holds a tensor, the checkpoint an object"
    ):
        load(dest, saved)


def test_uncovered_destination_elements_are_reported(saved):
    doc = json.loads((saved / METADATA_FILE).read_text())
    entry = next(t for t in doc["tensors"] if t["key"] == "a")
    entry["size"] = [3, 3]  # claims a third row that no chunk holds
    (saved / METADATA_FILE).write_text(json.dumps(doc))
    dest = {"a": torch.full((3, 3), -1.0), "b": torch.zeros(4, dtype=torch.int32), "c": None}
    with pytest.raises(
        CheckpointError,
        match=r"key 'a': 3 element\(s\) of the destination piece at offsets \(0, 0\) sizes \(3, 3\) are in no saved chunk",
    ):
        load(dest, saved)
    assert torch.equal(dest["a"], torch.full((3, 3), -1.0))


def test_all_problems_are_reported_together(saved):
    dest = {"a": torch.zeros(3, 3), "b": torch.zeros(4), "c": None}
    with pytest.raises(CheckpointError) as info:
        load(dest, saved)
    assert "2 problem(s)" in str(info.value)
    assert isinstance(info.value.failures[0][0], Exception)
    assert info.value.failures[0][0].type_name == "LoadContractError"


def test_planner_error_type_is_a_value_error():
    assert issubclass(LoadContractError, ValueError)


def test_checkpointer_save_async_save_and_load(tmp_path):
    store = MemoryStore()
    ckpt = Checkpointer(
        InMemoryWriter(store),
        InMemoryReader(store),
        no_dist=True,
        save_planner=ReferenceSavePlanner(),
        load_planner=ReferenceLoadPlanner(),
    )
    metadata = ckpt.save({"x": torch.arange(3.0)})
    assert set(metadata.state_dict_metadata) == {"x"}
    dest = {"x": torch.zeros(3)}
    ckpt.load(dest)
    assert torch.equal(dest["x"], torch.arange(3.0))
    live = {"x": torch.arange(3.0) + 10}
    future = ckpt.async_save(live)
    live["x"].add_(100)  # changed after the call returned: must not be what is saved
    future.result(timeout=60)
    ckpt.load(dest)
    assert torch.equal(dest["x"], torch.arange(3.0) + 10)


def test_dcp_own_checkpointer_save_raises_type_error(tmp_path):
    """Documents the DCP defect our Checkpointer replaces (skips once torch fixes it)."""
    from torch.distributed.checkpoint._checkpointer import _Checkpointer

    theirs = _Checkpointer(
        FileSystemWriter(tmp_path / "a"), FileSystemReader(tmp_path / "a"), no_dist=True
    )
    try:
        theirs.save({"x": torch.ones(1)})
    except TypeError as exc:
        assert "coordinator_rank" in str(exc)
    else:
        pytest.skip("this torch's _Checkpointer.save works")


def test_our_checkpointer_round_trips_on_the_filesystem(tmp_path):
    ours = Checkpointer(
        FileSystemWriter(tmp_path / "b"), FileSystemReader(tmp_path / "b"), no_dist=True
    )
    ours.save({"x": torch.arange(3.0)})
    dest = {"x": torch.zeros(3)}
    ours.load(dest)
    assert torch.equal(dest["x"], torch.arange(3.0))


def test_async_save_snapshots_nested_state_and_objects(tmp_path):
    live = {
        "m": {"w": torch.arange(4.0), "layers": [torch.ones(2), torch.zeros(2)]},
        "meta": {"step": 1},
    }
    future = async_save(live, tmp_path / "ck")
    live["m"]["w"].zero_()
    live["m"]["layers"][0].fill_(7)
    live["meta"]["step"] = 99
    metadata = future.result(timeout=60)
    assert set(metadata.state_dict_metadata) == {"m.w", "m.layers.0", "m.layers.1", "meta.step"}
    dest = {
        "m": {"w": torch.zeros(4), "layers": [torch.zeros(2), torch.ones(2)]},
        "meta": {"step": None},
    }
    load(dest, tmp_path / "ck")
    assert torch.equal(dest["m"]["w"], torch.arange(4.0))
    assert torch.equal(dest["m"]["layers"][0], torch.ones(2))
    assert dest["meta"]["step"] == 1


def test_async_save_refuses_a_planner_that_cannot_plan_staged_values(tmp_path):
    from torch.distributed.checkpoint import DefaultSavePlanner

    with pytest.raises(TypeError, match="only ReferenceSavePlanner"):
        async_save({"x": torch.ones(1)}, tmp_path / "ck", planner=DefaultSavePlanner())


def test_async_save_failure_surfaces_in_the_future(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    future = async_save({"x": torch.ones(1)}, blocker)
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        future.result(timeout=60)
