"""Reference parts plug into torch DCP and DCP parts plug into the reference, both ways."""

from __future__ import annotations

import itertools
import warnings

import ckptconf.reference as ref
import pytest
import torch
import torch.distributed.checkpoint as dcp
from ckptconf.reference.compat import DCP_FORMAT_VERSION, declares_field, no_dist
from torch.distributed.checkpoint.metadata import Metadata


def source_state():
    return {
        "model": {
            "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "b": torch.arange(4, dtype=torch.int64),
        },
        "layers": [torch.full((2,), 7.0), torch.full((3,), 8.0)],
        "scalar": torch.tensor(2.5),
        "step": 42,
        "tag": b"\x00bytes",
    }


def blank_state():
    return {
        "model": {"w": torch.zeros(3, 4), "b": torch.zeros(4, dtype=torch.int64)},
        "layers": [torch.zeros(2), torch.zeros(3)],
        "scalar": torch.tensor(0.0),
        "step": None,
        "tag": None,
    }


def assert_loaded(dest):
    src = source_state()
    for key in ("w", "b"):
        assert torch.equal(dest["model"][key], src["model"][key])
    for got, want in zip(dest["layers"], src["layers"]):
        assert torch.equal(got, want)
    assert torch.equal(dest["scalar"], src["scalar"])
    assert dest["step"] == 42 and dest["tag"] == b"\x00bytes"


STORAGE = {
    "reference": (ref.FileSystemWriter, ref.FileSystemReader),
    "dcp": (lambda p: dcp.FileSystemWriter(str(p)), lambda p: dcp.FileSystemReader(str(p))),
}
SAVE_PLANNERS = {"reference": ref.ReferenceSavePlanner, "dcp": dcp.DefaultSavePlanner}
LOAD_PLANNERS = {"reference": ref.ReferenceLoadPlanner, "dcp": dcp.DefaultLoadPlanner}


def run_save(driver, state, writer, planner):
    if driver == "reference":
        ref.save(state, storage_writer=writer, planner=planner)
    else:
        dcp.save(state, storage_writer=writer, planner=planner, **no_dist(dcp.save))


def run_load(driver, state, reader, planner):
    if driver == "reference":
        ref.load(state, storage_reader=reader, planner=planner)
    else:
        dcp.load(state, storage_reader=reader, planner=planner, **no_dist(dcp.load))


@pytest.mark.parametrize(
    "storage, save_driver, save_planner, load_driver, load_planner",
    list(
        itertools.product(
            STORAGE, ["reference", "dcp"], SAVE_PLANNERS, ["reference", "dcp"], LOAD_PLANNERS
        )
    ),
)
def test_every_pairing_round_trips(
    tmp_path, storage, save_driver, save_planner, load_driver, load_planner
):
    writer_cls, reader_cls = STORAGE[storage]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_save(
            save_driver, source_state(), writer_cls(tmp_path / "ck"), SAVE_PLANNERS[save_planner]()
        )
        dest = blank_state()
        run_load(load_driver, dest, reader_cls(tmp_path / "ck"), LOAD_PLANNERS[load_planner]())
    assert_loaded(dest)


def test_reference_metadata_records_the_dcp_version(tmp_path):
    """DCP's CURRENT_DCP_VERSION (torch 2.6 names none: its Metadata has no version field)."""
    if not declares_field(Metadata, "version"):
        pytest.skip("this torch's DCP Metadata has no version field")
    metadata = ref.save({"x": torch.ones(1)}, tmp_path / "ck")
    assert metadata.version == DCP_FORMAT_VERSION
    assert ref.FileSystemReader(tmp_path / "ck").read_metadata().version == DCP_FORMAT_VERSION
