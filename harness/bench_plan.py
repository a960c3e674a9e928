"""Benchmark of global save planning at simulated scale: the reference against torch DCP.

For R simulated ranks holding T row-sharded tensors (``Shard(0)`` over all R ranks, 4 rows
each) and one replicated tensor, each planner makes every rank's local plan of the same
state, then the coordinator's ``create_global_plan`` (dedup, metadata, validation) is timed,
best of ``repeats``. Shape-only (meta) tensors: nothing is allocated or written. The ratio is
measured in one run, on one machine, so it compares like with like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PlanBench", "bench_plan"]


@dataclass
class PlanBench:
    """Seconds of ``create_global_plan`` for one world, reference and DCP."""

    ranks: int
    tensors: int
    chunks: int
    dcp_seconds: float
    reference_seconds: float

    @property
    def speedup(self) -> float:
        """DCP's time over the reference's: above 1, the reference is faster."""
        return self.dcp_seconds / self.reference_seconds


def _states(ranks: int, tensors: int) -> list[dict]:
    from torch.distributed.tensor import Replicate, Shard

    from .simulated import mesh_values

    states: list[dict] = [{} for _ in range(ranks)]
    for t in range(tensors):
        for rank, value in enumerate(
            mesh_values(f"layers.{t}.w", (ranks * 4, 8), (ranks,), [Shard(0)], meta=True)
        ):
            states[rank][f"layers.{t}.w"] = value
    for rank, value in enumerate(mesh_values("emb", (16, 8), (ranks,), [Replicate()], meta=True)):
        states[rank]["emb"] = value
    return states


def _global_plan_seconds(states: list[dict], factory: Callable, repeats: int) -> float:
    from ckptconf.reference._compat import set_up_save_planner

    plans = []
    for rank, state in enumerate(states):
        planner = factory()
        set_up_save_planner(planner, state, rank == 0)
        plans.append(planner.create_local_plan())
    best = float("inf")
    for _ in range(repeats):
        coordinator = factory()
        set_up_save_planner(coordinator, states[0], True)
        start = time.perf_counter()
        coordinator.create_global_plan(plans)
        best = min(best, time.perf_counter() - start)
    return best


def bench_plan(
    worlds: tuple[int, ...] = (256, 1024), tensors: int = 100, repeats: int = 2
) -> list[PlanBench]:
    """``create_global_plan`` seconds of DCP's ``DefaultSavePlanner`` and the reference's
    ``ReferenceSavePlanner`` per world size in ``worlds``."""
    from ckptconf.reference import ReferenceSavePlanner
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    out = []
    for ranks in worlds:
        states = _states(ranks, tensors)
        dcp = _global_plan_seconds(states, DefaultSavePlanner, repeats)
        reference = _global_plan_seconds(states, ReferenceSavePlanner, repeats)
        out.append(PlanBench(ranks, tensors, ranks * tensors + ranks, dcp, reference))
    return out
