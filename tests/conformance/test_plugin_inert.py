"""Installed, the pytest plugin stays out of other projects' runs until a run asks for ckptconf.

Each test runs pytest in a subprocess (``pytester.runpytest_subprocess``), as a project that
merely has ckptconf installed would: the entry-point plugin loads, and must register its
markers and do nothing else.
"""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

_UNRELATED = """
import sys

import hypothesis.core
from hypothesis import given, settings, strategies as st


def test_no_torch_and_hypothesis_untouched():
    assert "torch" not in sys.modules, "the ckptconf plugin imported torch"
    assert settings._current_profile == "default", settings._current_profile
    assert settings.default.max_examples == 100
    assert hypothesis.core.global_force_seed is None


@given(st.integers())
def test_a_property(x):
    assert isinstance(x, int)


def test_markers_are_registered(pytestconfig):
    markers = "\\n".join(pytestconfig.getini("markers"))
    assert "ckpt_suite(name)" in markers and "ckpt_requires(*features)" in markers
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_unrelated=_UNRELATED)
    pytester.makeini("[pytest]\naddopts = --strict-markers\n")
    return pytester


def test_an_unrelated_session_keeps_its_settings_and_imports_no_torch(project, monkeypatch):
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    output = result.stdout.str()
    assert "ckptconf:" not in output and "ckptconf conformance" not in output  # header, summary


def test_an_unrelated_session_sees_no_ckptconf_fixture(project, monkeypatch):
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    result = project.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    assert result.ret == 0
    listed = result.stdout.str()
    for name in ("ckpt_backend", "ckpt_path", "ckpt_repro", "ckpt ", "backend "):
        assert f"\n{name}" not in listed, name


def test_a_ckpt_option_switches_ckptconf_on(project, monkeypatch):
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    result = project.runpytest_subprocess(
        "--fixtures", "-p", "no:cacheprovider", "--ckpt-profile", "ci"
    )
    assert result.ret == 0
    assert (
        "ckptconf: backend: the test module's backend fixture, else reference"
        in result.stdout.str()
    )
    result.stdout.fnmatch_lines(["ckpt_backend*", "*backend under test*"])


def test_a_module_subclassing_a_suite_gets_the_fixtures(pytester, monkeypatch):
    """The class-style way: importing a suite switches ckptconf on for the session."""
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    pytester.makepyfile(
        test_mine="""
import json

import pytest
from ckptconf.conformance.suites import RoundTripTests


@pytest.fixture(scope="session")
def backend():
    from ckptconf.conformance import select_backend

    return select_backend("reference")


class TestMine(RoundTripTests):
    pass
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-k",
        "test_round_trip and not strided and not sharded and not dtensor",
        "--co",
        "-q",
    )
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["test_mine.py::TestMine::test_round_trip"])


def test_a_conftest_importing_a_suite_gets_the_fixtures(pytester, monkeypatch):
    """A conftest imports the suites before the plugin is configured: still switched on."""
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    pytester.makeconftest(
        "import pytest\n"
        "from ckptconf.conformance.suites import RoundTripTests\n\n\n"
        "@pytest.fixture(scope='session')\n"
        "def ckpt_backend():\n"
        "    from ckptconf.conformance import select_backend\n\n"
        "    return select_backend('reference')\n"
    )
    pytester.makepyfile(
        test_mine="from conftest import RoundTripTests\n\n\nclass TestMine(RoundTripTests):\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co", "-q")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["test_mine.py::TestMine::test_round_trip"])
    listed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fixtures").stdout.str()
    assert "\nckpt_repro" in listed and "\nckpt " in listed, listed[-2000:]


def test_a_conftest_imported_suite_runs_under_the_session_profile(pytester, monkeypatch):
    """The suites imported by a conftest (before the options are read) still get the session's
    profile when they run: thorough's 400 examples and the given seed, and a reproduction line
    that says so (issue: settings were fixed at import, so this run got dev's 40 and no seed)."""
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(
        "import json\n\n"
        "import pytest\n"
        "from ckptconf.conformance.suites import RoundTripTests\n\n\n"
        "@pytest.fixture(scope='session')\n"
        "def ckpt_backend():\n"
        "    from ckptconf.conformance import select_backend\n\n"
        "    return select_backend('reference')\n\n\n"
        "@pytest.hookimpl(tryfirst=True)\n"
        "def pytest_runtest_call(item):\n"
        "    test = item.obj.__func__\n"
        "    chosen = test._hypothesis_internal_use_settings\n"
        "    seen = dict(max_examples=chosen.max_examples, derandomize=chosen.derandomize,\n"
        "                seed=test._hypothesis_internal_use_seed,\n"
        "                repro=item.funcargs['ckpt_repro'])\n"
        "    with open('seen.json', 'w') as file:\n"
        "        json.dump(seen, file)\n"
        "    pytest.skip('settings recorded')\n"
    )
    pytester.makepyfile(
        test_mine="from conftest import RoundTripTests\n\n\nclass TestMine(RoundTripTests):\n    pass\n"
    )
    selected = ["-k", "test_round_trip_dtensor_on_two_ranks", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(
        *selected, "--ckpt-profile", "thorough", "--hypothesis-seed", "4242"
    )
    assert result.ret == 0, result.stdout.str()
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["max_examples"] == 400 and seen["derandomize"] is False
    assert seen["seed"] == 4242
    assert "--ckpt-profile thorough --hypothesis-seed 4242" in seen["repro"]
    result = pytester.runpytest_subprocess(*selected, "--ckpt-profile", "ci")
    assert result.ret == 0, result.stdout.str()
    seen = json.loads((pytester.path / "seen.json").read_text())
    assert seen["max_examples"] == 20 and seen["derandomize"] is True and seen["seed"] is None
    assert "--ckpt-profile ci" in seen["repro"] and "--hypothesis-seed" not in seen["repro"]
