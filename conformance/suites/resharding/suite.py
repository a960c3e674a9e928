"""Resharding: save under one layout, load under another, on the same or another number of ranks."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from ...kit.profiles import property_test
from ...kit.strategies import save_load_cases, supported_options

__all__ = ["ReshardingTests"]


@pytest.mark.ckpt_suite("resharding")
@pytest.mark.ckpt_level("core")
@pytest.mark.ckpt_requires("resharding")
class ReshardingTests:
    """Any destination layout loads from any saved layout (DTensor, ShardedTensor, plain)."""

    @property_test()
    def test_placement_change(self, ckpt, data):
        """Same world (1 to 4 ranks), each tensor loaded under an independently drawn layout."""
        world = data.draw(st.sampled_from([1, 2, 3, 4]), label="world")
        options = supported_options(ckpt.backend, objects=False)
        case = data.draw(
            save_load_cases(save_worlds=(world,), load_worlds=(world,), **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("world_size_change")
    @property_test()
    def test_world_size_change(self, ckpt, data):
        """Saved on N ranks, loaded on M ranks (1 to 4 each)."""
        options = supported_options(ckpt.backend)
        case = data.draw(
            save_load_cases(save_worlds=(1, 2, 3, 4), load_worlds=(1, 2, 3, 4), **options).filter(
                lambda c: c.save_world != c.load_world
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("dtensor", "strided_shard")
    @property_test()
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
