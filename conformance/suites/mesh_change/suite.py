"""Mesh change: save on one mesh or world, load on another, through every way a tensor is held.

- 1-D mesh to 2-D mesh and back, with and without a world-size change;
- a DTensor on a sub-DeviceMesh that only some ranks hold (DCP's ``SUBMESH_TENSOR_SIZE``),
  loaded into the same layout, the whole world, another submesh, a plain tensor;
- chains: save under one kind, load under another, save that, load under a third;
- a tensor subclass implementing DCP's checkpointable protocol, and ``LocalShardsWrapper``;
- the ``Checkpointer`` object's save, async_save and load;
- save on N and load on M simulated ranks (up to 256) through the backend's planners.

Every loaded element of every local piece on every rank is compared with its encoded value.
"""

from __future__ import annotations

import dataclasses

import pytest
from ckptconf.reference.compat import checkpointable_protocol, local_shards_wrapper
from hypothesis import Phase

from ...kit.cases import SaveLoadCase, TensorSpec
from ...kit.layouts import layout_examples
from ...kit.outcomes import unsupported
from ...kit.profiles import property_test
from ...kit.strategies import save_load_cases, supported_options
from ...kit.trial import Trial
from . import ranks
from .cases import (
    DTYPES,
    PINNED_CHAINS,
    PINNED_CHECKPOINTABLES,
    PINNED_LOCAL_SHARDS,
    PINNED_MESH_CHANGES,
    PINNED_SUBMESHES,
    Held,
    MeshCase,
    Step,
    chain_cases,
    chain_kinds,
    mesh_change_cases,
    simulated_cases,
    submesh_cases,
    with_kind_cases,
)
from .simulated import simulate_mesh_change

__all__ = ["MeshChangeTests"]

NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
"""Phases for tests whose one example costs several world calls: no shrinking."""

_CHECKPOINTER_PINS = layout_examples(same_layout=True, max_side=6, objects=True)
"""Pinned examples of the Checkpointer tests' cases (``_checkpointer_case``)."""


def _check_mesh_case(trial: Trial, case: MeshCase, ckpt) -> None:
    """Run every step of the case; the first step that raises or loads a wrong value fails."""
    paths = [ckpt.path() for _ in case.steps]
    trial.run("save (step 0)", ranks.save_step, case, 0, paths[0], world=case.steps[0].world)
    last = len(case.steps) - 1
    for i in range(1, len(case.steps)):
        source = paths[i - 1] if case.chain else paths[0]
        resave = paths[i] if case.chain and i < last else None
        loaded = trial.run(
            f"load (step {i}{', then save' if resave else ''})",
            ranks.load_step,
            case,
            i,
            source,
            resave,
            world=case.steps[i].world,
        )
        trial.check_values(
            [m for r in loaded for m in r],
            f"loaded value(s) of step {i} differ from what was saved",
        )


def _needs_protocol() -> None:
    if not checkpointable_protocol():
        pytest.skip("this torch defines no checkpointable protocol")


