"""Kill a rank at a named point of a save, for tests of what a crash leaves behind.

Use with fresh processes (:func:`~ckptconf.harness.run_fresh_world`): the killed rank
dies by SIGKILL, as an OOM kill or a node failure would end it, with no cleanup.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import StorageWriter

from .forwarding import ForwardingStorageWriter

__all__ = ["KILL_POINTS", "KillingWriter"]

KILL_POINTS = (
    "set_up_storage_writer",
    "prepare_local_plan",
    "prepare_global_plan",
    "write_data",
    "mid_write",
    "after_write",
    "finish",
)
"""Where a rank can be killed: on entry to each writer hook, after its first written item
(``mid_write``, if it writes two or more), or once its items are written (``after_write``)."""


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterFirstItem(SavePlanner):
    """A planner proxy that kills this process when the writer asks for a second item."""

    def __init__(self, inner: SavePlanner):
        self.inner = inner
        self.resolved = 0

    def set_up_planner(self, *args: Any, **kwargs: Any) -> None:
        self.inner.set_up_planner(*args, **kwargs)

    def create_local_plan(self) -> SavePlan:
        return self.inner.create_local_plan()

    def create_global_plan(self, all_plans):
        return self.inner.create_global_plan(all_plans)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return self.inner.finish_plan(new_plan)

    def resolve_data(self, write_item):
        self.resolved += 1
        if self.resolved > 1:
            _kill_self()
        return self.inner.resolve_data(write_item)


class KillingWriter(ForwardingStorageWriter):
    """Wraps ``inner`` and SIGKILLs rank ``rank`` at ``point`` (one of :data:`KILL_POINTS`)."""

    def __init__(self, inner: StorageWriter, *, rank: int, point: str):
        if point not in KILL_POINTS:
            raise ValueError(f"unknown kill point {point!r}; expected one of {KILL_POINTS}")
        super().__init__(inner)
        self.kill_rank, self.point = rank, point
        self.rank = 0

    def before(self, hook: str) -> None:
        if hook == self.point and self.rank == self.kill_rank:
            _kill_self()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        self.rank = int(kwargs.get("rank", dist.get_rank() if dist.is_initialized() else 0))
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)

    def write_data(self, plan: SavePlan, planner: SavePlanner):
        if self.point == "mid_write" and self.rank == self.kill_rank:
            planner = _KillAfterFirstItem(planner)
        future = super().write_data(plan, planner)
        if self.point == "after_write" and self.rank == self.kill_rank:
            future.wait()
            _kill_self()
        return future
