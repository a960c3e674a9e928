"""The plan-validation suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.plans import PlanValidationTests


class TestPlans(PlanValidationTests):
    pass