@pytest.mark.ckpt_suite("mesh_change")
@pytest.mark.ckpt_level("core")
class MeshChangeTests:
    """Loads after a change of mesh, world, submesh or tensor kind give the saved values."""

    @pytest.mark.ckpt_requires("dtensor", "resharding")
    @property_test(max_examples=lambda n: n // 2, pinned=PINNED_MESH_CHANGES)
    def test_1d_mesh_to_2d_mesh_and_back(self, ckpt, data):
        """DTensors saved on a 1-D mesh load on a 2-D mesh and the reverse ((4,) <-> (2, 2),
        (2,) -> (2, 2), ...), placements drawn on both sides."""
        case = data.draw(
            mesh_change_cases(ckpt.backend, largest=ckpt.session.largest_world), label="case"
        )
        ckpt.check_save_then_load(case)

    @pytest.mark.ckpt_requires("dtensor", "resharding")
    @property_test(max_examples=lambda n: 3 * n // 10, phases=NO_SHRINK, pinned=PINNED_SUBMESHES)
    def test_submesh_tensor(self, ckpt, data):
        """A DTensor on a DeviceMesh of some ranks (ranks outside hold an empty local tensor)
        loads back as saved, into the whole world, another submesh, or a plain tensor."""
        case = data.draw(submesh_cases(ckpt.backend), label="case")
        _check_mesh_case(ckpt.trial(case), case, ckpt)

    @pytest.mark.ckpt_requires("resharding")
    @property_test(max_examples=lambda n: n // 4, phases=NO_SHRINK, pinned=PINNED_CHAINS)
    def test_kind_chain(self, ckpt, data):
        """Save under one kind (DTensor, submesh, plain, ShardedTensor), load under another,
        save what was loaded, load under a third (and a fourth), on 2 to 4 ranks."""
        if len(chain_kinds(ckpt.backend)) < 2:
            unsupported("a chain needs DTensor or ShardedTensor values")
        case = data.draw(chain_cases(ckpt.backend), label="case")
        _check_mesh_case(ckpt.trial(case), case, ckpt)

    @pytest.mark.ckpt_requires("checkpointable", "uneven_shards", "resharding")
    @property_test(max_examples=lambda n: 2 * n // 5, pinned=PINNED_CHECKPOINTABLES)
    def test_checkpointable_subclass(self, ckpt, data):
        """A tensor subclass that only implements DCP's checkpointable protocol (uneven row
        ranges, several or none per rank, some held twice) saves and loads with resharding."""
        _needs_protocol()
        case = data.draw(with_kind_cases(ckpt.backend, "checkpointable"), label="case")
        _check_mesh_case(ckpt.trial(case), case, ckpt)

    @pytest.mark.ckpt_requires("checkpointable", "dtensor", "uneven_shards", "resharding")
    @property_test(max_examples=lambda n: 3 * n // 10, pinned=PINNED_LOCAL_SHARDS)
    def test_local_shards_wrapper(self, ckpt, data):
        """A DTensor over torch's LocalShardsWrapper (one uneven row range per rank, as
        TestCheckpointableReshard) saves and loads with resharding."""
        if local_shards_wrapper() is None:
            pytest.skip("this torch has no LocalShardsWrapper with the checkpointable protocol")
        case = data.draw(with_kind_cases(ckpt.backend, "local_shards"), label="case")
        _check_mesh_case(ckpt.trial(case), case, ckpt)

    @pytest.mark.ckpt_requires("checkpointable", "dtensor", "uneven_shards", "resharding")
    def test_local_shards_wrapper_with_an_empty_shard(self, ckpt):
        """A LocalShardsWrapper DTensor on 2 ranks whose rank 0 holds no rows, at the offset
        where rank 1's rows start, loaded as a plain tensor on 1 rank: every run, not only
        when the property test above draws it."""
        if local_shards_wrapper() is None:
            pytest.skip("this torch has no LocalShardsWrapper with the checkpointable protocol")
        spec = TensorSpec("w", (4, 3), "float64", salt=1)
        empty_first = Held("local_shards", slabs=(((0, 0),), ((0, 4),)))
        case = MeshCase((spec,), (Step(2, (empty_first,)), Step(1, (Held(),))))
        _check_mesh_case(ckpt.trial(case), case, ckpt)

    @staticmethod
    def _checkpointer_case(ckpt, data) -> SaveLoadCase:
        options = supported_options(ckpt.backend, dtypes=DTYPES, max_side=6)
        case = data.draw(
            save_load_cases(save_worlds=(1, 2), same_layout=True, **options), label="case"
        )
        # salt >= 1: a load that fills nothing leaves zeros, which salt 0 encodes at index 0
        tensors = tuple(dataclasses.replace(t, salt=t.salt + 1) for t in case.tensors)
        return dataclasses.replace(case, tensors=tensors)

    def _check_checkpointer(self, ckpt, data, use_async: bool) -> None:
        """Round-trip a case through one Checkpointer object; fail on any differing value."""
        case = self._checkpointer_case(ckpt, data)
        how = "async_save" if use_async else "save"
        trial = ckpt.trial(case)
        results = trial.run(
            f"checkpointer ({how}, then load)",
            ranks.checkpointer_round_trip,
            case,
            ckpt.path(),
            use_async,
            world=case.save_world,
        )
        if any(r is None for r in results):
            unsupported("its checkpointer has no async_save")
        trial.check_values(
            [m for r in results for m in r],
            f"value(s) loaded after Checkpointer.{how} differ from what was saved",
        )

    @pytest.mark.ckpt_requires("checkpointer")
    @property_test(max_examples=lambda n: n // 4, pinned=_CHECKPOINTER_PINS)
    def test_checkpointer_save_and_load(self, ckpt, data):
        """``checkpointer(path).save(state)`` then ``.load(blank)`` on the same object."""
        self._check_checkpointer(ckpt, data, use_async=False)

    @pytest.mark.ckpt_requires("checkpointer", "async_save")
    @property_test(max_examples=lambda n: n // 4, pinned=_CHECKPOINTER_PINS)
    def test_checkpointer_async_save_and_load(self, ckpt, data):
        """``checkpointer(path).async_save(state)``, wait, then ``.load(blank)``."""
        self._check_checkpointer(ckpt, data, use_async=True)

    @pytest.mark.ckpt_requires("checkpointable", "resharding", "world_size_change")
    @pytest.mark.parametrize(
        "worlds", [(256, 16), (6, 256), (64, 96), (1, 128)], ids=lambda w: f"{w[0]}to{w[1]}"
    )
    @property_test(max_examples=lambda n: n // 5)
    def test_simulated_world_change(self, ckpt, worlds, data):
        """Save on N and load on M simulated ranks (1-D and 2-D meshes, up to 256 ranks)
        through the backend's planners and in-memory storage; each rank's value is a
        checkpointable subclass holding what a DTensor would."""
        _needs_protocol()
        save_planner, load_planner = ckpt.save_planner(), ckpt.load_planner()
        case = data.draw(simulated_cases(*worlds), label="case")
        trial = ckpt.trial(case)
        try:
            found = simulate_mesh_change(case, save_planner, load_planner)
        except Exception as exc:  # noqa: BLE001 - any error of the backend's planners fails
            raise trial.raised("simulated save or load raised", exc, step="simulate") from exc
        trial.check_values(
            found, "value(s) loaded on simulated ranks differ from what was saved", step="simulate"
        )
