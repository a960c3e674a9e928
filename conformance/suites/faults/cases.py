"""Cases of the faults suite: a state to save on a world, and the rank whose storage fails."""

from __future__ import annotations

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import SaveLoadCase
from ...kit.strategies import save_load_cases, supported_options
from .injection import COORDINATOR_ONLY

__all__ = ["fault_cases"]


@st.composite
def fault_cases(
    draw, backend: Backend, hook: str, worlds: tuple[int, ...] = (2, 3, 1, 2)
) -> tuple[int, SaveLoadCase]:
    """``(failing rank, case)``: small flat or nested states of the layouts the backend
    supports (no ShardedTensor, no empty tensor); coordinator-only hooks fail on rank 0."""
    world = draw(st.sampled_from(worlds), label="world")
    rank = 0 if hook in COORDINATOR_ONLY else draw(st.integers(0, world - 1), label="failing rank")
    options = supported_options(backend, max_tensors=2, max_side=6, allow_empty=False)
    options["kinds"] = tuple(k for k in options["kinds"] if k != "sharded_tensor")
    case = draw(save_load_cases(save_worlds=(world,), same_layout=True, **options), label="case")
    return rank, case
