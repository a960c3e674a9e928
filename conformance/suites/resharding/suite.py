"""Resharding: save under one layout, load under another, on the same or another number of ranks."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from ...kit.cases import Layout, SaveLoadCase, TensorSpec
from ...kit.layouts import layout_examples
from ...kit.profiles import property_test
from ...kit.strategies import (
    mostly_basic_dtypes,
    save_load_cases,
    supported_options,
    world_sizes,
)

__all__ = ["ReshardingTests"]

_ST, _DT = "sharded_tensor", "dtensor"


def _boundary(shape, saved: Layout, save_world: int, loaded: Layout, load_world: int, *needs):
    case = SaveLoadCase(
        (TensorSpec("w", shape, "float64", salt=1),), (saved,), (loaded,), save_world, load_world
    )
    name = f"{shape[0]}-rows-{saved.kind}-on-{save_world}-to-{loaded.kind}-on-{load_world}"
    marks = [pytest.mark.ckpt_requires(*needs)] if needs else []
    return pytest.param(case, id=name, marks=marks)


MORE_RANKS_THAN_ROWS = [
    _boundary((1, 3), Layout(_ST), 3, Layout(), 3, _ST),
    _boundary((5, 2), Layout(_ST), 4, Layout(_DT, (2,), ("S0",)), 2, _ST, _DT, "world_size_change"),
    _boundary((2, 3), Layout(_DT, (4,), ("S0",)), 4, Layout(_ST), 3, _ST, _DT, "world_size_change"),
    _boundary((1, 5), Layout(_DT, (2, 2), ("S0", "S1")), 4, Layout(_DT, (4,), ("S1",)), 4, _DT),
    _boundary((3,), Layout(), 1, Layout(_DT, (4,), ("S0",)), 4, _DT, "world_size_change"),
]
"""Layouts with more ranks than rows on the sharded dim: empty shards, and DCP's ShardedTensor
chunks placed past the end. Property tests draw such cases now and then; these always run."""


@pytest.mark.ckpt_suite("resharding")
@pytest.mark.ckpt_level("core")
@pytest.mark.ckpt_requires("resharding")
class ReshardingTests:
    """Any destination layout loads from any saved layout (DTensor, ShardedTensor, plain)."""

    # three times the profile's examples: cheap cases, and the core of what resharding means
    @property_test(
        max_examples=lambda n: 3 * n,
        pinned=layout_examples(
            save_worlds=(1, 2, 3, 4),
            per_rank_keys=True,
            also={"world": lambda case: case.save_world},
        ),
    )
    def test_placement_change(self, ckpt, data):
        """Same world (1 to 4 ranks, and the session's largest), each tensor loaded under an
        independently drawn layout, held by every rank or by some ranks only (another subset
        on load)."""
        world = data.draw(
            st.sampled_from(world_sizes(1, 2, 3, 4, largest=ckpt.session.largest_world)),
            label="world",
        )
        options = supported_options(
            ckpt.backend,
            objects=False,
            per_rank_keys=True,
            dtypes=mostly_basic_dtypes(ckpt.backend),
        )
        case = data.draw(
            save_load_cases(save_worlds=(world,), load_worlds=(world,), **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("uneven_shards", "empty_tensors")
    @pytest.mark.parametrize("case", MORE_RANKS_THAN_ROWS)
    def test_more_ranks_than_rows(self, ckpt, case):
        """Saved or loaded with more ranks than the sharded dim has rows (empty local shards),
        under ShardedTensor and DTensor layouts: every value loads."""
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("world_size_change")
    @property_test(
        max_examples=lambda n: 3 * n,
        pinned=layout_examples(
            save_worlds=(1, 2, 3, 4), world_change=True, per_rank_keys=True, objects=True
        ),
    )
    def test_world_size_change(self, ckpt, data):
        """Saved on N ranks, loaded on M ranks (1 to 4 each, and the session's largest world);
        keys held by every rank or by some ranks only, on either side."""
        options = supported_options(
            ckpt.backend, per_rank_keys=True, dtypes=mostly_basic_dtypes(ckpt.backend)
        )
        worlds = world_sizes(1, 2, 3, 4, largest=ckpt.session.largest_world)
        case = data.draw(
            save_load_cases(save_worlds=worlds, load_worlds=worlds, **options).filter(
                lambda c: c.save_world != c.load_world
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("dtensor", "strided_shard")
    @property_test(
        pinned=layout_examples(
            save_worlds=(2, 4),
            load_worlds=(1, 2, 4),
            world_change=None,
            kinds=("dtensor",),
            strided=True,
            keep=lambda c: any(
                p.startswith("SS")
                for lay in c.save_layouts + c.load_layouts
                for p in lay.placements
            ),
        )
    )
    def test_strided_shard_placement_change(self, ckpt, data):
        """To and from _StridedShard layouts."""
        options = supported_options(
            ckpt.backend, kinds=("dtensor",), strided=True, objects=False, max_tensors=1
        )
        case = data.draw(
            save_load_cases(save_worlds=(2, 4), load_worlds=(1, 2, 4), **options).filter(
                lambda c: any(
                    p.startswith("SS")
                    for lay in c.save_layouts + c.load_layouts
                    for p in lay.placements
                )
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)
