"""pytest fixtures for worlds of ranks; enable with ``pytest_plugins = ["ckptconf.harness.fixtures"]``.

- ``world_factory(size, device="cpu")``: the warm world of that size (skips cleanly if
  the device mode cannot run here, e.g. CUDA without a GPU).
- ``world``: parametrise indirectly with a size or ``(size, device)``:
  ``@pytest.mark.parametrize("world", [1, 2, 4], indirect=True)``; default 2 ranks on CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .world import World, device_available, get_world

__all__ = ["world_factory", "world"]


@pytest.fixture
def world_factory() -> Callable[..., World]:
    """Get the warm world of a size and device mode, or skip the test if it cannot run here."""

    def make(size: int, device: str = "cpu") -> World:
        reason = device_available(device, size)
        if reason is not None:
            pytest.skip(f"{device} world of {size}: {reason}")
        return get_world(size, device)

    return make


@pytest.fixture
def world(request: pytest.FixtureRequest, world_factory: Callable[..., World]) -> World:
    """A warm world; indirect parameter: ``size`` or ``(size, device)``."""
    param = getattr(request, "param", 2)
    size, device = param if isinstance(param, tuple) else (param, "cpu")
    return world_factory(size, device)
