"""Run under torchrun by tests/harness/test_launched.py: rank 0 drives a LaunchedWorld through
steps of several sizes, a failing step, a hang in a collective and a rank stuck for good, and
prints one JSON line of what it saw; the other ranks serve."""

from __future__ import annotations

import json
import threading
import time

import torch
import torch.distributed as dist
from ckptconf.harness.errors import WorldError, WorldTimeout
from ckptconf.harness.launched import LaunchedWorld, WorldLost, launcher_env, serve


def where() -> tuple[int, int, float]:
    total = torch.ones(1) * dist.get_rank()
    dist.all_reduce(total)
    return dist.get_rank(), dist.get_world_size(), float(total)


def fail_on_one() -> int:
    if dist.get_rank() == 1:
        print("rank 1 says goodbye")
        raise ValueError("planted error on rank 1")
    return dist.get_rank()


def skip_a_collective() -> None:
    if dist.get_rank() != 1:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins: stuck until the step's timeout


def stuck_for_good() -> None:
    if dist.get_rank() == 1:
        threading.Event().wait()  # stuck for good: only ending the process stops it


def main() -> None:
    env = launcher_env()
    if env.rank != 0:
        serve("cpu")
        return
    world = LaunchedWorld("cpu", ping_timeout=5)
    seen: dict = {"sizes": [world.run(where, size=n, timeout=60) for n in (4, 2, 3, 4)]}
    try:
        world.run(fail_on_one, size=2, timeout=60)
    except WorldError as exc:
        seen["error"] = [(e.rank, e.type_name, e.message) for e in exc.errors]
        seen["error_results"] = exc.results
        seen["error_output"] = exc.output.get(1, "")
    seen["after_error"] = world.run(where, size=4, timeout=60)
    started = time.monotonic()
    try:
        world.run(skip_a_collective, size=2, timeout=5)
    except WorldTimeout as exc:
        seen["hang"] = [
            (e.rank, e.type_name, "skip_a_collective" in e.traceback) for e in exc.errors
        ]
        seen["hang_seconds"] = time.monotonic() - started
    seen["after_hang"] = world.run(where, size=4, timeout=60)
    try:
        world.run(stuck_for_good, size=2, timeout=5)
    except WorldTimeout as exc:
        seen["stuck"] = [(e.rank, "stuck_for_good" in e.traceback) for e in exc.errors]
    try:
        world.run(where, size=4, timeout=60)
    except WorldLost as exc:
        seen["lost"] = str(exc)
    world.close()  # the others stop, the stuck rank 1 ends (exit 3), so torchrun returns
    print("RESULT " + json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
