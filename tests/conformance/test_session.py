"""The session object and the one option table: what a run asked for, read once, handed down."""

from __future__ import annotations

import argparse

import pytest
from ckptconf.conformance.kit.profiles import property_test, resolve
from ckptconf.conformance.options import OPTIONS, add_to_parser, as_pytest_args
from ckptconf.conformance.session import PROFILES, Session, profile_from_environment
from hypothesis import strategies as st


def test_the_profiles_decide_seeds_and_worlds():
    assert Session(profile="ci", seed=7).run_seed is None  # derandomized: no seed
    assert Session(profile="thorough", seed=7).run_seed == 7
    assert Session(profile="thorough", seed=7, database="db").run_seed is None  # unseeded: replays
    assert Session(world_size=8).largest_world == 8

    class World:
        size = 6

    assert Session(launched=World()).largest_world == 6
    assert Session(launched=World(), world_size=3).largest_world == 3
    assert PROFILES["ci"]["max_examples"] < PROFILES["dev"]["max_examples"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(profile="fast"), "unknown ckptconf profile 'fast'; expected one of"),
        (dict(max_examples=0), "--ckpt-max-examples 0: must be at least 1"),
        (dict(profile="ci", database="/tmp/x"), "the ci profile is derandomized"),
    ],
)
def test_a_session_refuses_what_cannot_run(fields, message):
    with pytest.raises(ValueError, match=message):
        Session(**fields)


def test_the_environment_profile(monkeypatch):
    monkeypatch.delenv("CKPTCONF_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert profile_from_environment() == "ci"
    monkeypatch.delenv("CI")
    assert profile_from_environment() == "dev"
    monkeypatch.setenv("CKPTCONF_PROFILE", "thorough")
    assert Session.from_environment().profile == "thorough"
    monkeypatch.setenv("CKPTCONF_PROFILE", "quick")
    with pytest.raises(ValueError, match="CKPTCONF_PROFILE='quick' is not a ckptconf profile"):
        profile_from_environment()


def test_every_run_option_reaches_pytest_as_its_ckpt_option(tmp_path):
    """``ckptconf run --<name> V`` becomes ``--ckpt-<name> V`` for every option it shows; paths
    absolute; flags without a value; options not given, nothing."""
    parser = argparse.ArgumentParser()
    add_to_parser(parser)
    values = {
        "backend": "torch-dcp",
        "report": "r.json",
        "profile": "thorough",
        "expectations": "e.toml",
        "device": "cuda",
        "timeout": "9",
        "inherit": "torch-dcp",
        "dir": "ckpts",
        "world-size": "8",
        "budget": "10m",
        "max-examples": "5",
        "database": "db",
    }
    shown = [o for o in OPTIONS if o.in_run]
    assert {o.name for o in shown} == set(values) | {"no-shrink"}
    argv = [x for name, value in values.items() for x in (f"--{name}", value)] + ["--no-shrink"]
    args = as_pytest_args(parser.parse_args(argv))
    assert args.count("--ckpt-no-shrink") == 1
    args.remove("--ckpt-no-shrink")
    given = dict(zip(args[::2], args[1::2], strict=True))
    for option in shown:
        if option.flag:
            continue
        expected = values[option.name]
        if option.path:
            expected = str(tmp_path.cwd() / expected)
        if option.kwargs.get("type") is float:
            expected = str(float(expected))
        assert given[f"--ckpt-{option.name}"] == expected, option.name
    assert as_pytest_args(parser.parse_args([])) == [
        "--ckpt-backend",
        "reference",
        "--ckpt-report",
        str(tmp_path.cwd() / "ckptconf-report.json"),
        "--ckpt-device",
        "cpu",
    ]


class _Ckpt:
    def __init__(self, session):
        self.session, self.verdict, self.share, self.backend = session, None, None, None


def test_a_property_test_not_resolved_for_its_session_fails_loudly():
    ran = []

    class Suite:
        @property_test()
        def test(self, ckpt, data):
            ran.append(data.draw(st.integers(0, 10**6), label="n"))

    session = Session(profile="ci")
    with pytest.raises(RuntimeError, match="settings were not resolved for this session"):
        Suite().test(ckpt=_Ckpt(session))
    assert ran == []
    resolve(Suite.test, session)
    Suite().test(ckpt=_Ckpt(session))
    assert len(ran) == 20  # ci: 20 examples
    with pytest.raises(RuntimeError, match="not resolved for this session"):
        Suite().test(ckpt=_Ckpt(Session(profile="ci")))  # another session
