"""Hypothesis settings of the conformance tests: the ckptconf profiles, applied to suite tests only.

Profiles: ``ci`` (20 examples, derandomized), ``dev`` (40, a random seed per session,
printed in the report and in every reproduction) and ``thorough`` (400); ``--ckpt-max-examples``
replaces the count and ``--ckpt-database`` keeps hypothesis' example database in a folder. The session's
profile comes from ``--ckpt-profile``, else ``CKPTCONF_PROFILE``, else ``ci`` when ``CI``
is set and ``dev`` otherwise (:class:`~ckptconf.conformance.session.Session`). They are never
loaded as hypothesis' default: a suite test gets its settings through :func:`property_test`,
resolved when the test runs (:func:`resolve`, called by the ``ckpt`` fixture), so a suite
imported before the session began (by a conftest) still runs under the session's profile,
and other hypothesis tests in the same session keep their own settings.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from ckptconf.conformance.session import PROFILES, Session
from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample, Unsatisfiable

from .failures import HangFailure
from .verdicts import KnownHang, ReplayDiverged

__all__ = ["PROFILES", "Pinned", "profile_settings", "property_test", "resolve", "tune"]

_COMMON: dict[str, Any] = dict(
    deadline=None,  # a step runs on ranks: seconds, not milliseconds
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,  # ckpt fixtures hold no per-example state
        HealthCheck.data_too_large,
        # the suites are abstract classes: several subclasses (backends) share one test function
        HealthCheck.differing_executors,
        # a pinned example draws what it does not pin with hypothesis.find (its simplest value)
        HealthCheck.nested_given,
    ],
)

_tuning: dict[str, Any] = {}


def tune(**overrides: Any) -> None:
    """Settings applied on top of every ckptconf profile, such as ``phases`` without shrinking
    (the kill-rate runner's); they apply to every suite test resolved after the call."""
    _tuning.update(overrides)


def profile_settings(session: Session | str) -> settings:
    """The hypothesis settings of a session (its profile, ``--ckpt-max-examples``,
    ``--ckpt-database``, ``--ckpt-no-shrink``), or of the profile named ``session`` with no
    option. Raises ``ValueError`` for an unknown profile name."""
    if isinstance(session, str):
        session = Session(profile=session)
    options = {**_COMMON, **PROFILES[session.profile], **_tuning}
    if not session.shrink:
        options["phases"] = (Phase.explicit, Phase.reuse, Phase.generate)
    if session.max_examples is not None:
        options["max_examples"] = session.max_examples
    if session.database is not None:
        from hypothesis.database import DirectoryBasedExampleDatabase

        options["database"] = DirectoryBasedExampleDatabase(session.database)
    return settings(**options)


def resolve(test: Callable[..., Any], session: Session) -> None:
    """Give property test ``test`` (a function :func:`property_test` made, or a method of one)
    the settings and seed of ``session``; the ``ckpt`` fixture calls this before the test runs.

    Hypothesis reads a test's settings and seed when it runs, from the attributes its
    ``@settings`` and ``@seed`` set (its own pytest plugin sets them this way too, for
    parametrized tests); they are set here instead of at import, so that the session decides.
    """
    test = getattr(test, "__func__", test)
    base = profile_settings(session)
    options = dict(test.ckptconf_overrides)
    share = test.ckptconf_max_examples
    if share is not None:
        options["max_examples"] = max(1, share(base.max_examples))
    test._hypothesis_internal_use_settings = settings(parent=base, **options)
    test._hypothesis_internal_use_seed = None if base.derandomize else session.run_seed
    test.ckptconf_session = session


class Pinned:
    """A deterministic example of a property test: the values of its labelled draws.

    Pinned examples run first, in every profile, derandomized or not (hypothesis' explicit
    phase), so a layout class that generated examples reach only now and then is checked every
    run. A draw the example gives no value for takes its strategy's simplest value (the first
    example ``hypothesis.find`` generates). ``requires``: features the example needs; on a backend
    lacking one it is not run. ``adapt(value, params)``, if given, adapts each given value to
    the test's parameters (a dtype, say). A pinned value must be one the test's strategy could
    draw: the test does not check that.
    """

    def __init__(
        self,
        name: str,
        *,
        requires: Sequence[str] = (),
        adapt: Callable[[Any, dict[str, Any]], Any] | None = None,
        **draws: Any,
    ):
        self.name, self.requires, self.draws = name, tuple(requires), draws
        self._adapt, self._params = adapt, None

    def bound(self, params: dict[str, Any]) -> Pinned:
        """This example for a test run with ``params`` (its ``parametrize`` values)."""
        bound = Pinned(self.name, requires=self.requires, adapt=self._adapt, **self.draws)
        bound._params = params
        return bound

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        """The pinned value of the draw labelled ``label``, else the strategy's simplest."""
        if label in self.draws:
            value = self.draws[label]
            return self._adapt(value, self._params or {}) if self._adapt else value
        try:
            with _outside_pytest():
                return find(strategy, lambda _: True, settings=_SIMPLEST)
        except (NoSuchExample, Unsatisfiable) as exc:
            raise _PinnedDoesNotApply(f"pinned example {self.name!r}: {label!r}: {exc}") from exc

    def applies(self, backend: Any) -> bool:
        """Whether ``backend`` supports every feature the example needs."""
        return all(backend.supports(f) for f in self.requires)

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.draws.items())
        return f"Pinned({self.name!r}, {values})"


# the first example hypothesis generates is made of each choice's simplest value; no shrinking
_SIMPLEST = settings(
    database=None, derandomize=True, max_examples=50, deadline=None, phases=(Phase.generate,)
)


