"""The crash-states suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.crash_states import CrashStatesTests


class TestCrashStates(CrashStatesTests):
    pass
