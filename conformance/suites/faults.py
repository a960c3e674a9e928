"""Faulty storage: a writer or reader failing at any hook on any rank fails every rank, clearly.

core: every rank raises within the timeout (a hang fails with every rank's stack), and
every rank's error names the failing rank's exception. strict: a previous checkpoint at
the same path still loads with its old values, and a failed first save is not loadable.

Each hook is a parameter, so every hook is tried in every run; hypothesis draws the
world, the failing rank and the state.
"""

from __future__ import annotations

import dataclasses

import pytest
from ckptconf.harness import WorldError, WorldTimeout, get_world, run_fresh_world
from ckptconf.harness.faults import KILL_POINTS
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from .. import rank_ops
from .. import rank_ops_faults as ops
from ..backend import Backend, BackendRef, StorageInjectionUnsupported
from ..cases import SaveLoadCase
from ..faults import COORDINATOR_ONLY, READER_HOOKS, WRITER_HOOKS
from ..runner import ConformanceFailure
from ..strategies import save_load_cases
from .roundtrip import kinds_for

__all__ = ["FaultyStorageTests"]

_TIMEOUT = 60.0
_KILL_POINTS = tuple(p for p in KILL_POINTS if p != "set_up_storage_writer")


def _examples_per_hook() -> int:
    """A third of the profile's examples for each hook: all hooks tried, the cost bounded."""
    return max(3, settings().max_examples // 3)


@st.composite
def _fault_case(
    draw, backend: Backend, hook: str, worlds: tuple[int, ...] = (2, 3, 1, 2)
) -> tuple[int, SaveLoadCase]:
    """``(failing rank, case)``: coordinator-only hooks fail on rank 0."""
    world = draw(st.sampled_from(worlds), label="world")
    rank = 0 if hook in COORDINATOR_ONLY else draw(st.integers(0, world - 1), label="rank")
    case = draw(
        save_load_cases(
            save_worlds=(world,),
            same_layout=True,
            kinds=tuple(k for k in kinds_for(backend) if k != "sharded_tensor"),
            strided=False,
            objects=backend.supports("objects"),
            max_tensors=2,
            max_side=6,
            allow_empty=False,
        ),
        label="case",
    )
    return rank, case


def _resalted(case: SaveLoadCase) -> SaveLoadCase:
    """The same structure with other values: a newer version of the state."""
    tensors = tuple(dataclasses.replace(t, salt=t.salt + 777) for t in case.tensors)
    return dataclasses.replace(case, tensors=tensors)


def _fail(backend, what, case, hook, rank, body, repro) -> ConformanceFailure:
    return ConformanceFailure(
        f"[{backend.name}] {what}\ncase: fault at {hook} on rank {rank}\n{case.describe()}\n"
        f"{body}\nreproduce: {repro}"
    )


def _run(backend, case, hook, rank, repro, fn, *args):
    """Run ``fn`` on the case's world; a hang or a crash is a failure naming the fault."""
    try:
        return get_world(case.save_world).run(fn, *args, timeout=_TIMEOUT)
    except WorldTimeout as exc:
        raise _fail(
            backend, "hung after an injected fault", case, hook, rank, str(exc), repro
        ) from None
    except WorldError as exc:
        if any(e.type_name == StorageInjectionUnsupported.__name__ for e in exc.errors):
            pytest.skip(
                "unsupported by backend: its save/load take no storage writer/reader to wrap"
            )
        raise _fail(
            backend, "a rank crashed after an injected fault", case, hook, rank, str(exc), repro
        ) from None


def _check_every_rank_reports(backend, case, hook, rank, results, repro) -> None:
    expected = f"injected fault at {hook} on rank {rank}"
    for r, result in enumerate(results):
        if not result["raised"]:
            raise _fail(
                backend,
                f"rank {r} did not raise",
                case,
                hook,
                rank,
                "the operation returned normally",
                repro,
            )
        if expected not in result["text"]:
            raise _fail(
                backend,
                f"rank {r}'s error does not report the failing rank's exception ({expected!r})",
                case,
                hook,
                rank,
                f"rank {r} raised {result['type']}: {result['text'][:1500]}",
                repro,
            )


def _check_previous_checkpoint(backend, ref, old, new, path, hook, rank, after, repro) -> None:
    """The checkpoint at ``path`` loads and holds ``old``'s values (``after``: what happened)."""
    try:
        results = get_world(old.save_world).run(
            ops.load_and_compare, ref, old, path, timeout=_TIMEOUT
        )
    except WorldError as exc:
        raise _fail(
            backend,
            f"the previous checkpoint no longer loads {after}",
            new,
            hook,
            rank,
            str(exc),
            repro,
        ) from None
    mismatches = [m for r in results for m in r]
    if mismatches:
        raise _fail(
            backend,
            f"the previous checkpoint changed {after} (new values are salted +777)",
            new,
            hook,
            rank,
            "\n".join(f"  {m}" for m in mismatches[:8]),
            repro,
        )


@pytest.mark.ckpt_suite("faults")
class FaultyStorageTests:
    """Storage failing at every hook, on the coordinator and on other ranks."""

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @settings(max_examples=_examples_per_hook())
    @given(data=st.data())
    def test_writer_fault_fails_every_rank(self, backend, ckpt_path, ckpt_repro, hook, data):
        """A writer failing at ``hook``: every rank raises, naming the failing rank's error."""
        rank, case = data.draw(_fault_case(backend, hook))
        path, ref = ckpt_path(), BackendRef.of(backend)
        results = _run(
            backend, case, hook, rank, ckpt_repro, ops.save_with_fault, ref, case, path, hook, rank
        )
        _check_every_rank_reports(backend, case, hook, rank, results, ckpt_repro)

    @pytest.mark.ckpt_level("core")
    @pytest.mark.parametrize("hook", READER_HOOKS)
    @settings(max_examples=_examples_per_hook())
    @given(data=st.data())
    def test_reader_fault_fails_every_rank(self, backend, ckpt_path, ckpt_repro, hook, data):
        """A reader failing at ``hook``: every rank raises, naming the failing rank's error."""
        rank, case = data.draw(_fault_case(backend, hook))
        path, ref = ckpt_path(), BackendRef.of(backend)
        get_world(case.save_world).run(rank_ops.save_case, ref, case, path, timeout=_TIMEOUT)
        results = _run(
            backend, case, hook, rank, ckpt_repro, ops.load_with_fault, ref, case, path, hook, rank
        )
        _check_every_rank_reports(backend, case, hook, rank, results, ckpt_repro)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @settings(max_examples=_examples_per_hook())
    @given(data=st.data())
    def test_failed_save_keeps_the_previous_checkpoint(
        self, backend, ckpt_path, ckpt_repro, hook, data
    ):
        """A re-save failing at ``hook`` leaves the previous checkpoint whole, with old values."""
        rank, case = data.draw(_fault_case(backend, hook))
        path, ref = ckpt_path(), BackendRef.of(backend)
        get_world(case.save_world).run(rank_ops.save_case, ref, case, path, timeout=_TIMEOUT)
        newer = _resalted(case)
        _run(
            backend,
            newer,
            hook,
            rank,
            ckpt_repro,
            ops.save_with_fault,
            ref,
            newer,
            path,
            hook,
            rank,
        )
        _check_previous_checkpoint(
            backend, ref, case, newer, path, hook, rank, "after a failed save", ckpt_repro
        )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @pytest.mark.parametrize("hook", WRITER_HOOKS)
    @settings(max_examples=_examples_per_hook())
    @given(data=st.data())
    def test_failed_first_save_is_not_loadable(self, backend, ckpt_path, ckpt_repro, hook, data):
        """A first save failing at ``hook`` leaves nothing that loads as a checkpoint."""
        rank, case = data.draw(_fault_case(backend, hook))
        path, ref = ckpt_path(), BackendRef.of(backend)
        _run(
            backend, case, hook, rank, ckpt_repro, ops.save_with_fault, ref, case, path, hook, rank
        )
        results = get_world(case.save_world).run(
            ops.load_expecting_failure, ref, case, path, timeout=_TIMEOUT
        )
        for r, result in enumerate(results):
            if not result["raised"]:
                raise _fail(
                    backend,
                    f"rank {r} loaded a checkpoint whose save failed",
                    case,
                    hook,
                    rank,
                    f"mismatches: {result.get('mismatches')}",
                    ckpt_repro,
                )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    # fresh processes cost seconds per example: few examples, and no shrinking
    @settings(max_examples=3, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    @given(data=st.data())
    def test_rank_killed_mid_save_keeps_the_previous_checkpoint(
        self, backend, ckpt_path, ckpt_repro, data
    ):
        """A rank SIGKILLed at a point of a re-save: the previous checkpoint still loads whole."""
        point = data.draw(st.sampled_from(_KILL_POINTS), label="point")
        coordinator_only = point in ("prepare_global_plan", "finish")
        rank = 0 if coordinator_only else data.draw(st.integers(0, 1), label="rank")
        _, case = data.draw(_fault_case(backend, "write_data", worlds=(2,)))
        path, ref = ckpt_path(), BackendRef.of(backend)
        get_world(2).run(rank_ops.save_case, ref, case, path, timeout=_TIMEOUT)
        newer = _resalted(case)
        try:
            run_fresh_world(ops.save_killed, 2, ref, newer, path, rank, point, timeout=_TIMEOUT)
        except WorldError:
            survivor = case  # the rank died and the others were stopped: the old one must remain
        else:
            survivor = newer  # the kill point was never reached (mid_write with one item)
        _check_previous_checkpoint(
            backend,
            ref,
            survivor,
            newer,
            path,
            point,
            rank,
            f"after rank {rank} was killed at {point}",
            ckpt_repro,
        )
