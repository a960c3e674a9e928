"""The conformance suites: subclass one in a test module to run it against your backend.

    import pytest
    from ckptconf.conformance import Backend
    from ckptconf.conformance.suites import RoundTripTests

    @pytest.fixture(scope="session")
    def ckpt_backend():  # a fixture named ``backend`` works too
        return Backend(name="mine", storage_writer=MyWriter, storage_reader=MyReader)

    class TestMine(RoundTripTests):
        pass

A suite is a package ``suites/<name>/``: its test class (``suite.py``), its cases and
strategies (``cases.py``), what its ranks run (``ranks.py``) and the module that runs it
against ``--ckpt-backend`` (``test_<name>.py``). Its one name is the package, the
``ckpt_suite`` marker, the report's row and the test module; the class is ``<Name>Tests``.
The classes are named ``*Tests`` so pytest does not collect them by themselves.

- :class:`RoundTripTests` (``roundtrip``): what is saved loads back unchanged
- :class:`ReshardingTests` (``resharding``): placement change and world-size change
- :class:`FaultsTests` (``faults``): a writer or reader failing at any hook, a rank killed
- :class:`KindsTests` (``kinds``): dtypes, 0-dim, empty, non-contiguous, containers, keys, strict loads
- :class:`AsyncSaveTests` (``async_save``): async_save saves the state at the call
- :class:`PlansTests` (``plans``): the backend's planners at the planner level, up to 2,048 simulated ranks
- :class:`StorageTests` (``storage``): metadata through the storage, corruption, re-save, sibling saves
- :class:`CrashStatesTests` (``crash_states``): a save recorded with strace, every crash state
  under a process crash and a power loss loads the old or the new checkpoint
- :class:`MeshChangeTests` (``mesh_change``): 1-D <-> 2-D meshes, submeshes, kind chains, Checkpointer
- :class:`PerRankTests` (``per_rank``): keys held by some ranks (pipeline, experts, loader
  state, omitted optimizer state), shrinking worlds, sub-groups, meta destinations
- :class:`LifecycleTests` (``lifecycle``): runs of saves, async saves, loads (also while a save
  commits) and failed saves at two paths, drawn by a state machine, against a model

Importing this package in a pytest session switches ckptconf on for it (its fixtures).
"""

from ..plugin import activate
from .async_save import AsyncSaveTests
from .crash_states import CrashStatesTests
from .faults import FaultsTests, FaultyStorageTests
from .kinds import KindsTests, StateDictKindsTests
from .lifecycle import LifecycleTests
from .mesh_change import MeshChangeTests
from .per_rank import PerRankTests
from .plans import PlansTests, PlanValidationTests
from .resharding import ReshardingTests
from .roundtrip import RoundTripTests
from .storage import StorageTests

SUITES: dict[str, type] = {
    "async_save": AsyncSaveTests,
    "crash_states": CrashStatesTests,
    "faults": FaultsTests,
    "kinds": KindsTests,
    "lifecycle": LifecycleTests,
    "mesh_change": MeshChangeTests,
    "per_rank": PerRankTests,
    "plans": PlansTests,
    "resharding": ReshardingTests,
    "roundtrip": RoundTripTests,
    "storage": StorageTests,
}
"""Every suite by its name."""


def suite_test_names() -> dict[str, set[str]]:
    """Every suite's test function names, for checking that expectations name real tests."""
    return {
        name: {attr for attr in dir(cls) if attr.startswith("test_")}
        for name, cls in SUITES.items()
    }


activate()

__all__ = [
    "SUITES",
    "suite_test_names",
    "AsyncSaveTests",
    "CrashStatesTests",
    "FaultsTests",
    "FaultyStorageTests",
    "KindsTests",
    "MeshChangeTests",
    "PerRankTests",
    "PlanValidationTests",
    "PlansTests",
    "ReshardingTests",
    "RoundTripTests",
    "StateDictKindsTests",
    "StorageTests",
]
