"""The resharding suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.resharding import ReshardingTests


class TestResharding(ReshardingTests):
    pass
