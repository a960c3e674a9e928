"""The megatron and nvidia-resiliency-ext adapters: selected by name, what they declare, and
a 2-rank save and resharding load through each (their full verdicts: docs/backends.md)."""

from __future__ import annotations

import pytest
from ckptconf.conformance import Layout, SaveLoadCase, TensorSpec, check_save_then_load

CASE = SaveLoadCase(
    (TensorSpec("w", (4, 3), "float32"), TensorSpec("p", (5,), "float64", salt=1)),
    (Layout("sharded_tensor"), Layout()),
    (Layout("sharded_tensor", shard_dim=1), Layout("sharded_tensor")),
    save_world=2,
    load_world=2,
)


def _backend(name: str, module: str):
    pytest.importorskip(module, reason=f"needs the {name} package (the dev extra)")
    from ckptconf.conformance import select_backend

    return select_backend(name)


def test_megatron_declares_what_its_planners_cannot_take():
    backend = _backend("megatron", "megatron.core.dist_checkpointing.strategies.torch")
    assert backend.inherits == "torch-dcp"
    for feature in ("nested_state_dicts", "objects", "dtensor"):
        assert not backend.supports(feature), feature
    assert backend.supports("storage") and backend.supports("sharded_tensor")


def test_nvrx_runs_under_its_own_driver_only():
    backend = _backend("nvidia-resiliency-ext", "nvidia_resiliency_ext")
    assert backend.save is not None and backend.storage_writer is None
    assert not backend.supports("storage")
    assert backend.injection_unsupported("storage_writer") is not None
    # its async flow (AsyncCallsQueue, persistent worker, finalize) is what users run; it
    # needs CUDA, and where there is none the reason says exactly why
    assert backend.async_save is not None
    import torch

    if not torch.cuda.is_available():
        assert not backend.supports("async_save")
        assert "torch.cuda.current_device()" in backend.unsupported_reasons["async_save"]


def test_a_declared_feature_carries_its_reason_to_the_unsupported_tests():
    from ckptconf.conformance import Backend

    backend = Backend(
        "b",
        save=lambda *a, **k: None,
        load=lambda *a, **k: None,
        unsupported={"dtensor": "no meshes here"},
    )
    assert backend.unsupported == frozenset({"dtensor"}) and not backend.supports("dtensor")
    assert backend.unsupported_reasons == {"dtensor": "no meshes here"}
    with pytest.raises(ValueError, match="unknown features"):
        Backend("b", save=print, load=print, unsupported={"teleport": "why not"})


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "name, module",
    [
        ("megatron", "megatron.core.dist_checkpointing.strategies.torch"),
        ("nvidia-resiliency-ext", "nvidia_resiliency_ext"),
    ],
)
def test_save_on_two_ranks_and_load_resharded(name, module):
    check_save_then_load(_backend(name, module), CASE)
