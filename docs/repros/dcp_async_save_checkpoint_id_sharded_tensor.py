"""torch DCP's async_save cannot stage a ShardedTensor when given only a checkpoint_id.

torchtitan's CheckpointManager (async_mode="async") calls
``dcp.async_save(state, checkpoint_id=path, process_group=pg)`` without a storage_writer. That
path stages the state with StateDictStager (torch/distributed/checkpoint/_state_dict_stager.py),
whose ``_offload_tensor`` calls ``x.data_ptr()``, which a ShardedTensor refuses. The same state
saves with ``storage_writer=FileSystemWriter(path)``.

One process, gloo on a file store (no network). torch 2.13.
"""

import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import Shard, ShardMetadata, init_from_local_shards

folder = tempfile.mkdtemp()
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
shard = Shard(torch.arange(3.0), ShardMetadata([0], [3], "rank:0/cpu"))
state = {"w": init_from_local_shards([shard], [3])}

dcp.async_save(state, storage_writer=dcp.FileSystemWriter(f"{folder}/a")).result()
print("async_save(storage_writer=FileSystemWriter(path)): saved")
try:
    dcp.async_save(state, checkpoint_id=f"{folder}/b").result()
    print("async_save(checkpoint_id=path): saved")
except RuntimeError as error:
    print("async_save(checkpoint_id=path): RuntimeError:", str(error)[:60], "...")
dist.destroy_process_group()
