"""Keys held by some ranks only, in the case model, its strategies and the rank-side values."""

from __future__ import annotations

import math

import pytest
import torch
from ckptconf.conformance.kit import values
from ckptconf.conformance.kit.cases import Layout, SaveLoadCase, TensorSpec, encoded_tensor
from ckptconf.conformance.kit.strategies import save_load_cases
from hypothesis import Phase, find, given, settings

WORLDS = (1, 2, 3, 4)


@given(save_load_cases(save_worlds=WORLDS, load_worlds=WORLDS, per_rank_keys=True))
def test_every_key_is_held_by_a_subset_of_each_world_that_fits_its_layout(case):
    for world, layouts in (
        (case.save_world, case.save_layouts),
        (case.load_world, case.load_layouts),
    ):
        for layout in layouts:
            assert len(set(layout.ranks)) == len(layout.ranks)
            assert not layout.ranks or len(layout.ranks) < world
            assert all(0 <= r < world for r in layout.ranks)
            holders = [r for r in range(world) if layout.holds(r)]
            assert holders and (not layout.ranks or sorted(layout.ranks) == holders)
            if layout.kind == "dtensor":
                assert math.prod(layout.mesh) == len(holders)
            if layout.kind == "plain":
                assert list(layout.ranks) == sorted(layout.ranks)


@given(save_load_cases(save_worlds=WORLDS, load_worlds=WORLDS, per_rank_keys=True))
def test_every_object_is_held_by_a_proper_subset_or_all_of_each_world(case):
    assert len(case.object_ranks) in (0, len(case.objects))
    for saved, loaded in case.object_ranks:
        for world, holders in ((case.save_world, saved), (case.load_world, loaded)):
            assert list(holders) == sorted(set(holders)) and len(holders) < world
            assert all(0 <= r < world for r in holders)


@given(save_load_cases(save_worlds=WORLDS, load_worlds=WORLDS))
def test_without_per_rank_keys_every_rank_holds_every_key(case):
    assert all(not layout.ranks for layout in case.save_layouts + case.load_layouts)
    assert not case.object_ranks


def test_objects_are_drawn_on_a_subset_on_both_sides():
    case = find(
        save_load_cases(save_worlds=(3,), load_worlds=(2,), per_rank_keys=True),
        lambda c: any(saved and loaded for saved, loaded in c.object_ranks),
        settings=settings(database=None, max_examples=1000, phases=[Phase.generate]),
    )
    assert "no other rank has the key" in case.describe()


def test_each_layout_kind_is_drawn_on_a_subset_on_both_sides():
    for kind in ("plain", "dtensor", "sharded_tensor"):
        case = find(
            save_load_cases(
                save_worlds=(3,), load_worlds=(4,), per_rank_keys=True, kinds=(kind,), min_dims=1
            ),
            lambda c: bool(c.save_layouts[0].ranks and c.load_layouts[0].ranks),
            settings=settings(database=None, max_examples=500, phases=[Phase.generate]),
        )
        assert case.save_layouts[0].kind == case.load_layouts[0].kind == kind


def _case(*layouts: Layout) -> SaveLoadCase:
    specs = tuple(TensorSpec(f"t{i}", (3,), "float64", salt=i) for i in range(len(layouts)))
    return SaveLoadCase(specs, layouts, layouts, save_world=2, load_world=2)


def test_a_rank_builds_only_the_keys_it_holds():
    # no process group: this process is rank 0
    case = _case(Layout(), Layout(ranks=(0,)), Layout(ranks=(1,)))
    state = values.build_state(case, for_load=False)
    assert sorted(state) == ["t0", "t1"]
    assert torch.equal(state["t1"], encoded_tensor((3,), "float64", 1))
    assert str(case.save_layouts[2]) == "plain on ranks [1]; no other rank has the key"


def test_a_load_that_adds_a_key_to_a_rank_not_holding_it_is_a_mismatch():
    case = _case(Layout(ranks=(0,)), Layout(ranks=(1,)))
    state = values.build_state(case, for_load=False)
    assert values.compare_state(case, state) == []
    state["t1"] = encoded_tensor((3,), "float64", 1)
    (mismatch,) = values.compare_state(case, state)
    assert (mismatch.key, mismatch.rank) == ("t1", 0)
    assert "added this key to a rank not holding it" in mismatch.detail


def test_objects_are_built_and_compared_on_their_holders_only():
    # no process group: this process is rank 0
    case = SaveLoadCase(
        (), (), (), 2, 2, objects=(("a", 1), ("b", 2)), object_ranks=(((1,), (0,)), ((0,), (1,)))
    )
    assert values.build_state(case, for_load=False) == {"b": 2}
    assert values.build_state(case, for_load=True) == {"a": "<not loaded>"}  # no saved value
    assert values.compare_state(case, {"a": 1}) == []
    missing, added = values.compare_state(case, {"b": 2})
    assert (missing.key, missing.detail) == ("a", "object differs")
    assert (added.key, added.rank) == ("b", 0)
    assert "added this key to a rank not holding it" in added.detail


@pytest.mark.multiprocess
def test_submesh_and_chunk_order_follow_the_ranks_and_other_ranks_lack_the_key():
    from ckptconf.harness import get_world

    from tests.conformance import rank_functions

    on = get_world(3).run(rank_functions.pieces_of_some_ranks_state, timeout=60)
    # d = [0, 7, 14, 21]: mesh (2,) of ranks [2, 0]; s = [1, 8, 15, 22]: chunk 0 on rank 2
    assert on[2] == {
        "d": [0.0, 7.0],
        "s": [([0], [1.0, 8.0])],
        "objects": ["obj_a", "obj_b"],
        "clean": True,
    }
    assert on[0] == {
        "d": [14.0, 21.0],
        "s": [([2], [15.0, 22.0])],
        "objects": ["obj_b"],
        "clean": True,
    }
    assert on[1] == {"objects": ["obj_b"], "clean": True}


@pytest.mark.multiprocess
def test_the_reference_loads_keys_saved_by_some_ranks_onto_other_ranks():
    from ckptconf.conformance import check_save_then_load, select_backend

    from tests.conformance.rank_functions import SOME_RANKS

    check_save_then_load(select_backend("reference"), SOME_RANKS)


def test_the_session_largest_world_is_drawn_with_its_2d_meshes():
    from ckptconf.conformance.kit.strategies import mesh_changes_of, world_sizes
    from ckptconf.conformance.session import Session

    assert Session().largest_world is None
    assert world_sizes(1, 2, 3, 4, largest=Session().largest_world) == (1, 2, 3, 4)
    assert Session(world_size=8).largest_world == 8
    assert world_sizes(1, 2, 3, 4, largest=8) == (1, 2, 3, 4, 8)
    assert world_sizes(8, 16, largest=8) == (8, 16)  # already larger: nothing added
    assert mesh_changes_of(8) == [
        ((8,), (2, 4)),
        ((2, 4), (8,)),
        ((8,), (4, 2)),
        ((4, 2), (8,)),
    ]
