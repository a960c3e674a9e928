"""State dicts that differ between ranks, non-string keys, meta-device destinations."""

from __future__ import annotations

import pytest
import torch
from ckptconf.harness import get_world
from ckptconf.reference import load, save
from ckptconf.reference.errors import CheckpointError

from . import rank_scenarios as rs


@pytest.mark.multiprocess
def test_a_pipeline_checkpoint_loads_in_its_own_split_and_on_one_rank(tmp_path):
    path = str(tmp_path / "pp")
    get_world(2).run(rs.save_pipeline_stages, path)
    same = get_world(2).run(rs.load_pipeline_stages, path, [[0], [1]])
    assert same == [
        {"values": {"layers.0.w": [0.0, 1.0, 2.0, 3.0], "loader.rank0": {"pos": 0}}},
        {"values": {"layers.1.w": [10.0, 11.0, 12.0, 13.0], "loader.rank1": {"pos": 1}}},
    ]
    swapped = get_world(2).run(rs.load_pipeline_stages, path, [[1], [0]])
    assert [
        r["values"]["layers.1.w" if i == 0 else "layers.0.w"] for i, r in enumerate(swapped)
    ] == [
        [10.0, 11.0, 12.0, 13.0],
        [0.0, 1.0, 2.0, 3.0],
    ]


@pytest.mark.multiprocess
def test_a_key_no_destination_rank_holds_is_an_error_on_every_rank(tmp_path):
    """Loading on 2 ranks that hold layer 0 only: layer 1 would be dropped silently."""
    path = str(tmp_path / "pp")
    get_world(2).run(rs.save_pipeline_stages, path)
    results = get_world(2).run(rs.load_pipeline_stages, path, [[0], [0]])
    for result in results:
        assert (
            "1 key(s) of the checkpoint are not in the destination (held by no rank): "
            "'layers.1.w'" in result["error"]
        ), result


def test_a_shrunk_world_does_not_drop_per_rank_state(tmp_path):
    """Saved by two ranks (each its own loader state), loaded in one process holding one."""
    path = str(tmp_path / "c")
    save({"loader.rank0": {"pos": 3}, "loader.rank1": {"pos": 4}, "w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"held by no rank\): 'loader.rank1.pos'"):
        load({"loader.rank0": {"pos": None}, "w": torch.zeros(2)}, path)


def test_int_keys_load_into_the_same_key_object(tmp_path):
    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "n_iter": 7}, 1: {"n": b"x"}}}}
    save(state, str(tmp_path / "c"))
    dest = {"optimizer": {"state": {0: {"step": torch.tensor(0.0), "n_iter": 0}, 1: {"n": None}}}}
    load(dest, str(tmp_path / "c"))
    inner = dest["optimizer"]["state"]
    assert list(inner) == [0, 1] and list(inner[0]) == ["step", "n_iter"]
    assert inner[0]["n_iter"] == 7 and inner[0]["step"].item() == 3.0 and inner[1] == {"n": b"x"}


def test_an_unsupported_key_type_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"state dict key .* under 'opt': keys below the top"):
        save({"opt": {frozenset({1}): torch.ones(1)}}, str(tmp_path / "c"))


def test_a_meta_device_destination_is_an_error_not_a_silent_no_op(tmp_path):
    save({"w": torch.arange(4.0), "b": torch.ones(2)}, str(tmp_path / "c"))
    dest = {"w": torch.empty(4, device="meta"), "b": torch.zeros(2)}
    with pytest.raises(CheckpointError) as caught:
        load(dest, str(tmp_path / "c"))
    assert "key 'w': the destination tensor is on the meta device" in str(caught.value)
    assert dest["w"].device.type == "meta" and torch.equal(dest["b"], torch.zeros(2))
