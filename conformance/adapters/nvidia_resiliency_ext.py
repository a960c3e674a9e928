"""nvidia-resiliency-ext's ``FileSystemWriterAsync`` under its own driver.

The writer works only under nvrx's driver (filesystem_async.py: ``write_data`` raises
``NotImplementedError``): ``save_state_dict_async_plan`` plans and stages,
``get_save_function_and_args`` gives the function that writes (in child processes, one per
bucket), and ``save_state_dict_async_finalize`` gathers the results and writes the metadata
(state_dict_saver.py). This adapter runs the three steps in order, synchronously, as the
writer's docstring allows, with DCP's default planner; loads are DCP's ``FileSystemReader``.

Declared unsupported: ``storage`` (the writer cannot be driven through DCP's protocol, nor
wrapped for fault injection), ``async_save`` (nvrx's asynchronous path needs its
``AsyncCallsQueue`` with a persistent worker process; the suite's ``async_save`` tests would
otherwise test DCP's driver under this name). It ``inherits`` torch-dcp: planners, reader and
metadata are DCP's.
"""

from __future__ import annotations

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR

__all__ = ["backend"]


def _save(state_dict, path: str, *, process_group=None) -> None:
    from nvidia_resiliency_ext.checkpointing.async_ckpt.filesystem_async import (
        FileSystemWriterAsync,
    )
    from nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver import (
        save_state_dict_async_finalize,
        save_state_dict_async_plan,
    )
    from torch.distributed.checkpoint import DefaultSavePlanner

    writer = FileSystemWriterAsync(path, thread_count=2)
    writer, metadata, wrapper = save_state_dict_async_plan(
        state_dict, writer, process_group, planner=DefaultSavePlanner()
    )
    write, _, arguments = writer.get_save_function_and_args()
    if write is not None:
        write(*arguments)
    save_state_dict_async_finalize(writer, metadata, wrapper)


def _reader(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(path)


def backend() -> Backend:
    """nvidia-resiliency-ext's asynchronous filesystem writer, run synchronously."""
    from importlib.metadata import version

    return Backend(
        name="nvidia-resiliency-ext",
        save=_save,
        storage_reader=_reader,
        unsupported=frozenset({"storage", "async_save"}),
        description=f"nvidia-resiliency-ext {version('nvidia-resiliency-ext')} "
        "FileSystemWriterAsync under its own plan/write/finalize driver, DCP's FileSystemReader",
        expectations=str(EXPECTATIONS_DIR / "nvidia-resiliency-ext.toml"),
        inherits="torch-dcp",
    )
