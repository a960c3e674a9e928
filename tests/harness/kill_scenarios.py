"""Rank functions for the rank-kill tests."""

from __future__ import annotations

import ckptconf.reference as ref
import torch
import torch.distributed as dist
from ckptconf.harness.faults import KillingWriter
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor


def _state(version: float):
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return {
        "a": distribute_tensor(torch.full((8, 4), float(version)), mesh, [Shard(0)]),
        "b": distribute_tensor(torch.full((6,), float(version)), mesh, [Shard(0)]),
    }


def save_version(path, version):
    ref.save(_state(version), path)


def save_version_killing(path, version, rank, point):
    ref.save(
        _state(version),
        storage_writer=KillingWriter(ref.FileSystemWriter(path), rank=rank, point=point),
    )


def load_version(path):
    dest = _state(-1.0)
    ref.load(dest, path)
    values = {dest["a"].to_local().unique().tolist()[0], dest["b"].to_local().unique().tolist()[0]}
    assert len(values) == 1, values
    return values.pop()
