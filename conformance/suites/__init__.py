"""Abstract conformance suites: subclass one in a test module to run it against your backend.

    import pytest
    from ckptconf.conformance import Backend
    from ckptconf.conformance.suites import RoundTripTests

    @pytest.fixture(scope="session")
    def backend():
        return Backend(name="mine", storage_writer=MyWriter, storage_reader=MyReader)

    class TestMine(RoundTripTests):
        pass

The classes are named ``*Tests`` so pytest does not collect them by themselves.

- :class:`RoundTripTests`: what is saved loads back unchanged (1 and 2 ranks)
- :class:`ReshardingTests`: placement change and world-size change
- :class:`FaultyStorageTests`: a writer or reader failing at any hook on any rank, a rank killed
- :class:`StateDictKindsTests`: dtypes, 0-dim, empty, non-contiguous, containers, keys, strict loads
- :class:`AsyncSaveTests`: async_save saves the state at the call
- :class:`PlanValidationTests`: the backend's planners at the planner level, up to 2,048 simulated ranks
- :class:`StorageTests`: metadata through the storage, corruption, re-save, sibling saves, short reads
- :class:`MeshChangeTests`: 1-D <-> 2-D meshes, submeshes, kind chains, checkpointable values, Checkpointer
"""

from .async_save import AsyncSaveTests
from .faults import FaultyStorageTests
from .kinds import StateDictKindsTests
from .mesh_change import MeshChangeTests
from .plans import PlanValidationTests
from .resharding import ReshardingTests
from .roundtrip import RoundTripTests
from .storage import StorageTests

__all__ = [
    "AsyncSaveTests",
    "FaultyStorageTests",
    "MeshChangeTests",
    "PlanValidationTests",
    "ReshardingTests",
    "RoundTripTests",
    "StateDictKindsTests",
    "StorageTests",
]
