"""The resharding suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites import ReshardingTests


class TestResharding(ReshardingTests):
    pass
