"""The pytest plugin: ``--ckpt-backend``, profiles, markers, expectations and the JSON report.

Registered through the ``pytest11`` entry point, so ``pytest --pyargs
ckptconf.conformance --ckpt-backend X`` works from any directory. It only changes
the tests that use its fixtures or markers.
"""

from __future__ import annotations

import itertools
import os
import random
import shlex
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from .backend import FEATURES, Backend
from .expectations import Expectations
from .loading import BackendSpecError, load_backend
from .report import Report

__all__ = ["UNSUPPORTED_PREFIX", "PROFILES"]

UNSUPPORTED_PREFIX = "unsupported by backend: "
PROFILES = {
    "ci": dict(max_examples=20, derandomize=True),
    "dev": dict(max_examples=40),
    "thorough": dict(max_examples=400),
}
_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
for _name, _options in PROFILES.items():
    settings.register_profile(_name, **_options, **_COMMON)

_report_key = pytest.StashKey[Report]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckptconf", "checkpoint conformance")
    group.addoption(
        "--ckpt-backend",
        default="reference",
        help="backend: a built-in name or module:attr (default: reference)",
    )
    group.addoption(
        "--ckpt-report", default=None, metavar="PATH", help="write a JSON report of the run to PATH"
    )
    group.addoption(
        "--ckpt-profile",
        default=None,
        choices=sorted(PROFILES),
        help="hypothesis profile: ci (default when CI is set), dev (default otherwise), thorough",
    )
    group.addoption(
        "--ckpt-expectations",
        default=None,
        metavar="PATH",
        help="expectations file (default: the backend's own)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ckpt_suite(name): the conformance suite a test belongs to")
    config.addinivalue_line(
        "markers", "ckpt_level(level): core (any correct backend) or strict (hardening)"
    )
    config.addinivalue_line(
        "markers",
        "ckpt_requires(*features): features the test needs; see ckptconf.conformance.FEATURES",
    )
    profile = (
        config.getoption("ckpt_profile")
        or os.environ.get("CKPTCONF_PROFILE")
        or ("ci" if os.environ.get("CI") else "dev")
    )
    if profile not in PROFILES:
        raise pytest.UsageError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    config.option.ckpt_profile = profile
    settings.load_profile(profile)
    if getattr(config.option, "hypothesis_seed", None) is None and profile != "ci":
        config.option.hypothesis_seed = random.randrange(2**32)
    config.stash[_report_key] = Report(
        profile=profile, seed=getattr(config.option, "hypothesis_seed", None)
    )
    if not _is_xdist_worker(config):
        config.pluginmanager.register(_Recorder(config.stash[_report_key]), "ckptconf-recorder")


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _backend_of(config: pytest.Config) -> Backend:
    if not hasattr(config, "_ckpt_backend"):
        spec = config.getoption("ckpt_backend")
        try:
            config._ckpt_backend = load_backend(spec)  # type: ignore[attr-defined]
        except BackendSpecError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config._ckpt_backend  # type: ignore[attr-defined]


def canonical_id(item: pytest.Item) -> str:
    """``test_module.py::Class::test[params]``, independent of where pytest was started."""
    parts = item.nodeid.split("::")
    return "::".join([Path(parts[0]).name, *parts[1:]])


def pytest_report_header(config: pytest.Config) -> list[str]:
    import torch

    backend = _backend_of(config)
    seed = getattr(config.option, "hypothesis_seed", None)
    return [
        f"ckptconf: backend {backend.name} ({backend.spec}), torch {torch.__version__}, "
        f"profile {config.option.ckpt_profile}, seed {seed if seed is not None else 'derandomized'}"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        unknown = [
            f for m in item.iter_markers("ckpt_requires") for f in m.args if f not in FEATURES
        ]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: unknown features {unknown}; known: {sorted(FEATURES)}"
            )


_backend_key = pytest.StashKey[Backend]()
_expectations_cache: dict[str, Expectations] = {}


def _expectations_for(config: pytest.Config, backend: Backend) -> Expectations:
    path = config.getoption("ckpt_expectations") or backend.expectations
    if not path:
        return Expectations([])
    if path not in _expectations_cache:
        _expectations_cache[path] = Expectations.load(path)
    return _expectations_cache[path]


@pytest.fixture(autouse=True)
def _ckpt_gate(request: pytest.FixtureRequest) -> None:
    """For conformance tests: skip what the backend declares unsupported, mark expected failures."""
    item = request.node
    if not item.get_closest_marker("ckpt_suite"):
        return
    backend = request.getfixturevalue("backend")
    item.stash[_backend_key] = backend
    missing = [
        f for m in item.iter_markers("ckpt_requires") for f in m.args if not backend.supports(f)
    ]
    if missing:
        pytest.skip(UNSUPPORTED_PREFIX + ", ".join(dict.fromkeys(missing)))
    entry = _expectations_for(request.config, backend).match(canonical_id(item))
    if entry is not None:
        # not strict: a property test may draw no failing case in a run; the report flags the pass
        request.applymarker(
            pytest.mark.xfail(reason=f"expected failure: {entry.reason}", strict=False)
        )


