"""The faults suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.faults import FaultsTests


class TestFaults(FaultsTests):
    pass
