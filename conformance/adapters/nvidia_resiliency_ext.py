"""nvidia-resiliency-ext's ``FileSystemWriterAsync`` under its own driver.

The writer works only under nvrx's driver (filesystem_async.py: ``write_data`` raises
``NotImplementedError``): ``save_state_dict_async_plan`` plans and stages,
``get_save_function_and_args`` gives the function that writes (in child processes, one per
bucket), and ``save_state_dict_async_finalize`` gathers the results and writes the metadata
(state_dict_saver.py). ``save`` runs the three steps in order, synchronously, as the
writer's docstring allows, with DCP's default planner; loads are DCP's ``FileSystemReader``.

``async_save`` is nvrx's documented asynchronous flow: the plan, then an ``AsyncRequest`` of
the write function (with its GPU-to-host ``preload_fn``) and the finalize step, scheduled on
one ``AsyncCallsQueue`` per process with its persistent worker; the returned future's
``result()`` is ``maybe_finalize_async_calls(blocking=True)`` (collective, as nvrx requires).
That path needs CUDA: ``AsyncRequest.execute_finalize_fns`` and
``AsyncCaller.sync_all_async_calls`` all-reduce tensors on ``torch.cuda.current_device()``
(async_ckpt/core.py, nvrx 0.4.1), and the temporal caller calls ``torch.cuda.synchronize()``.
So without CUDA ``async_save`` is declared unsupported with that reason; run
``--ckpt-device cuda`` on a GPU machine to test it. Not yet run on a GPU (no device was lent to
the session that wrote it).

Declared unsupported: ``storage`` (the writer cannot be driven through DCP's protocol, nor
wrapped for fault injection). It ``inherits`` torch-dcp: planners, reader and metadata are
DCP's.
"""

from __future__ import annotations

from ..backend import Backend
from ..builtin import EXPECTATIONS_DIR

__all__ = ["backend"]


def _plan(state_dict, path: str, process_group):
    """nvrx's plan step: its writer (holding the staged buckets), the metadata, the wrapper."""
    from nvidia_resiliency_ext.checkpointing.async_ckpt.filesystem_async import (
        FileSystemWriterAsync,
    )
    from nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver import (
        save_state_dict_async_plan,
    )
    from torch.distributed.checkpoint import DefaultSavePlanner

    writer = FileSystemWriterAsync(path, thread_count=2)
    return save_state_dict_async_plan(
        state_dict, writer, process_group, planner=DefaultSavePlanner()
    )


def _save(state_dict, path: str, *, process_group=None) -> None:
    from nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver import (
        save_state_dict_async_finalize,
    )

    writer, metadata, wrapper = _plan(state_dict, path, process_group)
    write, _, arguments = writer.get_save_function_and_args()
    if write is not None:
        write(*arguments)
    save_state_dict_async_finalize(writer, metadata, wrapper)


_QUEUE = None


def _queue():
    """This process's ``AsyncCallsQueue`` (one persistent worker per trainer process, as nvrx's
    users hold it)."""
    global _QUEUE
    if _QUEUE is None:
        from nvidia_resiliency_ext.checkpointing.async_ckpt.core import AsyncCallsQueue

        _QUEUE = AsyncCallsQueue(persistent=True)
    return _QUEUE


class _Finalized:
    """The future of an nvrx async save: ``result()`` finalizes every scheduled call (on all
    ranks: nvrx's finalize is collective)."""

    def __init__(self, queue):
        self._queue = queue

    def result(self):
        self._queue.maybe_finalize_async_calls(blocking=True)


def _async_save(state_dict, path: str, *, process_group=None) -> _Finalized:
    from nvidia_resiliency_ext.checkpointing.async_ckpt.core import AsyncRequest
    from nvidia_resiliency_ext.checkpointing.async_ckpt.state_dict_saver import (
        save_state_dict_async_finalize,
    )

    writer, metadata, wrapper = _plan(state_dict, path, process_group)
    write, preload, arguments = writer.get_save_function_and_args()

    def finalize() -> None:
        save_state_dict_async_finalize(writer, metadata, wrapper)

    queue = _queue()
    queue.schedule_async_request(AsyncRequest(write, arguments, [finalize], preload_fn=preload))
    return _Finalized(queue)


_NO_CUDA = (
    "nvrx's AsyncCallsQueue needs CUDA: its finalize and sync steps all-reduce tensors on "
    "torch.cuda.current_device() (async_ckpt/core.py); run with --ckpt-device cuda on a GPU"
)


def _reader(path: str):
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(path)


def backend() -> Backend:
    """nvidia-resiliency-ext's asynchronous filesystem writer: ``save`` runs its steps in order,
    ``async_save`` its AsyncCallsQueue flow (where CUDA is available)."""
    from importlib.metadata import version

    import torch

    unsupported = {"storage": "FileSystemWriterAsync works only under nvrx's own driver"}
    if not torch.cuda.is_available():
        unsupported["async_save"] = _NO_CUDA
    return Backend(
        name="nvidia-resiliency-ext",
        save=_save,
        async_save=_async_save,
        storage_reader=_reader,
        unsupported=unsupported,
        description=f"nvidia-resiliency-ext {version('nvidia-resiliency-ext')} "
        "FileSystemWriterAsync under its own plan/write/finalize driver, DCP's FileSystemReader",
        expectations=str(EXPECTATIONS_DIR / "nvidia-resiliency-ext.toml"),
        inherits="torch-dcp",
    )
