"""Benchmark of the harness: per-call cost of a warm world against a new world per call,
started by ``spawn`` (what ``torch.multiprocessing.spawn`` per test costs) and from the
harness's forkserver."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ckptconf.harness.world import World

__all__ = ["HarnessBench", "bench_harness", "noop"]


def noop() -> int:
    """What every rank runs in the benchmark."""
    import torch.distributed as dist

    return dist.get_rank()


@dataclass
class HarnessBench:
    """Seconds per call, warm and fresh, for one world size."""

    size: int
    warm_seconds: float
    spawn_seconds: float
    forkserver_seconds: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.spawn_seconds / self.warm_seconds


def bench_harness(
    sizes: tuple[int, ...] = (2, 4), warm_calls: int = 50, spawn_calls: int = 3
) -> list[HarnessBench]:
    """Measure both tiers in one run, so the ratio compares like with like."""
    out = []
    for size in sizes:
        with World(size) as world:
            world.run(noop)  # start-up is not a per-call cost
            start = time.perf_counter()
            for _ in range(warm_calls):
                world.run(noop)
            warm = (time.perf_counter() - start) / warm_calls
        fresh = {}
        for method in ("spawn", "forkserver"):
            start = time.perf_counter()
            for _ in range(spawn_calls):
                with World(size, start_method=method) as world:
                    world.run(noop)
            fresh[method] = (time.perf_counter() - start) / spawn_calls
        out.append(HarnessBench(size, warm, fresh["spawn"], fresh["forkserver"]))
    return out
