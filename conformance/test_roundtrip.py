"""The round-trip suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites import RoundTripTests


class TestRoundTrip(RoundTripTests):
    pass
