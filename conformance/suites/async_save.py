"""Async save: what is saved is the state at the time of the call, whatever happens to it after."""

from __future__ import annotations

import pytest
from ckptconf.harness import WorldError, get_world
from hypothesis import given
from hypothesis import strategies as st

from .. import rank_ops, rank_ops_async
from ..backend import BackendRef
from ..runner import _failure, _listing
from ..strategies import save_load_cases
from .roundtrip import kinds_for

__all__ = ["AsyncSaveTests"]

TIMEOUT = 120.0


@pytest.mark.ckpt_suite("async")
@pytest.mark.ckpt_level("core")
@pytest.mark.ckpt_requires("async_save")
class AsyncSaveTests:
    """``run_async_save`` snapshots the state before it returns."""

    @given(data=st.data())
    def test_state_changed_after_call_is_not_saved(self, backend, ckpt_path, ckpt_repro, data):
        """Start an async save, at once change every tensor element in place and replace
        (and mutate) every object, then wait: a load gives the values at the call."""
        case = data.draw(
            save_load_cases(
                save_worlds=(1, 2),
                same_layout=True,
                kinds=kinds_for(backend),
                dtypes=("float32", "float64", "int64"),
                strided=False,
                objects=backend.supports("objects"),
                max_side=6,
                allow_empty=backend.supports("empty_tensors"),
            ),
            label="case",
        )
        path, ref = ckpt_path(), BackendRef.of(backend)
        world = get_world(case.save_world)
        try:
            world.run(rank_ops_async.async_save_then_clobber, ref, case, path, timeout=TIMEOUT)
        except WorldError as exc:
            raise _failure(
                backend, "async save raised", case.describe(), str(exc), ckpt_repro
            ) from None
        try:
            results = world.run(rank_ops.load_case, ref, case, path, timeout=TIMEOUT)
        except WorldError as exc:
            raise _failure(
                backend, "load after async save raised", case.describe(), str(exc), ckpt_repro
            ) from None
        mismatches = [m for r in results for m in r]
        if mismatches:
            raise _failure(
                backend,
                f"{len(mismatches)} loaded value(s) differ from the state at the async_save call "
                f"(the state was changed in place after the call returned; tensors x -> -x-1, "
                f"objects replaced by {rank_ops_async.CHANGED_OBJECT!r})",
                case.describe(),
                _listing(mismatches),
                ckpt_repro,
            )
