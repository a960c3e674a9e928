"""The lifecycle suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.lifecycle import LifecycleTests


class TestLifecycle(LifecycleTests):
    pass