def _outside_pytest():
    """A context in which hypothesis does not format ``find``'s found example as a pytest
    failure: ``find`` reports what it finds as a failing example, and inside a pytest test
    hypothesis renders its traceback with pytest's ``repr_failure`` (80 ms each, half the
    controller's time in a ci run); outside, with the ``traceback`` module (well under 1 ms)."""
    try:
        from hypothesis.internal.escalation import current_pytest_item
    except ImportError:  # another hypothesis: find formats as it does
        return contextlib.nullcontext()
    return current_pytest_item.with_value(None)


class _PinnedDoesNotApply(Exception):
    """A draw the pinned example does not give has no value with it (a filter rejects them
    all): the example does not apply to this test."""


class _Recorded:
    """Hypothesis' ``data``, remembering every value drawn, so the example can be run again on
    another backend (:meth:`replay`)."""

    def __init__(self, data: Any):
        self._data, self.values = data, []

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        value = self._data.draw(strategy, label=label)
        self.values.append((label, value))
        return value

    def replay(self) -> _Replayed:
        return _Replayed(self.values)

    def __repr__(self) -> str:
        return repr(self.values)


class _Replayed:
    """The values an example drew, given again in order."""

    def __init__(self, values: list[tuple[str | None, Any]]):
        self._values = list(values)

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        if not self._values or self._values[0][0] != label:
            raise ReplayDiverged(
                f"re-run on another backend, the test drew {label!r} where the example drew "
                f"{self._values[0][0] if self._values else 'nothing more'!r}"
            )
        return self._values.pop(0)[1]


def _judged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(self, ckpt, data, ...)`` run as one example: a failure the test's verdict
    (``ckpt.verdict``) knows is recorded and the example passes, so hypothesis draws on; any
    other failure propagates and is shrunk."""

    @functools.wraps(fn)
    def run_example(self, ckpt, data, **kwargs):
        verdict = getattr(ckpt, "verdict", None)
        share = getattr(ckpt, "share", None)  # the run's time budget: checked at its first step
        if share is not None:
            share.example_begins()
        if isinstance(data, Pinned):
            if not data.applies(ckpt.backend):
                return None
            drawn, example = data.bound(kwargs), f"pinned {data.name}: {data.draws!r}"

            def again():
                return drawn
        else:
            drawn = _Recorded(data)
            example, again = None, drawn.replay

        def replay(checker):
            return fn(self, ckpt=checker, data=again(), **kwargs)

        try:
            fn(self, ckpt=ckpt, data=drawn, **kwargs)
        except _PinnedDoesNotApply:
            return None
        except (Exception, HangFailure) as exc:
            if share is not None:
                share.hold()  # judging may replay the example on another backend
            if verdict is not None and verdict.judge(exc, replay, example or repr(drawn)):
                if isinstance(exc, HangFailure):
                    raise KnownHang() from exc
                if share is not None:
                    share.example_ends()
                return None
            if share is not None:
                share.failure_seen()
                share.example_ends()
            raise
        if share is not None:
            share.hold()
        if verdict is not None:
            verdict.passed(example or repr(drawn), replay)
        if share is not None:
            share.example_ends()
        return None

    return run_example


def property_test(
    *,
    max_examples: Callable[[int], int] | None = None,
    pinned: Sequence[Pinned] = (),
    **overrides: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@given(data=st.data())`` under the running session's ckptconf profile, ``overrides``
    on top; the settings are resolved when the test runs (:func:`resolve`), not at import.

    ``max_examples`` is a function of the profile's number of examples (a test that tries
    every storage hook runs a third of them per hook), never a fixed number: ``thorough``
    must draw more than ``ci``. ``pinned`` examples (:class:`Pinned`) run first in every
    profile. Under a profile that is not derandomized, the test uses the session's seed
    (``--hypothesis-seed`` if given). Each example's failure is judged by the test's verdict
    (:mod:`.verdicts`): a known failure is recorded and drawing goes on. A test run without
    its settings resolved (outside the ``ckpt`` fixture) raises ``RuntimeError``.
    """
    if max_examples is not None and not callable(max_examples):
        raise TypeError(
            "max_examples must be a function of the profile's number of examples (e.g. "
            f"lambda n: n // 2), not the fixed {max_examples!r}: a fixed number draws as few "
            "examples under thorough as under ci"
        )

    names = [p.name for p in pinned]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"pinned examples must have distinct names; given twice: {twice}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        judged = _judged(fn)

        @functools.wraps(fn)
        def resolved(self, ckpt, data, **kwargs):
            if test.ckptconf_session is not getattr(ckpt, "session", None):
                raise RuntimeError(
                    f"{fn.__qualname__}: its hypothesis settings were not resolved for this "
                    "session; a property test runs through the ckpt fixture, which gives it the "
                    "session's profile (ckptconf.conformance.kit.profiles.resolve)"
                )
            return judged(self, ckpt=ckpt, data=data, **kwargs)

        test = given(data=st.data())(resolved)
        for case in reversed(pinned):
            test = example(data=case)(test)
        test.ckptconf_overrides = dict(overrides)
        test.ckptconf_max_examples = max_examples
        test.ckptconf_session = None  # set by resolve()
        test.ckptconf_property_test = True  # what tests/conformance/test_layout.py checks
        test.ckptconf_pinned = tuple(pinned)
        test.ckptconf_draws = fn  # the test's body: tests/conformance/test_layout_classes.py
        return test

    return decorate
