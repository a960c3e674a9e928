"""Every layout class a property test can draw is pinned by a deterministic example of it.

Each property test's body is run in-process on a stand-in ``ckpt`` that stops at the first
step (nothing reaches a rank), under hypothesis, to collect the layout classes of what it
draws (kit/layouts.py); its pinned examples must reach every one of them, so the
derandomized ci profile sees each class every run. The classifier itself is checked on
hand-computed layouts.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
from ckptconf.conformance import select_backend
from ckptconf.conformance.kit.cases import Layout, SaveLoadCase, TensorSpec
from ckptconf.conformance.kit.layouts import case_classes, pieces
from ckptconf.conformance.kit.profiles import _Recorded
from ckptconf.conformance.suites import SUITES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DRAWS = 60
"""Examples drawn per test (split across its parameter sets, at least 10 each) to find the
classes it reaches."""


class _Stop(Exception):
    """The test reached its first step: everything it draws before running was drawn."""


class _DryChecker:
    """A ``ckpt`` for the reference backend that stops the test at its first step."""

    verdict = None

    def __init__(self):
        from ckptconf.conformance.session import Session

        self.backend = select_backend("reference")
        self.session = Session(profile="ci")

    def supports(self, feature: str) -> bool:
        return self.backend.supports(feature)

    def save_planner(self):
        return self.backend.used_save_planner()

    def load_planner(self):
        return self.backend.used_load_planner()

    def path(self) -> str:
        raise _Stop

    def trial(self, case, **_):
        raise _Stop

    def check_save_then_load(self, case):
        raise _Stop


def _property_tests():
    for suite, cls in sorted(SUITES.items()):
        for name in sorted(dir(cls)):
            test = getattr(cls, name)
            if getattr(test, "ckptconf_property_test", False):
                yield pytest.param(cls, test, id=f"{suite}::{name}")


def _parameter_sets(test) -> list[dict]:
    """Every combination of the test's ``parametrize`` values (marks on the test)."""
    axes = []
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = (
            [n.strip() for n in mark.args[0].split(",")]
            if isinstance(mark.args[0], str)
            else list(mark.args[0])
        )
        values = [getattr(v, "values", (v,)) for v in mark.args[1]]
        axes.append([dict(zip(names, v)) for v in values])
    return [
        dict(itertools.chain.from_iterable(d.items() for d in combo))
        for combo in itertools.product(*axes)
    ]


def _drawn_classes(cls, test, params: dict, draws: int) -> set[str]:
    found: set[str] = set()
    body, checker = test.ckptconf_draws, _DryChecker()

    @settings(
        max_examples=draws,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def draw(data):
        recorded = _Recorded(data)
        with contextlib.suppress(_Stop, pytest.skip.Exception):
            body(cls(), ckpt=checker, data=recorded, **params)
        for _, value in recorded.values:
            found.update(case_classes(value))

    draw()
    return found


@pytest.mark.parametrize("cls, test", list(_property_tests()))
def test_every_drawn_layout_class_is_pinned(cls, test):
    pinned = set()
    for example in test.ckptconf_pinned:
        for value in example.draws.values():
            pinned.update(case_classes(value))
    drawn = set()
    sets = _parameter_sets(test) or [{}]
    for params in sets:
        drawn |= _drawn_classes(cls, test, params, max(10, DRAWS // len(sets)))
    assert drawn <= pinned, f"drawn but not pinned: {sorted(drawn - pinned)}"


def test_pieces_of_hand_computed_layouts():
    # Shard(0) of 5 rows on 4 ranks: torch.chunk sizes 2, 2, 1, 0
    rows = pieces((5, 3), Layout("dtensor", (4,), ("S0",)), 4)
    assert [[b[1][0] for b in r] for r in rows] == [[2], [2], [1], [0]]
    # _StridedShard(0, split_factor=2) of 8 rows on 2 ranks: rank 0 rows 0-1 and 4-5
    strided = pieces((8, 1), Layout("dtensor", (2,), ("SS0x2",)), 2)
    assert strided[0] == [((0, 0), (2, 1)), ((4, 0), (2, 1))]
    assert strided[1] == [((2, 0), (2, 1)), ((6, 0), (2, 1))]
    # a 2-D mesh, row-major: rank 3 is coordinate (1, 1)
    grid = pieces((4, 6), Layout("dtensor", (2, 2), ("S0", "S1")), 4)
    assert grid[3] == [((2, 3), (2, 3))]
    # a key held by ranks 2 and 1 only, as a ShardedTensor in that order
    held = pieces((3, 2), Layout("sharded_tensor", ranks=(2, 1)), 3)
    assert held == [[], [((2, 0), (1, 2))], [((0, 0), (2, 2))]]


def test_classes_of_hand_made_cases():
    spec = (TensorSpec("w", (8, 2), "float64"),)
    whole_to_strided = SaveLoadCase(spec, (Layout(),), (Layout("dtensor", (2,), ("SS0x2",)),), 1, 2)
    found = case_classes(whole_to_strided)
    assert "several pieces of one saved chunk on one rank" in found
    assert {"world size change", "resharded", "load: _StridedShard"} <= found
    empty = SaveLoadCase(
        (TensorSpec("w", (1, 3), "float64"),), (Layout("sharded_tensor"),), (Layout(),), 3, 3
    )
    found = case_classes(empty)
    assert {"save: empty shards", "save: ShardedTensor", "load: plain"} <= found
    assert "several pieces of one saved chunk on one rank" not in found
    rows_to_whole = SaveLoadCase(spec, (Layout("dtensor", (2,), ("S0",)),), (Layout(),), 2, 2)
    assert "a loaded piece from several saved chunks" in case_classes(rows_to_whole)
