"""The layout of the conformance package holds: one name per suite, suites apart, an honest API."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from ckptconf.conformance.suites import SUITES

SUITES_DIR = Path(importlib.import_module("ckptconf.conformance.suites").__file__).parent


def _camel(name: str) -> str:
    return {"roundtrip": "RoundTrip", "per_rank": "PerRank"}.get(name) or "".join(
        p.title() for p in name.split("_")
    )


@pytest.mark.parametrize("name", sorted(SUITES))
def test_a_suite_has_one_name_everywhere(name):
    cls = SUITES[name]
    assert cls.__name__ == f"{_camel(name)}Tests"
    assert cls.__module__ == f"ckptconf.conformance.suites.{name}.suite"
    marker = next(m for m in cls.pytestmark if m.name == "ckpt_suite")
    assert marker.args == (name,)
    shipped = importlib.import_module(f"ckptconf.conformance.suites.{name}.test_{name}")
    test_class = getattr(shipped, f"Test{_camel(name)}")
    assert issubclass(test_class, cls)
    assert (SUITES_DIR / name / "__init__.py").exists()


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_property_test_runs_under_the_ckptconf_profile(name):
    """A suite test drawing cases must use @property_test: hypothesis' global default profile
    (a 200 ms deadline, another seed) would otherwise apply to it."""
    for attr, test in inspect.getmembers(SUITES[name], inspect.isfunction):
        if not attr.startswith("test_") or not getattr(test, "is_hypothesis_test", False):
            continue
        assert getattr(test, "ckptconf_property_test", False), (
            f"{name}.{attr}: not a @property_test"
        )


@pytest.mark.parametrize("name", sorted(SUITES))
def test_a_suite_imports_the_kit_and_itself_only(name):
    others = set(SUITES) - {name}
    for path in (SUITES_DIR / name).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                first = node.module.split(".")[0]
                assert first not in others, f"{path.name} imports the {first} suite"


def test_the_public_api_is_what_a_plug_in_author_needs():
    import ckptconf.conformance as conformance

    for name in conformance.__all__:
        assert getattr(conformance, name) is not None
    assert "BackendRef" not in conformance.__all__
    with pytest.raises(AttributeError):
        conformance.BackendRef  # noqa: B018 - a transport detail, not public


def test_the_kill_rate_runner_is_not_shipped():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ckptconf.conformance.killrate")


def test_every_package_is_listed_for_the_wheel():
    """setuptools' explicit ``packages`` list: a subpackage missing there works in an editable
    install and is absent from the wheel."""
    import tomllib

    root = SUITES_DIR.parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for name, folder in config["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(root / folder)
            package = ".".join([name, *relative.parts])
            if not any(part.startswith((".", "_")) for part in relative.parts):
                assert package in listed, f"{package} is not in pyproject's packages"
