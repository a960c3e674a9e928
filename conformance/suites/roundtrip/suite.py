"""Round trip: what is saved loads back unchanged, under the same layout, on 1 to 4 ranks."""

from __future__ import annotations

import pytest

from ...kit.layouts import layout_examples
from ...kit.profiles import property_test
from ...kit.strategies import save_load_cases, supported_options

__all__ = ["RoundTripTests"]


@pytest.mark.ckpt_suite("roundtrip")
@pytest.mark.ckpt_level("core")
class RoundTripTests:
    """Save a value-encoded state and load it into the same layout."""

    @property_test(
        pinned=layout_examples(
            save_worlds=(1, 2), same_layout=True, per_rank_keys=True, objects=True
        )
    )
    def test_round_trip(self, ckpt, data):
        """Tensors of any layout the backend supports, with objects, nested or flat; on two
        ranks a key may be held by one of them only."""
        options = supported_options(ckpt.backend, per_rank_keys=True)
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("dtensor")
    @property_test(pinned=layout_examples(save_worlds=(2,), same_layout=True, kinds=("dtensor",)))
    def test_round_trip_dtensor_on_two_ranks(self, ckpt, data):
        """DTensors only, on 2 ranks, uneven and empty shards included."""
        options = supported_options(ckpt.backend, kinds=("dtensor",), objects=False)
        case = data.draw(
            save_load_cases(save_worlds=(2,), same_layout=True, **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("sharded_tensor")
    @property_test(
        pinned=layout_examples(
            save_worlds=(2, 3), same_layout=True, kinds=("sharded_tensor",), min_dims=1
        )
    )
    def test_round_trip_sharded_tensor_on_two_ranks(self, ckpt, data):
        """ShardedTensors (ChunkShardingSpec on any dim) only, on 2 and 3 ranks, uneven included."""
        options = supported_options(
            ckpt.backend, kinds=("sharded_tensor",), objects=False, min_dims=1
        )
        case = data.draw(
            save_load_cases(save_worlds=(2, 3), same_layout=True, **options), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("dtensor", "strided_shard")
    @property_test(
        pinned=layout_examples(
            save_worlds=(2, 4),
            same_layout=True,
            kinds=("dtensor",),
            strided=True,
            keep=lambda c: any(p.startswith("SS") for p in c.save_layouts[0].placements),
        )
    )
    def test_round_trip_strided_shard(self, ckpt, data):
        """DTensors with a _StridedShard placement (FSDP2 + TP layouts), on 2 and 4 ranks."""
        options = supported_options(
            ckpt.backend, kinds=("dtensor",), strided=True, objects=False, max_tensors=1
        )
        case = data.draw(
            save_load_cases(save_worlds=(2, 4), same_layout=True, **options).filter(
                lambda c: any(p.startswith("SS") for p in c.save_layouts[0].placements)
            ),
            label="case",
        )
        ckpt.check_save_then_load(case)
