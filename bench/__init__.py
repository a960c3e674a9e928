"""ckptconf.bench: benchmarks of ckptconf itself.

- :mod:`ckptconf.bench.suite`: where a conformance run's time goes (``ckptconf bench suite``).
- :mod:`ckptconf.bench.object_store`: the reference with an object store's costs, a backend
  to time the suite against.
- :mod:`ckptconf.bench.io`, :mod:`ckptconf.bench.plan`, :mod:`ckptconf.bench.reshard`: the
  reference against DCP in one run (``ckptconf bench io``, ``plan``, ``reshard``).
- :mod:`ckptconf.bench.harness`: a warm world's per-call cost against a fresh world's
  (``ckptconf bench harness``).
"""
