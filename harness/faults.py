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


class KillingWriter(StorageWriter):
    """Wraps ``inner`` and SIGKILLs rank ``rank`` at ``point`` (one of :data:`KILL_POINTS`)."""

    def __init__(self, inner: StorageWriter, *, rank: int, point: str):
        if point not in KILL_POINTS:
            raise ValueError(f"unknown kill point {point!r}; expected one of {KILL_POINTS}")
        self.inner, self.kill_rank, self.point = inner, rank, point
        self.rank = 0

    def _at(self, point: str) -> None:
        if point == self.point and self.rank == self.kill_rank:
            _kill_self()

    def reset(self, checkpoint_id=None) -> None:
        self.inner.reset(checkpoint_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def storage_meta(self):
        return self.inner.storage_meta()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        self.rank = int(kwargs.get("rank", dist.get_rank() if dist.is_initialized() else 0))
        self._at("set_up_storage_writer")
        self.inner.set_up_storage_writer(is_coordinator, *args, **kwargs)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self._at("prepare_local_plan")
        return self.inner.prepare_local_plan(plan)

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        self._at("prepare_global_plan")
        return self.inner.prepare_global_plan(plans)

    def write_data(self, plan: SavePlan, planner: SavePlanner):
        self._at("write_data")
        if self.point == "mid_write" and self.rank == self.kill_rank:
            planner = _KillAfterFirstItem(planner)
        future = self.inner.write_data(plan, planner)
        if self.point == "after_write" and self.rank == self.kill_rank:
            future.wait()
            _kill_self()
        return future

    def finish(self, metadata, results) -> None:
        self._at("finish")
        self.inner.finish(metadata, results)
