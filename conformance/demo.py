"""A save and resharding load across real ranks, checked value by value.

This is what ``ckptconf run`` does until the conformance suites land (issue 5): it
saves a value-encoded state from 2 gloo ranks with the chosen backend's parts and
loads it under other layouts and world sizes, reporting each step.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass

__all__ = ["DemoStep", "run_demo"]


@dataclass
class DemoStep:
    """One checked step of the demo."""

    name: str
    world_size: int
    passed: bool
    detail: str
    seconds: float


def _encoded(shape):
    import torch

    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)


def _placements(name):
    from torch.distributed.tensor import Replicate, Shard

    return {"S0": [Shard(0)], "S1": [Shard(1)], "R": [Replicate()], "S0,S1": [Shard(0), Shard(1)]}[
        name
    ]


def _save_rank(path: str) -> str:
    import ckptconf.reference as ref
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    state = {
        "weight": distribute_tensor(_encoded((7, 6)), mesh, _placements("S0")),
        "bias": _encoded((6,)),
        "step": 100,
    }
    ref.save(state, path)
    return "saved weight (7, 6) Shard(0), bias (6,), step"


def _load_rank(path: str, mesh_shape: tuple[int, ...], placements: str) -> str:
    import ckptconf.reference as ref
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    mesh = init_device_mesh("cpu", mesh_shape)
    dest = {
        "weight": distribute_tensor(
            torch.full((7, 6), -1.0, dtype=torch.float64), mesh, _placements(placements)
        ),
        "bias": torch.zeros(6, dtype=torch.float64),
        "step": None,
    }
    ref.load(dest, path)
    want = distribute_tensor(_encoded((7, 6)), mesh, _placements(placements)).to_local()
    torch.testing.assert_close(dest["weight"].to_local(), want, rtol=0, atol=0)
    torch.testing.assert_close(dest["bias"], _encoded((6,)), rtol=0, atol=0)
    assert dest["step"] == 100
    return f"local {tuple(want.shape)}"


def run_demo() -> list[DemoStep]:
    """Save on 2 ranks, then load on 2, 3 and 4 ranks under other layouts; never raises."""
    from ckptconf.harness.spawn import WorldError, run_fresh_world

    steps = []
    with tempfile.TemporaryDirectory(prefix="ckptconf-demo-") as tmp:
        path = f"{tmp}/checkpoint"
        plan = [("save Shard(0) on 2 ranks", 2, _save_rank, (path,))]
        for ws, mesh, placements in [
            (2, (2,), "S1"),
            (2, (2,), "R"),
            (3, (3,), "S0"),
            (4, (2, 2), "S0,S1"),
        ]:
            plan.append(
                (f"load {placements} on mesh {mesh}", ws, _load_rank, (path, mesh, placements))
            )
        for name, ws, fn, args in plan:
            start = time.perf_counter()
            try:
                results = run_fresh_world(fn, ws, *args, timeout=120)
                steps.append(
                    DemoStep(
                        name, ws, True, "; ".join(sorted(set(results))), time.perf_counter() - start
                    )
                )
            except WorldError as exc:
                steps.append(
                    DemoStep(name, ws, False, str(exc).splitlines()[0], time.perf_counter() - start)
                )
    return steps
