"""The plans suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.plans import PlansTests


class TestPlans(PlansTests):
    pass
