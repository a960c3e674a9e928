"""Fresh processes per call: a world started for one call and stopped after it.

The slow tier (a process start and a process group per call, as torch's
MultiProcessTestCase does), for code that must own its processes, such as tests
that kill a rank, and as the baseline of the harness benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import RankError, WorldError, WorldTimeout
from .world import World

__all__ = ["RankError", "WorldError", "WorldTimeout", "run_fresh_world"]


def run_fresh_world(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    device: str = "cpu",
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` new ranks; return each rank's result."""
    with World(world_size, device) as world:
        return world.run(fn, *args, timeout=timeout, **kwargs)
