"""The on-disk metadata round-trips and rejects malformed or hostile input with a precise error."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
import torch
from ckptconf.harness.simulated import index_encoded, mesh_values, simulate_save
from ckptconf.reference import (
    InMemoryWriter,
    MemoryStore,
    MetadataFormatError,
    ReferenceSavePlanner,
)
from ckptconf.reference.compat import declares_field, metadata_version
from ckptconf.reference.metadata_format import FORMAT_VERSION, dump_metadata, parse_metadata
from hypothesis import given
from hypothesis import strategies as st
from torch.distributed.checkpoint.metadata import Metadata

from .strategies import layouts

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.uint8,
]


def saved_store(
    layout, dtype=torch.float32, extra=None, block_size=64
) -> tuple[MemoryStore, object]:
    shape, mesh, placements = layout
    values = mesh_values("t", shape, mesh, placements, dtype=dtype, fill=index_encoded(shape))
    state_dicts = [{"t": v, **(extra or {})} for v in values]
    store = MemoryStore()
    metadata = simulate_save(
        state_dicts, ReferenceSavePlanner, lambda r: InMemoryWriter(store, block_size=block_size)
    )
    return store, metadata


@given(layouts(max_dim=6), st.sampled_from(DTYPES))
def test_metadata_round_trips(layout, dtype):
    store, metadata = saved_store(layout, dtype, extra={"step": 7, "blob": b"\x00\x01"})
    parsed = parse_metadata(store.metadata)
    assert parsed.state_dict_metadata == metadata.state_dict_metadata
    assert (
        parsed.planner_data
        == metadata.planner_data
        == {"t": ("t",), "step": ("step",), "blob": ("blob",)}
    )
    # torch 2.6's Metadata has no version field: none is recorded there
    assert metadata_version(parsed) == metadata_version(metadata)
    assert metadata_version(parsed) == ("1.0.0" if declares_field(Metadata, "version") else None)
    assert dump_metadata(parsed) == store.metadata


@pytest.fixture
def document():
    shape, mesh = (6, 4), (2,)
    from torch.distributed.tensor import Shard

    store, _ = saved_store((shape, mesh, [Shard(0)]), extra={"obj": [1, 2]})
    return json.loads(store.metadata)


def _parse(doc):
    return parse_metadata(json.dumps(doc).encode(), source="ckpt")


def _tensor(doc):
    return next(t for t in doc["tensors"] if t["key"] == "t")


def test_valid_document_parses(document):
    assert set(_parse(document).state_dict_metadata) == {"t", "obj"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d.update(format_version=FORMAT_VERSION + 1),
            r"ckpt.format_version: this reader supports version 1",
        ),
        (lambda d: d.update(format="other"), r"ckpt.format: expected 'ckptconf-checkpoint'"),
        (lambda d: d.pop("tensors"), r"ckpt: missing field 'tensors'"),
        (lambda d: _tensor(d).update(dtype="object"), r"key 't'\).dtype: unknown dtype 'object'"),
        (
            lambda d: _tensor(d).update(size=[6, -4]),
            r"key 't'\).size: expected non-negative integers",
        ),
        (
            lambda d: _tensor(d).update(size=[2**40, 2**40]),
            r"key 't'\).size: .* more than 2\*\*62 elements",
        ),
        (lambda d: _tensor(d).update(size=[6, True]), r"key 't'\).size: expected non-negative"),
        (
            lambda d: _tensor(d)["chunks"][1].update(offsets=[4, 0]),
            r"chunks\[1\]: dim 0 spans \[4, 7\) outside the tensor's size 6",
        ),
        (lambda d: _tensor(d)["chunks"][1].update(offsets=[2, 0]), r"key 't'.*overlap"),
        (
            lambda d: _tensor(d)["chunks"][1].update(offsets=[0, 0]),
            r"two chunks start at offsets \[0, 0\]",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(file="../../etc/passwd"),
            r"region.file: '../../etc/passwd' is not a relative",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(file="/abs"),
            r"region.file: '/abs' is not a relative",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(length=5),
            r"region.length: 5 bytes, but the item's shape and dtype need 48",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(offset=-1),
            r"region.offset: expected an integer in \[0, 2\*\*62\]",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(block_size=0),
            r"region.block_size: expected an integer in \[1",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(checksums=[]),
            r"region.checksums: expected 1 block checksums, got 0",
        ),
        (
            lambda d: _tensor(d)["chunks"][0]["region"].update(checksums=[2**64]),
            r"region.checksums: xxh3_64 checksums must be integers in \[0, 2\*\*64\)",
        ),
        (
            lambda d: (
                d.update(checksum="crc32")
                or _tensor(d)["chunks"][0]["region"].update(checksums=[2**33])
            ),
            r"region.checksums: crc32 checksums must be integers in \[0, 2\*\*32\)",
        ),
        (
            lambda d: d.update(checksum="md5"),
            r"checksum: expected one of \['crc32', 'xxh3_64'\], got 'md5'",
        ),
        (
            lambda d: _tensor(d)["chunks"][1]["region"].update(
                offset=8, file=_tensor(d)["chunks"][0]["region"]["file"]
            ),
            r"data of key 't' and key 't' overlap in file",
        ),
        (lambda d: d["objects"][0].update(key="t"), r"key 't'\): key appears more than once"),
        (
            lambda d: d.update(planner_data={"__weird__": 1}),
            r"ckpt.planner_data: unexpected JSON value",
        ),
        (
            lambda d: d.update(
                byteorder="big" if __import__("sys").byteorder == "little" else "little"
            ),
            r"ckpt.byteorder",
        ),
    ],
)
def test_malformed_documents_are_rejected_naming_key_and_field(document, mutate, message):
    doc = copy.deepcopy(document)
    mutate(doc)
    with pytest.raises(MetadataFormatError, match=message):
        _parse(doc)


def test_non_json_and_pickled_metadata_are_rejected_without_running_code():
    import builtins

    class Exploit:
        def __reduce__(self):
            return (exec, ("import builtins; builtins.CKPTCONF_META_PWNED = True",))

    with pytest.raises(MetadataFormatError, match="not valid UTF-8 JSON"):
        parse_metadata(pickle.dumps(Exploit()), source="ckpt")
    with pytest.raises(MetadataFormatError, match="expected a JSON object"):
        parse_metadata(b"[1, 2]", source="ckpt")
    assert not hasattr(builtins, "CKPTCONF_META_PWNED")
