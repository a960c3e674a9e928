"""The pytest side of the suites: fixtures, the per-test gate and what a report records.

Registered by :func:`ckptconf.conformance.plugin.activate` only once a session asks for
ckptconf (a ``--ckpt-*`` option, ``CKPTCONF_PROFILE``, or a suite imported by a test
module); an unrelated session never sees these fixtures.

Fixtures: ``ckpt`` (a :class:`~.trial.Checker`: the backend, new paths, trials of drawn
cases), ``ckpt_backend``, ``ckpt_path`` and ``ckpt_repro``. ``ckpt_backend`` is the
test module's ``backend`` fixture when there is one (the class-style way of giving a
backend, kept as an alias), else the ``--ckpt-backend`` backend.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ckptconf.conformance.backend import FEATURES, Backend
from ckptconf.conformance.builtin import BUILT_IN, expectations_file
from ckptconf.conformance.expectations import Expectations
from ckptconf.conformance.loading import BackendSpecError, load_backend

from .trial import UNSUPPORTED_PREFIX, Checker

__all__ = ["canonical_id", "describe_backend", "backend_from_options"]

INFO = "ckptconf"
"""The ``user_properties`` entry carrying a conformance test's data to the report."""

_backend_key = pytest.StashKey[Backend]()
_option_backend = pytest.StashKey[Backend]()
_expectations: dict[str, Expectations] = {}


def canonical_id(item: pytest.Item) -> str:
    """``test_module.py::Class::test[params]``, whatever folder pytest started from.

    Not the node id's own first part: pytest writes that relative to the argument it was
    given, so a run selected by node id (``ckptconf run --lf``) would get an empty one.
    """
    return "::".join([item.path.name, *item.nodeid.split("::")[1:]])


def describe_backend(backend: Backend, config: pytest.Config | None = None) -> dict[str, Any]:
    """What the report says of a backend."""
    return {
        "name": backend.name,
        "spec": backend.spec,
        "description": backend.description,
        "unsupported": sorted(backend.unsupported),
        "expectations": backend.expectations,
        "inherits": inherited_from(config, backend) if config is not None else backend.inherits,
    }


def backend_from_options(config: pytest.Config) -> Backend:
    """The backend ``--ckpt-backend`` names (default ``reference``), loaded once per session."""
    if _option_backend not in config.stash:
        spec = config.getoption("ckpt_backend") or "reference"
        try:
            config.stash[_option_backend] = load_backend(spec)
        except BackendSpecError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_option_backend]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        unknown = [
            f for m in item.iter_markers("ckpt_requires") for f in m.args if f not in FEATURES
        ]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: unknown features {unknown}; known: {sorted(FEATURES)}"
            )


@pytest.fixture
def ckpt_backend(request: pytest.FixtureRequest) -> Backend:
    """The backend under test: the module's ``backend`` fixture if any, else ``--ckpt-backend``."""
    try:
        backend = request.getfixturevalue("backend")
    except pytest.FixtureLookupError:
        return backend_from_options(request.config)
    if not isinstance(backend, Backend):
        raise TypeError(
            f"the 'backend' fixture returned a {type(backend).__name__}, expected a "
            "ckptconf.conformance.Backend"
        )
    return backend


@pytest.fixture(scope="session")
def ckpt_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """A function returning a new, not yet created checkpoint path on every call: under the
    launched world's checked shared folder, a new folder in ``--ckpt-dir``, or pytest's
    temporary folder."""
    import tempfile

    from .. import plugin

    config = request.config
    shared, chosen = plugin.launched_folder(config), config.getoption("ckpt_dir")
    if shared is not None:
        root = Path(shared)
    elif chosen is not None:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="ckptconf-", dir=chosen))
    else:
        root = tmp_path_factory.mktemp("ckpt")
    counter = itertools.count()
    return lambda: str(root / f"c{next(counter)}")


@pytest.fixture
def ckpt_repro(request: pytest.FixtureRequest, ckpt_backend: Backend) -> str:
    """A one-line command, runnable from any folder, that re-runs this test on this backend."""
    return reproduction(request.node, ckpt_backend)


def reproduction(item: pytest.Item, backend: Backend) -> str:
    """``cd <where pytest ran> && python -m pytest '<file>::<test>' <options>``: the test by its
    node id; ``--ckpt-backend`` only when the backend came from that option."""
    from .. import plugin

    config = item.config
    target = "::".join([str(item.path), *item.nodeid.split("::")[1:]])
    parts = ["python", "-m", "pytest", target]
    if backend is config.stash.get(_option_backend, None):
        parts += ["--ckpt-backend", backend.spec or backend.name]
    parts += ["--ckpt-profile", plugin.session_profile(config)]
    seed = plugin.run_seed(config)
    if seed is not None:
        parts += ["--hypothesis-seed", str(seed)]
    device = config.getoption("ckpt_device")
    if device and device != "cpu":
        parts += ["--ckpt-device", device]
    folder = str(config.invocation_params.dir)
    if backend.spec in BUILT_IN:
        return shlex.join(parts)
    return f"cd {shlex.quote(folder)} && {shlex.join(parts)}"


