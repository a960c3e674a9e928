"""Values implementing DCP's checkpointable protocol: tensor subclasses and DTensors over a
LocalShardsWrapper (regressions found by the mesh-change suite)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ckptconf.harness import get_world
from ckptconf.harness.simulated import simulate_load, simulate_save
from ckptconf.reference import (
    InMemoryReader,
    InMemoryWriter,
    MemoryStore,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    load,
    save,
)
from ckptconf.reference.state_values import tensor_pieces, value_dtype
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata


class Rows(torch.Tensor):
    """A global size and the row ranges ``(start, tensor)`` this rank holds; only the protocol."""

    @staticmethod
    def __new__(cls, size, dtype, rows):
        value = torch.Tensor._make_wrapper_subclass(cls, torch.Size(size), dtype=dtype)
        value._rows = [(torch.Size((start,) + (0,) * (len(size) - 1)), t) for start, t in rows]
        return value

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(str(func))

    def __create_chunk_list__(self):
        return [ChunkStorageMetadata(offsets=o, sizes=t.size()) for o, t in self._rows]

    def __get_tensor_shard__(self, index):
        return next(t for o, t in self._rows if o == index.offset)


def _lsw():
    try:
        from torch.distributed.tensor._shards_wrapper import LocalShardsWrapper
    except ImportError:
        pytest.skip("this torch has no LocalShardsWrapper")
    return LocalShardsWrapper


def test_an_empty_chunk_at_another_ranks_offsets_is_not_a_second_writer():
    full = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    saved = [  # rank 0 holds zero rows at row 0, where rank 1's rows start
        {"t": Rows((4, 3), torch.float64, [(0, full[0:0].clone())])},
        {"t": Rows((4, 3), torch.float64, [(0, full[0:4].clone())])},
    ]
    store = MemoryStore()
    simulate_save(saved, ReferenceSavePlanner, lambda r: InMemoryWriter(store))
    blank = torch.zeros_like(full)
    dest = [
        {"t": Rows((4, 3), torch.float64, [(0, blank[0:1].clone()), (3, blank[3:4].clone())])},
        {"t": Rows((4, 3), torch.float64, [(1, blank[1:3].clone())])},
    ]
    simulate_load(dest, ReferenceLoadPlanner, lambda r: InMemoryReader(store))
    for state in dest:
        for offsets, tensor in state["t"]._rows:
            assert torch.equal(tensor, full[offsets[0] : offsets[0] + len(tensor)])


def test_pieces_of_a_checkpointable_value_skip_empty_chunks_unless_all_are_empty():
    rows = Rows((2,), torch.float32, [(0, torch.zeros(0)), (0, torch.ones(2))])
    assert [tuple(p.chunk.sizes) for p in tensor_pieces("t", rows)] == [(2,)]
    empty = Rows((0,), torch.float32, [(0, torch.zeros(0))])
    assert [tuple(p.chunk.sizes) for p in tensor_pieces("t", empty)] == [(0,)]


def lsw_round_trip(path: str) -> list[str]:
    """Save a DTensor over LocalShardsWrapper (rank 0: no rows, rank 1: all), load resharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    wrapper = _lsw()
    rank = dist.get_rank()
    full = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    mesh = init_device_mesh("cpu", (2,))

    def value(start: int, end: int, source: torch.Tensor):
        local = wrapper([source[start:end].clone()], [(start, 0)])
        return DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride()
        )

    problems = []
    saved = value(0, 0, full) if rank == 0 else value(0, 4, full)
    if value_dtype(saved) != torch.float64:
        problems.append(f"rank {rank}: value_dtype {value_dtype(saved)}, expected float64")
    save({"t": saved}, path)
    bounds = (0, 3) if rank == 0 else (3, 4)
    dest = value(*bounds, torch.zeros_like(full))
    plain = torch.zeros_like(full)
    load({"t": dest}, path)
    load({"t": plain}, path)
    got = dest.to_local().local_shards()[0]
    if not torch.equal(got, full[bounds[0] : bounds[1]]):
        problems.append(f"rank {rank}: rows {bounds} loaded {got.tolist()}")
    if not torch.equal(plain, full):
        problems.append(f"rank {rank}: plain loaded {plain.tolist()}")
    return problems


def test_dtensor_over_local_shards_wrapper_saves_and_reshards(tmp_path):
    _lsw()
    results = get_world(2).run(lsw_round_trip, str(tmp_path / "ckpt"), timeout=120)
    assert results == [[], []]


def off_split_dtensors(path: str) -> dict[str, str]:
    """Save and load DTensors whose local tensors are not the shape their placements give (from
    ``from_local(..., shape=)``), and one with a Partial placement: each step's error text."""
    import os

    from ckptconf.reference import CheckpointError
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard

    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))

    def rows(count: int, placements=None):
        placements = placements or [Shard(0)]
        local = torch.arange(count, dtype=torch.float32) + 10 * (rank + 1)
        return DTensor.from_local(
            local, mesh, list(placements), run_check=False, shape=(4,), stride=(1,)
        )

    said = {}
    for name, state, where in (
        ("save: 3 rows where 2", {"w": rows(3)}, path + "-a"),  # rows 12, 22 would be lost
        ("save: rank 1 short", {"w": rows(2 if rank == 0 else 1)}, path + "-b"),
        ("save: partial", {"w": rows(4, [Partial()])}, path + "-c"),
    ):
        try:
            save(state, where)
            said[name] = "saved"
        except CheckpointError as exc:
            said[name] = str(exc).split("\n--- traceback")[0]
        said[name + ", metadata written"] = str(os.path.exists(os.path.join(where, ".metadata")))
    save({"w": rows(2)}, path)
    try:
        load({"w": rows(3)}, path)  # element 2 of each local would be left as it was
        said["load: 3 rows where 2"] = "loaded"
    except CheckpointError as exc:
        said["load: 3 rows where 2"] = str(exc).split("\n--- traceback")[0]
    return said


def test_a_dtensor_whose_local_tensor_is_off_its_placements_split_is_refused_naming_key_and_shapes(
    tmp_path,
):
    said = get_world(2).run(off_split_dtensors, str(tmp_path / "ckpt"), timeout=120)
    assert said[0] == said[1]  # every rank raises the same error
    errors = said[0]
    assert errors["save: 3 rows where 2, metadata written"] == "False"
    assert errors["save: rank 1 short, metadata written"] == "False"
    off = "value of key 'w': a DTensor of global shape (4,) placed (Shard(dim=0),) on a mesh of "
    for step, ranks, local in (
        ("save: 3 rows where 2", "[0, 1]", (3,)),
        ("save: rank 1 short", "[1]", (1,)),
        ("load: 3 rows where 2", "[0, 1]", (3,)),
    ):
        assert f"failed on rank(s) {ranks}" in errors[step], errors[step]
        assert (
            off in errors[step]
            and f"has shape {local}, where the placements give (2,)" in (errors[step])
        ), errors[step]
    assert "value of key 'w': placement Partial(sum) is not supported" in errors["save: partial"]
