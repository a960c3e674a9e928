"""Fault injection: storage writers and readers that fail at a chosen hook on a chosen rank.

Wrap any backend's writer or reader; the wrapper behaves like it except that on rank
``rank`` the hook ``hook`` raises :class:`InjectedFault` (or, for the ``*_future`` hooks,
returns a future that fails). The message names hook and rank, so a test can check that
every rank's error reports the failing rank's exception.
"""

from __future__ import annotations

from typing import Any

from ckptconf.reference._compat import accepts_kwargs
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter
from torch.futures import Future

__all__ = [
    "InjectedFault",
    "FaultyStorageWriter",
    "FaultyStorageReader",
    "WRITER_HOOKS",
    "READER_HOOKS",
    "COORDINATOR_ONLY",
]

WRITER_HOOKS = (
    "set_up_storage_writer",
    "prepare_local_plan",
    "prepare_global_plan",
    "write_data",
    "write_data_future",
    "finish",
)
READER_HOOKS = (
    "read_metadata",
    "set_up_storage_reader",
    "prepare_local_plan",
    "prepare_global_plan",
    "read_data",
    "read_data_future",
)
COORDINATOR_ONLY = frozenset({"prepare_global_plan", "finish"})
"""Hooks DCP's protocol calls on the coordinator only: a fault there must be on the coordinator."""


class InjectedFault(Exception):
    """The failure a faulty writer or reader was told to produce."""

    def __init__(self, hook: str, rank: int):
        super().__init__(f"injected fault at {hook} on rank {rank}")
        self.hook, self.rank = hook, rank

    def __reduce__(self):
        return (type(self), (self.hook, self.rank))


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _failed_future(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


class _Faulty:
    def __init__(self, inner: Any, hook: str, rank: int, hooks: tuple[str, ...]):
        if hook not in hooks:
            raise ValueError(f"unknown hook {hook!r}; expected one of {hooks}")
        self.inner, self.hook, self.fault_rank = inner, hook, rank

    def _maybe_fail(self, hook: str) -> None:
        if hook == self.hook and _rank() == self.fault_rank:
            raise InjectedFault(hook, self.fault_rank)

    def _future_fails(self, hook: str) -> bool:
        return hook + "_future" == self.hook and _rank() == self.fault_rank


class FaultyStorageWriter(_Faulty, StorageWriter):
    """A storage writer failing at ``hook`` (one of :data:`WRITER_HOOKS`) on rank ``rank``."""

    def __init__(self, inner: StorageWriter, *, hook: str, rank: int):
        super().__init__(inner, hook, rank, WRITER_HOOKS)

    def reset(self, checkpoint_id=None) -> None:
        self.inner.reset(checkpoint_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def storage_meta(self):
        return self.inner.storage_meta()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self._maybe_fail("set_up_storage_writer")
        if accepts_kwargs(self.inner.set_up_storage_writer):
            self.inner.set_up_storage_writer(is_coordinator, *args, **kwargs)
        else:
            self.inner.set_up_storage_writer(is_coordinator)

    def prepare_local_plan(self, plan):
        self._maybe_fail("prepare_local_plan")
        return self.inner.prepare_local_plan(plan)

    def prepare_global_plan(self, plans):
        self._maybe_fail("prepare_global_plan")
        return self.inner.prepare_global_plan(plans)

    def write_data(self, plan, planner):
        self._maybe_fail("write_data")
        if self._future_fails("write_data"):
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return self.inner.write_data(plan, planner)

    def finish(self, metadata, results) -> None:
        self._maybe_fail("finish")
        self.inner.finish(metadata, results)


class FaultyStorageReader(_Faulty, StorageReader):
    """A storage reader failing at ``hook`` (one of :data:`READER_HOOKS`) on rank ``rank``."""

    def __init__(self, inner: StorageReader, *, hook: str, rank: int):
        super().__init__(inner, hook, rank, READER_HOOKS)

    def reset(self, checkpoint_id=None) -> None:
        self.inner.reset(checkpoint_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def read_metadata(self):
        self._maybe_fail("read_metadata")
        return self.inner.read_metadata()

    def set_up_storage_reader(
        self, metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self._maybe_fail("set_up_storage_reader")
        if accepts_kwargs(self.inner.set_up_storage_reader):
            self.inner.set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        else:
            self.inner.set_up_storage_reader(metadata, is_coordinator)

    def prepare_local_plan(self, plan):
        self._maybe_fail("prepare_local_plan")
        return self.inner.prepare_local_plan(plan)

    def prepare_global_plan(self, plans):
        self._maybe_fail("prepare_global_plan")
        return self.inner.prepare_global_plan(plans)

    def read_data(self, plan, planner):
        self._maybe_fail("read_data")
        if self._future_fails("read_data"):
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return self.inner.read_data(plan, planner)
