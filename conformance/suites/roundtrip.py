"""Round trip: what is saved loads back unchanged, under the same layout, on 1 and 2 ranks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..backend import Backend
from ..runner import check_save_then_load
from ..strategies import save_load_cases

__all__ = ["RoundTripTests"]


def kinds_for(backend: Backend) -> tuple[str, ...]:
    """The tensor layouts a backend has not declared unsupported."""
    kinds = ["plain"]
    if backend.supports("dtensor"):
        kinds.append("dtensor")
    if backend.supports("sharded_tensor"):
        kinds.append("sharded_tensor")
    return tuple(kinds)


@pytest.mark.ckpt_suite("roundtrip")
@pytest.mark.ckpt_level("core")
class RoundTripTests:
    """Save a value-encoded state and load it into the same layout."""

    @given(data=st.data())
    def test_round_trip(self, backend, ckpt_path, ckpt_repro, data):
        """Tensors of any layout the backend supports, with objects, nested or flat."""
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds_for(backend),
                strided=False,
                objects=backend.supports("objects"),
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("dtensor")
    @given(data=st.data())
    def test_round_trip_dtensor_on_two_ranks(self, backend, ckpt_path, ckpt_repro, data):
        """DTensors only, on 2 ranks, uneven and empty shards included."""
        case = data.draw(
            save_load_cases(
                save_worlds=(2,),
                same_layout=True,
                kinds=("dtensor",),
                strided=False,
                objects=False,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("sharded_tensor")
    @given(data=st.data())
    def test_round_trip_sharded_tensor_on_two_ranks(self, backend, ckpt_path, ckpt_repro, data):
        """ShardedTensors (ChunkShardingSpec on any dim) only, on 2 and 3 ranks, uneven included."""
        case = data.draw(
            save_load_cases(
                save_worlds=(2, 3),
                same_layout=True,
                kinds=("sharded_tensor",),
                strided=False,
                objects=False,
                allow_empty=backend.supports("empty_tensors"),
                min_dims=1,
            ),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)

    @pytest.mark.ckpt_requires("dtensor", "strided_shard")
    @given(data=st.data())
    def test_round_trip_strided_shard(self, backend, ckpt_path, ckpt_repro, data):
        """DTensors with a _StridedShard placement (FSDP2 + TP layouts), on 2 and 4 ranks."""
        case = data.draw(
            save_load_cases(
                save_worlds=(2, 4),
                same_layout=True,
                kinds=("dtensor",),
                strided=True,
                objects=False,
                max_tensors=1,
                allow_empty=backend.supports("empty_tensors"),
            ).filter(lambda c: any(p.startswith("SS") for p in c.save_layouts[0].placements)),
            label="case",
        )
        check_save_then_load(backend, case, ckpt_path(), repro=ckpt_repro)
