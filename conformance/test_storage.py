"""The storage-and-metadata suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.storage import StorageTests


class TestStorage(StorageTests):
    pass