@pytest.fixture(scope="session")
def backend(pytestconfig: pytest.Config) -> Backend:
    """The backend under test (``--ckpt-backend``); override this fixture to test your own."""
    return _backend_of(pytestconfig)


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory):
    """A function returning a new, empty checkpoint path (not yet created) on every call."""
    root = tmp_path_factory.mktemp("ckpt")
    counter = itertools.count()
    return lambda: str(root / f"c{next(counter)}")


@pytest.fixture
def ckpt_repro(request: pytest.FixtureRequest, backend: Backend) -> str:
    """A one-line command that re-runs this test against this backend."""
    config = request.config
    parts = [
        "pytest",
        "--pyargs",
        "ckptconf.conformance",
        "--ckpt-backend",
        backend.spec or backend.name,
    ]
    parts += ["--ckpt-profile", config.option.ckpt_profile]
    seed = getattr(config.option, "hypothesis_seed", None)
    if seed is not None:
        parts += ["--hypothesis-seed", str(seed)]
    name = request.node.name
    cls = request.node.cls.__name__ if request.node.cls else None
    parts += ["-k", f"{cls} and {name}" if cls else name]
    return shlex.join(parts)


_INFO = "ckptconf"  # the user_properties entry carrying a conformance test's data


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    suite = item.get_closest_marker("ckpt_suite")
    if suite and report.when in ("setup", "call"):
        level = item.get_closest_marker("ckpt_level")
        backend = item.stash.get(_backend_key, None)
        info = {
            "id": canonical_id(item),
            "suite": suite.args[0],
            "level": level.args[0] if level else None,
            "exception": _exception_text(call),
            "backend": _describe(backend) if backend is not None else None,
        }
        # user_properties travel with the report to the xdist controller
        report.user_properties.append((_INFO, info))
    return report


class _Recorder:
    """Records conformance outcomes into the run's report, where the run reports (the
    xdist controller, or the only process)."""

    def __init__(self, report: Report):
        self.report = report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        info = next((value for name, value in report.user_properties if name == _INFO), None)
        if info is None:
            return
        self.report.record(
            info["id"],
            report,
            suite=info["suite"],
            level=info["level"],
            exception_text=info["exception"],
        )
        if info["backend"] and not self.report.backend:
            self.report.backend = info["backend"]


def _exception_text(call) -> str | None:
    """The raised exception with hypothesis's notes (falsifying example), if the phase raised."""
    if call.excinfo is None:
        return None
    value = call.excinfo.value
    while getattr(
        value, "exceptions", None
    ):  # an exception group: hypothesis found several distinct bugs
        value = value.exceptions[0]
    notes = "\n".join(getattr(value, "__notes__", []))
    return f"{value}\n{notes}"


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    report = config.stash.get(_report_key, None)
    if report is None or not report.tests:
        return
    if not report.backend:
        report.backend = _describe(_backend_of(config))
    path = config.getoption("ckpt_expectations") or report.backend.get("expectations")
    if path and not (config.option.keyword or config.option.markexpr):
        # only an unfiltered run shows that an entry matches no test
        ids = [t["id"] for t in report.tests]
        report.unmatched_expectations = Expectations.load(path).unmatched(ids)
    path = config.getoption("ckpt_report")
    if path:
        report.write(path)


def _describe(backend: Backend) -> dict:
    return {
        "name": backend.name,
        "spec": backend.spec,
        "description": backend.description,
        "unsupported": sorted(backend.unsupported),
        "expectations": backend.expectations,
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    report = config.stash.get(_report_key, None)
    if report is None or not report.tests:
        return
    terminalreporter.write_sep("=", f"ckptconf conformance: {report.backend.get('name')}")
    for line in report.matrix_lines():
        terminalreporter.write_line(line)
    for entry in report.unmatched_expectations:
        terminalreporter.write_line(
            f"expectation matches no test (remove it?): {entry}", yellow=True
        )
    path = config.getoption("ckpt_report")
    if path:
        terminalreporter.write_line(f"report written to {path}")


def report_of(config: pytest.Config) -> Report | None:
    """The report of this run (for ``ckptconf run``)."""
    return config.stash.get(_report_key, None)


def default_report_path() -> str:
    """Where ``ckptconf run`` writes its report when not told."""
    return os.path.join(tempfile.gettempdir(), "ckptconf-report.json")
