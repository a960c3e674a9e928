"""Hypothesis settings of the conformance tests: the ckptconf profiles, applied to suite tests only.

Profiles: ``ci`` (20 examples, derandomized), ``dev`` (40, a random seed per session,
printed in the report and in every reproduction) and ``thorough`` (400). The session's
profile comes from ``--ckpt-profile``, else ``CKPTCONF_PROFILE``, else ``ci`` when ``CI``
is set and ``dev`` otherwise. They are registered as ``ckptconf-<name>`` and never loaded
as hypothesis' default: a suite test gets its profile through :func:`property_test`, so
other hypothesis tests in the same session keep their own settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

__all__ = ["PROFILES", "profile_settings", "property_test", "tune"]

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
    from ckptconf.conformance.plugin import session_profile, session_shrinks

    name = name or session_profile()
    if name not in PROFILES:
        raise ValueError(f"unknown ckptconf profile {name!r}; expected one of {sorted(PROFILES)}")
    options = {**_COMMON, **PROFILES[name], **_tuning}
    if not session_shrinks():
        options["phases"] = (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(**options)


def property_test(
    *, max_examples: int | Callable[[int], int] | None = None, **overrides: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@given(data=st.data())`` under this session's ckptconf profile, ``overrides`` on top.

    ``max_examples`` is a number, or a function of the profile's number (a test that tries
    every storage hook runs a third of the examples per hook). Under a profile that is not
    derandomized, the test uses the session's seed (``--hypothesis-seed`` if given).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        from ckptconf.conformance.plugin import session_seed

        base = profile_settings()
        options = dict(overrides)
        if max_examples is not None:
            options["max_examples"] = (
                max_examples(base.max_examples) if callable(max_examples) else max_examples
            )
        test = settings(parent=base, **options)(given(data=st.data())(fn))
        number = session_seed()
        if number is not None and not base.derandomize:
            test = seed(number)(test)
        test.ckptconf_property_test = True  # what tests/conformance/test_layout.py checks
        _decorated.append(fn.__qualname__)
        return test

    return decorate