@pytest.fixture
def ckpt(
    request: pytest.FixtureRequest,
    ckpt_backend: Backend,
    ckpt_path: Callable[[], str],
    ckpt_repro: str,
) -> Checker:
    """The conformance test's checker: skips what the backend declared unsupported, marks
    listed expected failures, and makes trials of drawn cases (see :class:`~.trial.Checker`)."""
    from .. import plugin
    from .launched import LaunchedRanks
    from .running import PoolRanks

    device = request.config.getoption("ckpt_device") or "cpu"
    world = plugin.launched_world(request.config)
    ranks = PoolRanks(device) if world is None else LaunchedRanks(world, device)
    item = request.node
    item.stash[_backend_key] = ckpt_backend
    missing = [
        f
        for m in item.iter_markers("ckpt_requires")
        for f in m.args
        if not ckpt_backend.supports(f)
    ]
    if missing:
        pytest.skip(UNSUPPORTED_PREFIX + ", ".join(dict.fromkeys(missing)))
    reason = _expected_failure(request.config, ckpt_backend, canonical_id(item))
    if reason is not None:
        # not strict: a property test may draw no failing case in a run; the report flags the pass
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    suite = item.get_closest_marker("ckpt_suite")
    return Checker(
        ckpt_backend,
        ranks=ranks,
        paths=ckpt_path,
        suite=suite.args[0] if suite else None,
        test=canonical_id(item),
        reproduction=ckpt_repro,
        skip=pytest.skip,
        timeout=request.config.getoption("ckpt_timeout"),
    )


EXPECTED = "expected failure: "
INHERITED = "inherited from {}: "
"""How the xfail reason of a listed failure starts: the report tells the two kinds apart."""


def _load(path: str | None) -> Expectations:
    if not path:
        return Expectations([])
    if path not in _expectations:
        _expectations[path] = Expectations.load(path)
    return _expectations[path]


def inherited_from(config: pytest.Config, backend: Backend) -> str | None:
    """The built-in backend whose failures this one inherits: ``--ckpt-inherit``, else its own
    ``inherits``."""
    chosen = config.getoption("ckpt_inherit")
    if chosen is not None and chosen not in BUILT_IN:
        raise pytest.UsageError(
            f"--ckpt-inherit {chosen!r} is not a built-in backend ({', '.join(sorted(BUILT_IN))})"
        )
    return chosen or backend.inherits


def _expected_failure(config: pytest.Config, backend: Backend, test_id: str) -> str | None:
    """The xfail reason of a test the backend's expectations list, or that the built-in
    backend it inherits from fails (its own entry first)."""
    own = _load(config.getoption("ckpt_expectations") or backend.expectations).match(test_id)
    if own is not None:
        return EXPECTED + own.reason
    parent = inherited_from(config, backend)
    if parent is None:
        return None
    inherited = _load(str(expectations_file(parent) or "")).match(test_id)
    return None if inherited is None else INHERITED.format(parent) + inherited.reason


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    suite = item.get_closest_marker("ckpt_suite")
    if suite and report.when in ("setup", "call"):
        level = item.get_closest_marker("ckpt_level")
        backend = item.stash.get(_backend_key, None)
        info = {
            "id": canonical_id(item),
            "suite": suite.args[0],
            "level": level.args[0] if level else None,
            "backend": describe_backend(backend, item.config) if backend is not None else None,
            **_failure_info(call),
        }
        # user_properties travel with the report to the xdist controller
        report.user_properties.append((INFO, info))
    return report


def _failure_info(call: pytest.CallInfo) -> dict[str, Any]:
    """The structured failure of a phase that raised, and hypothesis' falsifying example."""
    from .failures import ConformanceFailure, HangFailure

    if call.excinfo is None:
        return {}
    value = call.excinfo.value
    while getattr(value, "exceptions", None):  # hypothesis found several distinct failures
        value = next(
            (e for e in value.exceptions if isinstance(e, ConformanceFailure)), value.exceptions[0]
        )
    if isinstance(value, HangFailure):  # not shrunk: the case that hung is the one to show
        hung = value.failure.fields()
        hung["minimal_case"] = f"(not shrunk: a hang is not re-run)\n{hung['case']}"
        return {"minimal_case": hung["minimal_case"], "failure": hung}
    notes = list(getattr(value, "__notes__", []))
    out: dict[str, Any] = {"minimal_case": _falsifying_example(notes)}
    if isinstance(value, ConformanceFailure):
        out["failure"] = value.fields()
        out["failure"]["minimal_case"] = out["minimal_case"]
    elif not isinstance(value, (pytest.skip.Exception, pytest.xfail.Exception)):
        out["error"] = f"{type(value).__name__}: {value}"[-4000:]
    return out


def _falsifying_example(notes: list[str]) -> str | None:
    """The draws of hypothesis' falsifying example (``Draw 1 (case): ...``), or the example."""
    draws = [n for n in notes if n.startswith("Draw ")]
    if draws:
        return "\n".join(draws)
    example = [n for n in notes if n.startswith(("Falsifying example", "Failing test case"))]
    return "\n".join(example) or None
