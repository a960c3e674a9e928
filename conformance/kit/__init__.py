"""The kit: what two suites share, one module per role.

- :mod:`.cases`: cases and value encoding (plain data drawn in the controller)
- :mod:`.strategies`: the hypothesis strategies of those cases
- :mod:`.values`: on the ranks, a case's state built, saved, loaded and compared
- :mod:`.jobs`: job-shaped cases, keys differing from rank to rank (pipeline stages, experts)
- :mod:`.job_state`: on the ranks, a job-shaped case's state built, saved, loaded and compared
- :mod:`.running`: running a step on every rank (:class:`~.running.Ranks`, the pools)
- :mod:`.trial`: a drawn case of a test against a backend; failures with every field
- :mod:`.failures`: :class:`~.failures.ConformanceFailure` and :class:`~.failures.Mismatch`
- :mod:`.outcomes`: the outcomes of a test (:class:`~.outcomes.Outcome`), ``unsupported``
- :mod:`.verdicts`: each failing example judged against the expectations that name it
- :mod:`.injection`: storage writers and readers failing at a chosen hook on a chosen rank
- :mod:`.layouts`: layout classes of drawn cases, and pinned examples of each
- :mod:`.oracle`: the coverage oracle (chunks tiling a tensor, metadata describing a state)
- :mod:`.profiles`: the suites' hypothesis profiles and :func:`~.profiles.property_test`
- :mod:`.fixtures`: the pytest fixtures (``ckpt`` and friends), registered when asked for

For writing a suite (``docs/architecture.md``); a plug-in author needs only what
:mod:`ckptconf.conformance` exports.
"""
