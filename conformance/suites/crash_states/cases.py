"""Cases of the crash-states suite: a small state saved on one or two ranks."""

from __future__ import annotations

from hypothesis import strategies as st

from ...backend import Backend
from ...kit.cases import Layout, SaveLoadCase, TensorSpec, resalted
from ...kit.strategies import small_cases

__all__ = ["crash_cases", "plain_case", "state_budget"]

_BUDGETS = {"ci": 24, "dev": 64, "thorough": None}


def state_budget(profile: str) -> int | None:
    """How many crash points a save is cut at per model under ``profile`` (``None``: all)."""
    return _BUDGETS.get(profile, 64)


@st.composite
def crash_cases(
    draw, backend: Backend, worlds: tuple[int, ...] = (2, 1)
) -> tuple[SaveLoadCase, SaveLoadCase]:
    """``(A, B)``: two small flat or nested states of the layouts the backend supports, saved
    and loaded on one world and layout each (the crash, not resharding, is under test). B is
    drawn with another layout than A (other keys, shapes, dtypes or placements: A's metadata
    with B's data files must not pass for either) and salted, so no value of B equals A's at the same index."""
    world = draw(st.sampled_from(worlds), label="world")
    cases = small_cases(backend, world)
    old = draw(cases, label="A")
    new = draw(cases.filter(lambda case: _layout(case) != _layout(old)), label="B")
    return old, resalted(new)


def _layout(case: SaveLoadCase) -> tuple:
    """What a checkpoint's metadata records of a case: keys, shapes, dtypes, placements."""
    return (case.tensors, case.save_layouts, tuple(key for key, _ in case.objects))


def plain_case(world: int) -> SaveLoadCase:
    """A small state of one plain tensor on ``world`` ranks: B of a pinned example, whose A
    holds the layouts under test (no pinned A is laid out so)."""
    return SaveLoadCase((TensorSpec("b", (4,), "float32"),), (Layout(),), (Layout(),), world, world)
