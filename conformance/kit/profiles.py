"""Hypothesis settings of the conformance tests: the ckptconf profiles, applied to suite tests only.

Profiles: ``ci`` (20 examples, derandomized), ``dev`` (40, a random seed per session,
printed in the report and in every reproduction) and ``thorough`` (400); ``--ckpt-max-examples``
replaces the count and ``--ckpt-database`` keeps hypothesis' example database in a folder. The session's
profile comes from ``--ckpt-profile``, else ``CKPTCONF_PROFILE``, else ``ci`` when ``CI``
is set and ``dev`` otherwise. They are registered as ``ckptconf-<name>`` and never loaded
as hypothesis' default: a suite test gets its profile through :func:`property_test`, so
other hypothesis tests in the same session keep their own settings.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, Phase, example, find, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample, Unsatisfiable

from .failures import HangFailure
from .verdicts import KnownHang, ReplayDiverged

__all__ = ["PROFILES", "Pinned", "profile_settings", "property_test", "tune"]

PROFILES: dict[str, dict[str, Any]] = {
    "ci": dict(max_examples=20, derandomize=True),
    "dev": dict(max_examples=40),
    "thorough": dict(max_examples=400),
}
"""The ckptconf profiles by name."""

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
_decorated: list[str] = []


def tune(**overrides: Any) -> None:
    """Settings applied on top of every ckptconf profile, such as ``phases`` without shrinking
    (the kill-rate runner's). Call before the suites are imported: a test's settings are
    fixed when its class is defined."""
    if _decorated:
        raise RuntimeError(
            f"tune() after {len(_decorated)} suite test(s) were defined (first: {_decorated[0]}); "
            "call it before importing ckptconf.conformance.suites"
        )
    _tuning.update(overrides)


def profile_settings(name: str | None = None) -> settings:
    """The hypothesis settings of ckptconf profile ``name`` (default: this session's)."""
    from ckptconf.conformance.plugin import session_option, session_profile, session_shrinks

    name = name or session_profile()
    if name not in PROFILES:
        raise ValueError(f"unknown ckptconf profile {name!r}; expected one of {sorted(PROFILES)}")
    options = {**_COMMON, **PROFILES[name], **_tuning}
    if not session_shrinks():
        options["phases"] = (Phase.explicit, Phase.reuse, Phase.generate)
    examples = session_option("ckpt_max_examples")
    if examples is not None:
        if examples < 1:
            raise ValueError(f"--ckpt-max-examples {examples}: must be at least 1")
        options["max_examples"] = examples
    folder = session_option("ckpt_database")
    if folder is not None:
        from hypothesis.database import DirectoryBasedExampleDatabase

        if options.get("derandomize"):
            raise ValueError(
                f"--ckpt-database {folder}: the {name} profile is derandomized and keeps no "
                "example database; use --ckpt-profile dev or thorough"
            )
        options["database"] = DirectoryBasedExampleDatabase(folder)
    return settings(**options)


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
    """``@given(data=st.data())`` under this session's ckptconf profile, ``overrides`` on top.

    ``max_examples`` is a function of the profile's number of examples (a test that tries
    every storage hook runs a third of them per hook), never a fixed number: ``thorough``
    must draw more than ``ci``. ``pinned`` examples (:class:`Pinned`) run first in every
    profile. Under a profile that is not derandomized, the test uses the session's seed
    (``--hypothesis-seed`` if given). Each example's failure is judged by the test's verdict
    (:mod:`.verdicts`): a known failure is recorded and drawing goes on.
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
        from ckptconf.conformance.plugin import session_seed

        base = profile_settings()
        options = dict(overrides)
        if max_examples is not None:
            options["max_examples"] = max(1, max_examples(base.max_examples))
        test = given(data=st.data())(_judged(fn))
        for case in reversed(pinned):
            test = example(data=case)(test)
        test = settings(parent=base, **options)(test)
        number = session_seed()
        if number is not None and not base.derandomize:
            test = seed(number)(test)
        test.ckptconf_property_test = True  # what tests/conformance/test_layout.py checks
        test.ckptconf_pinned = tuple(pinned)
        test.ckptconf_draws = fn  # the test's body: tests/conformance/test_layout_classes.py
        _decorated.append(fn.__qualname__)
        return test

    return decorate
