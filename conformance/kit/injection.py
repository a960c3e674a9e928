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


class _Fault:
    """What a faulty writer and a faulty reader share: where the fault is, and whether it fired."""

    hooks: tuple[str, ...] = ()

    def _arm(self, hook: str, rank: int) -> None:
        if hook not in self.hooks:
            raise ValueError(f"unknown hook {hook!r}; expected one of {self.hooks}")
        self.hook, self.fault_rank = hook, rank
        self.fired = False

    def _here(self, hook: str) -> bool:
        """Whether the fault is at ``hook`` on this rank (it then counts as fired)."""
        if hook == self.hook and _rank() == self.fault_rank:
            self.fired = True
        return hook == self.hook and _rank() == self.fault_rank

    def before(self, hook: str) -> None:
        if self._here(hook):
            raise InjectedFault(hook, self.fault_rank)


class FaultyStorageWriter(_Fault, ForwardingStorageWriter):
    """A storage writer failing at ``hook`` (one of :data:`WRITER_HOOKS`) on rank ``rank``."""

    hooks = WRITER_HOOKS

    def __init__(self, inner: StorageWriter, *, hook: str, rank: int):
        self._arm(hook, rank)
        super().__init__(inner)

    def write_data(self, plan, planner):
        if self._here("write_data_future"):
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return super().write_data(plan, planner)


class FaultyStorageReader(_Fault, ForwardingStorageReader):
    """A storage reader failing at ``hook`` (one of :data:`READER_HOOKS`) on rank ``rank``."""

    hooks = READER_HOOKS

    def __init__(self, inner: StorageReader, *, hook: str, rank: int):
        self._arm(hook, rank)
        super().__init__(inner)

    def read_data(self, plan, planner):
        if self._here("read_data_future"):
            return _failed_future(InjectedFault(self.hook, self.fault_rank))
        return super().read_data(plan, planner)
