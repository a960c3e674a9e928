"""The async_save suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.async_save import AsyncSaveTests


class TestAsyncSave(AsyncSaveTests):
    pass
