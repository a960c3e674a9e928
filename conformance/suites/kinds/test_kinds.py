"""The kinds suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.kinds import KindsTests


class TestKinds(KindsTests):
    pass
