"""Resharding: save under one layout, load under another, on the same or another number of ranks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..runner import check_save_then_load
from ..strategies import save_load_cases
from .roundtrip import kinds_for

__all__ = ["ReshardingTests"]


@pytest.mark.ckpt_suite("resharding")
@pytest.mark.ckpt_level("core")
@pytest.mark.ckpt_requires("resharding")
class ReshardingTests:
    """Any destination layout loads from any saved layout (DTensor, ShardedTensor, plain)."""

    @given(data=st.data())
    def test_placement_change(self, backend, ckpt_path, ckpt_repro, data):
        """Same world (1 to 4 ranks), each tensor loaded under an independently drawn layout."""
        worlds = data.draw(st.sampled_from([1, 2, 3, 4]), label="world")
        case = data.draw(
            save_load_cases(
                save_worlds=(worlds,),
                load_worlds=(worlds,),
                kinds=kinds_for(backend),
                strided=False,
                objects=False,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("world_size_change")
    @given(data=st.data())
    def test_world_size_change(self, backend, ckpt_path, ckpt_repro, data):
        """Saved on N ranks, loaded on M ranks (1 to 4 each)."""
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2, 3, 4),
                load_worlds=(1, 2, 3, 4),
                kinds=kinds_for(backend),
                strided=False,
                objects=backend.supports("objects"),
                allow_empty=backend.supports("empty_tensors"),
            ).filter(lambda c: c.save_world != c.load_world),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("dtensor", "strided_shard")
    @given(data=st.data())
    def test_strided_shard_placement_change(self, backend, ckpt_path, ckpt_repro, data):
        """To and from _StridedShard layouts."""
        case = data.draw(
            save_load_cases(
                save_worlds=(2, 4),
                load_worlds=(1, 2, 4),
                kinds=("dtensor",),
                strided=True,
                objects=False,
                max_tensors=1,
                allow_empty=backend.supports("empty_tensors"),
            ).filter(
                lambda c: any(
                    p.startswith("SS")
                    for lay in c.save_layouts + c.load_layouts
                    for p in lay.placements
                )
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)
