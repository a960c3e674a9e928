"""The storage suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.storage import StorageTests


class TestStorage(StorageTests):
    pass
