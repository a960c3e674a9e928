"""The roundtrip suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.roundtrip import RoundTripTests


class TestRoundTrip(RoundTripTests):
    pass
