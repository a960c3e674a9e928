"""ckptconf.bench: benchmarks of ckptconf itself.

- :mod:`ckptconf.bench.suite`: where a conformance run's time goes (``ckptconf bench suite``).

The benchmarks of the reference against DCP (``ckptconf bench io``, ``plan``, ``reshard``) are
in ``ckptconf.harness.bench*`` for now.
"""
