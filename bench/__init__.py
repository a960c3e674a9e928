"""ckptconf.bench: benchmarks of ckptconf itself.

- :mod:`ckptconf.bench.suite`: where a conformance run's time goes (``ckptconf bench suite``).
- :mod:`ckptconf.bench.object_store`: the reference with an object store's costs, a backend
  to time the suite against.

The benchmarks of the reference against DCP (``ckptconf bench io``, ``plan``, ``reshard``) are
in ``ckptconf.harness.bench*`` for now.
"""
