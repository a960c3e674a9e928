"""The per_rank suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.per_rank import PerRankTests


class TestPerRank(PerRankTests):
    pass
