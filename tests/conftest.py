"""Test configuration: the project's own hypothesis tests run under the ckptconf profile of the
session (``--ckpt-profile`` or ``CKPTCONF_PROFILE``; ``ci`` when ``CI`` is set, else ``dev``)."""

from __future__ import annotations

import pytest

pytest_plugins = ["ckptconf.harness.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    from ckptconf.conformance.kit.profiles import profile_settings
    from ckptconf.conformance.session import of
    from hypothesis import settings

    profile = of(config).profile
    settings.register_profile(f"ckptconf-tests-{profile}", profile_settings(profile))
    settings.load_profile(f"ckptconf-tests-{profile}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (a minute or more of subprocesses, some) first, in their order: under
    pytest-xdist the workers then start on them and end on short tests, not one long test
    running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    from ckptconf.conformance.session import of

    if of(config).profile != "ci":
        return
    skip = pytest.mark.skip(
        reason="not under the ci profile (CI's 15-minute limit): the dev profile, scripts/test "
        "without CI=true, runs it"
    )
    for item in items:
        if item.get_closest_marker("not_in_ci"):
            item.add_marker(skip)
