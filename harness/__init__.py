"""ckptconf.harness: run code on N ranks, fast.

- :class:`World` / :func:`get_world`: warm pools of rank processes with a process group
  (``cpu``, ``cuda``, ``cuda-shared``), reused by every call.
- :func:`run_fresh_world`: fresh processes for one call (rank-kill tests, baselines).
- :mod:`ckptconf.harness.simulated`: planners of thousands of ranks in one process.
- :mod:`ckptconf.harness.faults`: kill a rank at a named point of a save.
- :mod:`ckptconf.harness.crash`: a save's file operations recorded (strace), every crash
  state of them built on disk.
- :mod:`ckptconf.harness.fixtures`: pytest fixtures (``pytest_plugins = ["ckptconf.harness.fixtures"]``).
"""

from .errors import RankError, WorldError, WorldTimeout
from .spawn import run_fresh_world
from .world import (
    DEVICE_MODES,
    World,
    device_available,
    get_world,
    per_group,
    rank_device,
    shutdown_all,
)

__all__ = [
    "per_group",
    "DEVICE_MODES",
    "RankError",
    "World",
    "WorldError",
    "WorldTimeout",
    "device_available",
    "get_world",
    "rank_device",
    "run_fresh_world",
    "shutdown_all",
]
