"""Faulty storage: a writer or reader failing at any hook on any rank fails every rank, clearly.

core: every rank raises within the timeout (a hang fails with every rank's stack), and
every rank's error names the failing rank's exception. strict: a previous checkpoint at
the same path still loads with its old values, and a failed first save is not loadable.
"""

from __future__ import annotations

import dataclasses

import pytest
from ckptconf.harness import WorldError, WorldTimeout, get_world, run_fresh_world
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from .. import rank_ops_faults as ops
from ..backend import Backend, BackendRef, StorageInjectionUnsupported
from ..cases import SaveLoadCase
from ..faults import COORDINATOR_ONLY, READER_HOOKS, WRITER_HOOKS
from ..runner import ConformanceFailure
from ..strategies import save_load_cases
from .roundtrip import kinds_for

__all__ = ["FaultyStorageTests"]

_TIMEOUT = 60.0


@st.composite
def _fault_case(
    draw, backend: Backend, hooks: tuple[str, ...], worlds: tuple[int, ...] = (1, 2, 2, 3)
):
    world = draw(st.sampled_from(worlds), label="world")
    hook = draw(st.sampled_from(hooks), label="hook")
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
    return hook, rank, case


def _resalted(case: SaveLoadCase) -> SaveLoadCase:
    """The same structure with other values: a newer version of the state."""
    tensors = tuple(dataclasses.replace(t, salt=t.salt + 777) for t in case.tensors)
    return dataclasses.replace(case, tensors=tensors)


def _fail(backend, what, case, hook, rank, body, repro) -> ConformanceFailure:
    return ConformanceFailure(
        f"[{backend.name}] {what}\ncase: fault at {hook} on rank {rank}\n{case.describe()}\n{body}\nreproduce: {repro}"
    )


def _run(backend, case, hook, rank, repro, fn, *args):
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


@pytest.mark.ckpt_suite("faults")
class FaultyStorageTests:
    """Storage failing at every hook, on the coordinator and on other ranks."""

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_writer_fault_fails_every_rank(self, backend, ckpt_path, ckpt_repro, data):
        hook, rank, case = data.draw(_fault_case(backend, WRITER_HOOKS))
        path = ckpt_path()
        ref = BackendRef.of(backend)
        results = _run(
            backend, case, hook, rank, ckpt_repro, ops.save_with_fault, ref, case, path, hook, rank
        )
        _check_every_rank_reports(backend, case, hook, rank, results, ckpt_repro)

    @pytest.mark.ckpt_level("core")
    @given(data=st.data())
    def test_reader_fault_fails_every_rank(self, backend, ckpt_path, ckpt_repro, data):
        hook, rank, case = data.draw(_fault_case(backend, READER_HOOKS))
        path = ckpt_path()
        ref = BackendRef.of(backend)
        get_world(case.save_world).run(_save_plain, ref, case, path, timeout=_TIMEOUT)
        results = _run(
            backend, case, hook, rank, ckpt_repro, ops.load_with_fault, ref, case, path, hook, rank
        )
        _check_every_rank_reports(backend, case, hook, rank, results, ckpt_repro)

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @given(data=st.data())
    def test_failed_save_keeps_the_previous_checkpoint(self, backend, ckpt_path, ckpt_repro, data):
        hook, rank, case = data.draw(_fault_case(backend, WRITER_HOOKS))
        path = ckpt_path()
        ref = BackendRef.of(backend)
        world = get_world(case.save_world)
        world.run(_save_plain, ref, case, path, timeout=_TIMEOUT)
        _run(
            backend,
            case,
            hook,
            rank,
            ckpt_repro,
            ops.save_with_fault,
            ref,
            _resalted(case),
            path,
            hook,
            rank,
        )
        try:
            mismatches = world.run(ops.load_and_compare, ref, case, path, timeout=_TIMEOUT)
        except WorldError as exc:
            raise _fail(
                backend,
                "the previous checkpoint no longer loads after a failed save",
                case,
                hook,
                rank,
                str(exc),
                ckpt_repro,
            ) from None
        flat = [m for r in mismatches for m in r]
        if flat:
            raise _fail(
                backend,
                "the previous checkpoint changed after a failed save",
                case,
                hook,
                rank,
                "\n".join(f"  {m}" for m in flat[:8]),
                ckpt_repro,
            )

    @pytest.mark.ckpt_level("strict")
    @pytest.mark.ckpt_requires("atomic_commit")
    @given(data=st.data())
    def test_failed_first_save_is_not_loadable(self, backend, ckpt_path, ckpt_repro, data):
        hook, rank, case = data.draw(_fault_case(backend, WRITER_HOOKS))
        path = ckpt_path()
        ref = BackendRef.of(backend)
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
        from ckptconf.harness.faults import KILL_POINTS

        point = data.draw(
            st.sampled_from([p for p in KILL_POINTS if p != "set_up_storage_writer"]), label="point"
        )
        rank = (
            0
            if point in ("prepare_global_plan", "finish")
            else data.draw(st.integers(0, 1), label="rank")
        )
        _, _, case = data.draw(_fault_case(backend, WRITER_HOOKS, worlds=(2,)))
        path = ckpt_path()
        ref = BackendRef.of(backend)
        get_world(2).run(_save_plain, ref, case, path, timeout=_TIMEOUT)
        newer = _resalted(case)
        try:
            run_fresh_world(_save_killed, 2, ref, newer, path, rank, point, timeout=_TIMEOUT)
            survivor = newer  # the kill point was never reached (e.g. mid_write with one item): a complete save
        except WorldError:
            survivor = case  # the killed rank died and the others were stopped: the old checkpoint must remain
        try:
            mismatches = get_world(2).run(
                ops.load_and_compare, ref, survivor, path, timeout=_TIMEOUT
            )
        except WorldError as exc:
            raise _fail(
                backend,
                f"the previous checkpoint no longer loads after rank {rank} was killed at {point}",
                case,
                point,
                rank,
                str(exc),
                ckpt_repro,
            ) from None
        flat = [m for r in mismatches for m in r]
        if flat:
            raise _fail(
                backend,
                f"the previous checkpoint changed after rank {rank} was killed at {point}",
                case,
                point,
                rank,
                "\n".join(f"  {m}" for m in flat[:8]),
                ckpt_repro,
            )


def _save_plain(backend_ref: BackendRef, case: SaveLoadCase, path: str) -> None:
    from .. import rank_ops

    rank_ops.save_case(backend_ref, case, path)


def _save_killed(
    backend_ref: BackendRef, case: SaveLoadCase, path: str, rank: int, point: str
) -> None:
    from ckptconf.harness.faults import KillingWriter

    from ..rank_ops import build_state

    backend = backend_ref.resolve()
    writer = KillingWriter(backend.storage_writer(path), rank=rank, point=point)
    backend.run_save(build_state(case, for_load=False), path, storage_writer=writer)
