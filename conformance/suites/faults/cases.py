"""Cases of the faults suite: a state to save on a world, and the rank whose storage fails."""

from __future__ import annotations

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import SaveLoadCase
from ...kit.injection import COORDINATOR_ONLY
from ...kit.strategies import small_cases

__all__ = ["fault_cases"]


@st.composite
def fault_cases(
    draw, backend: Backend, hook: str, worlds: tuple[int, ...] = (2, 3, 1, 2)
) -> tuple[int, SaveLoadCase]:
    """``(failing rank, case)``: small flat or nested states of the layouts the backend
    supports (no ShardedTensor, no empty tensor); coordinator-only hooks fail on rank 0."""
    world = draw(st.sampled_from(worlds), label="world")
    rank = 0 if hook in COORDINATOR_ONLY else draw(st.integers(0, world - 1), label="failing rank")
    case = draw(small_cases(backend, world), label="case")
    return rank, case
