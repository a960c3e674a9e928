"""Async save: what is saved is the state at the time of the call, whatever happens to it after."""

from __future__ import annotations

import pytest

from ...kit import values
from ...kit.cases import Layout, SaveLoadCase, TensorSpec
from ...kit.layouts import layout_examples
from ...kit.outcomes import unsupported
from ...kit.profiles import property_test
from ...kit.strategies import save_load_cases, supported_options
from . import ranks

__all__ = ["AsyncSaveTests"]


@pytest.mark.ckpt_suite("async_save")
@pytest.mark.ckpt_level("core")
@pytest.mark.ckpt_requires("async_save")
class AsyncSaveTests:
    """``run_async_save`` snapshots the state before it returns."""

    @property_test(pinned=layout_examples(same_layout=True, max_side=6, objects=True))
    def test_state_changed_after_call_is_not_saved(self, ckpt, data):
        """Start an async save, at once change every tensor element in place and replace
        (and mutate) every object, then wait: a load gives the values at the call."""
        options = supported_options(
            ckpt.backend, dtypes=("float32", "float64", "int64"), max_side=6
        )
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        _check_async_save(ckpt, case)

    @pytest.mark.ckpt_requires("dtensor", "scalar_tensors")
    def test_scalar_dtensors_changed_after_call_are_not_saved(self, ckpt):
        """The same with 0-dim tensors, replicated DTensors among them, on 2 ranks: a staging
        copy that aliases a 0-dim value instead of copying it is caught every run."""
        specs = (TensorSpec("step", (), "float32", 1), TensorSpec("scale", (), "float64", 2))
        layouts = (Layout("dtensor", (2,), ("R",)), Layout())
        _check_async_save(ckpt, SaveLoadCase(specs, layouts, layouts, 2, 2))

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("storage", "atomic_commit")
    @property_test(
        max_examples=lambda n: max(2, n // 2),
        pinned=layout_examples(same_layout=True, max_side=6, objects=True, combined=True),
    )
    def test_load_during_async_save_sees_the_previous_checkpoint(self, ckpt, data):
        """Save a state; async-save a newer one (same keys and shapes) to the same path, and
        hold it once its data is written, before it finishes; a load meanwhile gives the
        previous state whole, or an error, never the unfinished save's values; after the
        wait, a load gives the newer state."""
        reason = ckpt.backend.injection_unsupported("storage_writer", asynchronous=True)
        if reason is not None:
            unsupported(reason)
        options = supported_options(ckpt.backend, max_side=6)
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        trial, limit = ckpt.trial(case), 20.0
        results = trial.run(
            "async_save (after a save, with a load during it)",
            ranks.load_during_async_save,
            case,
            ckpt.path(),
            limit,
            world=case.save_world,
        )
        held = [rank for rank, r in enumerate(results) if not r["reached"]]
        if held:
            unsupported(
                f"its async save wrote no data through write_data within {limit:.0f} s on "
                f"rank(s) {held}, so no load could be placed after its write"
            )
        trial.check_values(
            [m for r in results for m in r["during"].get("mismatches", [])],
            "value(s) of a load during an async save (its data written, the save not finished) "
            "are not the previous checkpoint's: the unfinished save is visible",
            step="load",
        )
        trial.check_values(
            [m for r in results for m in r["after"]],
            "value(s) loaded after the async save finished differ from the newer state",
            step="load",
        )


def _check_async_save(ckpt, case: SaveLoadCase) -> None:
    """``async_save`` the case, change the state at once, wait; a load gives the saved values."""
    trial, path = ckpt.trial(case), ckpt.path()
    world = case.save_world
    trial.run("async_save", ranks.async_save_then_clobber, case, path, world=world)
    loaded = trial.run("load (after the async save)", values.load_case, case, path, world=world)
    trial.check_values(
        [m for rank in loaded for m in rank],
        "loaded value(s) differ from the state at the async_save call (the state was "
        "changed in place after the call returned; tensors x -> -x-1, objects replaced by "
        f"{ranks.CHANGED_OBJECT!r})",
    )
