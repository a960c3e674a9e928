"""The state-dict kinds suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.kinds import StateDictKindsTests


class TestKinds(StateDictKindsTests):
    pass
