"""Megatron-core's DCP planners (``MCoreSavePlanner``/``MCoreLoadPlanner``) with DCP's
filesystem storage, configured as Megatron's ``TorchDistSaveShardedStrategy`` builds them.

From megatron/core/dist_checkpointing/strategies/torch.py (megatron-core 0.16):

- the save planner is made with ``flatten_state_dict=False`` (its decentralized global plan
  asserts it): Megatron flattens state dicts itself before DCP sees them, so the planners
  take **flat state dicts only** (``nested_state_dicts`` unsupported);
- ``MCoreSavePlanner.transform_object`` writes objects as they are, because Megatron packs
  its ShardedObjects into ``io.BytesIO`` first: any other object value cannot be written
  (``objects`` unsupported);
- ``MCoreSavePlanner.create_local_plan`` asserts that no value is a DTensor ("translation
  from MCore ShardedTensors shouldn't result in DTensors"): Megatron hands DCP
  ShardedTensors and plain tensors only (``dtensor``, ``strided_shard`` unsupported).

Everything else is DCP's (``DefaultSavePlanner``/``DefaultLoadPlanner``, FileSystemWriter,
``dcp.save``/``dcp.load``), so the backend ``inherits`` torch-dcp's known failures.
"""

from __future__ import annotations

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR

__all__ = ["backend"]


def _writer(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemWriter(path)


def _reader(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(path)


def _save_planner():
    from megatron.core.dist_checkpointing.strategies.torch import MCoreSavePlanner

    return MCoreSavePlanner(flatten_state_dict=False)


def _load_planner():
    from megatron.core.dist_checkpointing.strategies.torch import MCoreLoadPlanner

    return MCoreLoadPlanner()


def backend() -> Backend:
    """Megatron-core's planners on DCP's filesystem storage."""
    from importlib.metadata import version

    return Backend(
        name="megatron",
        storage_writer=_writer,
        storage_reader=_reader,
        save_planner=_save_planner,
        load_planner=_load_planner,
        unsupported=frozenset({"nested_state_dicts", "objects", "dtensor", "strided_shard"}),
        description=f"megatron-core {version('megatron-core')} MCoreSavePlanner/MCoreLoadPlanner "
        "with DCP's FileSystemWriter/Reader",
        expectations=str(EXPECTATIONS_DIR / "megatron.toml"),
        inherits="torch-dcp",
    )
