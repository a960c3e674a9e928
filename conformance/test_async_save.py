"""The async-save suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.async_save import AsyncSaveTests


class TestAsyncSave(AsyncSaveTests):
    pass
