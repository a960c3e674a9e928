"""Fault injection: storage writers and readers that fail at a chosen hook on a chosen rank.

Wrap any backend's writer or reader; the wrapper behaves like it except that on rank
``rank`` the hook ``hook`` raises :class:`InjectedFault` (or, for the ``*_future`` hooks,
returns a future that fails). The message names hook and rank, so a test can check that
every rank's error reports the failing rank's exception; ``fired`` tells whether the
fault was injected at all (a driver that never calls the hook on that rank cannot be
judged by it).
"""

from __future__ import annotations

from ckptconf.harness.forwarding import ForwardingStorageReader, ForwardingStorageWriter
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


def _check_hook(hook: str, hooks: tuple[str, ...]) -> None:
    if hook not in hooks:
        raise ValueError(f"unknown hook {hook!r}; expected one of {hooks}")


class FaultyStorageWriter(ForwardingStorageWriter):
    """A storage writer failing at ``hook`` (one of :data:`WRITER_HOOKS`) on rank ``rank``."""

    def __init__(self, inner: StorageWriter, *, hook: str, rank: int):
        _check_hook(hook, WRITER_HOOKS)
        super().__init__(inner)
        self.hook, self.fault_rank = hook, rank
        self.fired = False

    def before(self, hook: str) -> None:
        if hook == self.hook and _rank() == self.fault_rank:
            self.fired = True
            raise InjectedFault(hook, self.fault_rank)

    def write_data(self, plan, planner):
        if self.hook == "write_data_future" and _rank() == self.fault_rank:
            self.fired = True
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return super().write_data(plan, planner)


class FaultyStorageReader(ForwardingStorageReader):
    """A storage reader failing at ``hook`` (one of :data:`READER_HOOKS`) on rank ``rank``."""

    def __init__(self, inner: StorageReader, *, hook: str, rank: int):
        _check_hook(hook, READER_HOOKS)
        super().__init__(inner)
        self.hook, self.fault_rank = hook, rank
        self.fired = False

    def before(self, hook: str) -> None:
        if hook == self.hook and _rank() == self.fault_rank:
            self.fired = True
            raise InjectedFault(hook, self.fault_rank)

    def read_data(self, plan, planner):
        if self.hook == "read_data_future" and _rank() == self.fault_rank:
            self.fired = True
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return super().read_data(plan, planner)
