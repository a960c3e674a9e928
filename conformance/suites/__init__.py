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
"""

from .resharding import ReshardingTests
from .roundtrip import RoundTripTests

__all__ = ["ReshardingTests", "RoundTripTests"]
