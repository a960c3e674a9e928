"""The faulty-storage suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.faults import FaultyStorageTests


class TestFaults(FaultyStorageTests):
    pass
