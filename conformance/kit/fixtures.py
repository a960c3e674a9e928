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

import contextlib
import itertools
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from ckptconf.conformance.backend import FEATURES, Backend
from ckptconf.conformance.builtin import BUILT_IN, expectations_file
from ckptconf.conformance.expectations import Expectations, ExpectationsError
from ckptconf.conformance.options import requested
from ckptconf.conformance.selection import (
    backend_from_options,
    describe_backend,
    inherited_from,
    option_backend,
    select_backend,
)
from ckptconf.conformance.session import INFO
from ckptconf.conformance.session import of as session_of

from .budget import Budget, BudgetedRanks, OutOfTime, Share, parse_duration
from .failures import HangFailure
from .inheritance import Inheritance, inheritance_of
from .outcomes import Outcome, Unfinished, Unsupported, unsupported
from .profiles import resolve
from .trial import Checker
from .verdicts import KnownHang, Verdict, add_verdict

__all__ = ["canonical_id", "expectations_of", "suite_test_id"]


_backend_key = pytest.StashKey[Backend]()
_verdict_key = pytest.StashKey[Verdict]()
_outcome_key = pytest.StashKey[Outcome]()
_runs_key = pytest.StashKey[dict]()
_budget_key = pytest.StashKey[Budget]()
_share_key = pytest.StashKey[Share]()
_inheritance_key = pytest.StashKey[dict]()
_expectations: dict[str, Expectations] = {}
_builtins: dict[str, Backend] = {}


def canonical_id(item: pytest.Item) -> str:
    """``test_module.py::Class::test[params]``, whatever folder pytest started from.

    Not the node id's own first part: pytest writes that relative to the argument it was
    given, so a run selected by node id (``ckptconf run --lf``) would get an empty one.
    """
    return "::".join([item.path.name, *item.nodeid.split("::")[1:]])


@pytest.hookimpl(tryfirst=True)  # before -k deselects: entries are checked against every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if requested(config):  # bad expectations stop the run before any test, not in each
        backend = backend_from_options(config)
        files = [expectations_of(config, backend)]
        parent = inherited_from(config, backend)
        if parent is not None:
            files.append(_load(str(expectations_file(parent) or "")))
        if not any("::" in str(arg) for arg in config.args):  # node ids collect some params
            tests = [suite_test_id(i) for i in items if i.get_closest_marker("ckpt_suite")]
            for expectations in files:
                try:
                    expectations.check_parameters(tests)
                except ExpectationsError as exc:
                    pytest.exit(
                        f"ckptconf expectations: {exc}", returncode=pytest.ExitCode.USAGE_ERROR
                    )
    for item in items:
        unknown = [
            f for m in item.iter_markers("ckpt_requires") for f in m.args if f not in FEATURES
        ]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: unknown features {unknown}; known: {sorted(FEATURES)}"
            )


def pytest_collection_finish(session: pytest.Session) -> None:
    """With ``--ckpt-budget``: the budget, shared by the suite tests this process will run."""
    config = session.config
    text = session_of(config).budget
    if text is None:
        return
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise pytest.UsageError(f"--ckpt-budget: {exc}") from None
    tests = sum(1 for i in session.items if i.get_closest_marker("ckpt_suite"))
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    since = time.time() - session_of(config).started  # collection counts too
    config.stash[_budget_key] = Budget(
        seconds, tests, workers=workers, started=time.monotonic() - max(0.0, since)
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


_REMOVER = ThreadPoolExecutor(1, thread_name_prefix="ckptconf-remover")
"""Removes the checkpoint folders of finished tests while the next tests run (the controller
mostly waits on the ranks, and a run writes thousands of files)."""
_removing: list[Future] = []
_made_roots: list[Path] = []
"""The folders :func:`ckpt_path` made in ``--ckpt-dir`` or the launched world's shared folder:
removed at the end of the session when every test in them passed (pytest's own temporary
folders are pytest's to rotate)."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    wait(_removing)  # every folder given is gone
    _removing.clear()
    for root in _made_roots:
        with contextlib.suppress(OSError):  # not empty: a failed test's checkpoints are kept
            root.rmdir()
    _made_roots.clear()


@pytest.fixture(scope="session")
def ckpt_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], str]:
    """A function returning a new, not yet created checkpoint path on every call: under the
    launched world's checked shared folder, a new folder in ``--ckpt-dir``, or pytest's
    temporary folder."""
    import tempfile

    chosen_session = session_of(request.config)
    shared, chosen = chosen_session.shared_folder, chosen_session.folder
    if shared is not None:
        root = Path(shared)
        _made_roots.append(root)
    elif chosen is not None:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="ckptconf-", dir=chosen))
        _made_roots.append(root)
    else:
        root = tmp_path_factory.mktemp("ckpt")
    counter = itertools.count()
    return lambda: str(root / f"c{next(counter)}")


@pytest.fixture
def ckpt_repro(request: pytest.FixtureRequest, ckpt_backend: Backend) -> str:
    """A one-line command, runnable from any folder, that re-runs this test on this backend."""
    return reproduction(request.node, ckpt_backend)


def reproduction(item: pytest.Item, backend: Backend) -> str:
    """``cd <where pytest ran> && <this python> -m pytest '<file>::<test>' <options>``: the test
    by its node id, with the interpreter that ran it (bare ``python`` may lack ckptconf);
    ``--ckpt-backend`` only when the backend came from that option."""
    config = item.config
    chosen = session_of(config)
    target = "::".join([str(item.path), *item.nodeid.split("::")[1:]])
    parts = [sys.executable, "-m", "pytest", target]
    if backend is option_backend(config):
        parts += ["--ckpt-backend", backend.spec or backend.name]
    parts += ["--ckpt-profile", chosen.profile]
    if chosen.run_seed is not None:
        parts += ["--hypothesis-seed", str(chosen.run_seed)]
    if chosen.device != "cpu":
        parts += ["--ckpt-device", chosen.device]
    if chosen.timeout is not None:
        parts += ["--ckpt-timeout", f"{chosen.timeout:g}"]
    if chosen.max_examples is not None:
        parts += ["--ckpt-max-examples", str(chosen.max_examples)]
    if chosen.database is not None:  # the failing example replays first from there
        parts += ["--ckpt-database", str(Path(chosen.database).resolve())]
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
) -> Iterator[Checker]:
    """The conformance test's checker: reports as unsupported what the backend declared
    unsupported, judges failures by the expectations that name them (its ``verdict``), and
    makes trials of drawn cases (see :class:`~.trial.Checker`).

    The test's checkpoints lie in a folder of its own (one of ``ckpt_path``'s paths), removed
    after the test unless it failed: a failed test's checkpoints stay where pytest keeps its
    temporary folders."""
    from .launched_ranks import LaunchedRanks
    from .running import PoolRanks

    chosen = session_of(request.config)
    device, world = chosen.device, chosen.launched
    ranks = base_ranks = PoolRanks(device) if world is None else LaunchedRanks(world, device)
    item = request.node
    budget, share = request.config.stash.get(_budget_key, None), None
    if budget is not None:
        share = item.stash[_share_key] = budget.share()
        ranks = BudgetedRanks(ranks, share)
    item.stash[_backend_key] = ckpt_backend
    missing = [
        f
        for m in item.iter_markers("ckpt_requires")
        for f in m.args
        if not ckpt_backend.supports(f)
    ]
    if missing:
        reasons = ckpt_backend.unsupported_reasons
        unsupported(
            "declared unsupported: "
            + ", ".join(
                f"{f} ({reasons[f]})" if f in reasons else f for f in dict.fromkeys(missing)
            )
        )
    suite = item.get_closest_marker("ckpt_suite")
    folder, numbers = Path(ckpt_path()), itertools.count()

    def paths() -> str:
        return str(folder / f"c{next(numbers)}")

    def checker(backend: Backend, reproduction: str | None = None) -> Checker:
        return Checker(
            backend,
            ranks=ranks,
            paths=paths,
            suite=suite.args[0] if suite else None,
            test=canonical_id(item),
            reproduction=reproduction,
            skip=pytest.skip,
            timeout=chosen.timeout,
            session=chosen,
        )

    if getattr(request.function, "ckptconf_property_test", False):
        resolve(request.function, chosen)  # the session's profile, seed and options
    checked = checker(ckpt_backend, ckpt_repro)
    checked.share = share
    checked.verdict = _verdict(
        request.config, ckpt_backend, suite_test_id(item), checker, ranks=base_ranks
    )
    item.stash[_verdict_key] = checked.verdict
    yield checked
    if item.stash.get(_outcome_key, Outcome.FAILED) is not Outcome.FAILED:
        _removing.append(_REMOVER.submit(shutil.rmtree, folder, ignore_errors=True))


def _described(backend: Backend | None, config: pytest.Config) -> dict[str, Any] | None:
    """What the report says of ``backend``, with the parts it was found to take from its
    parent."""
    if backend is None:
        return None
    described = describe_backend(backend, config)
    found = config.stash.get(_inheritance_key, {}).get((backend.name, described["inherits"]))
    if found is not None:
        described["inherited_parts"] = found.to_json()
    return described


def suite_test_id(item: pytest.Item) -> str:
    """``<suite>::<test function>[<parameters>]``: the test's id in expectations files, the same
    whichever module or class (the shipped one, a class-style subclass) it ran from."""
    suite = item.get_closest_marker("ckpt_suite")
    name = getattr(item, "originalname", None) or item.name.split("[", 1)[0]
    params = f"[{item.callspec.id}]" if hasattr(item, "callspec") else ""
    return f"{suite.args[0] if suite else '?'}::{name}{params}"


def _load(path: str | None, *, required: bool = False) -> Expectations:
    """The expectations file at ``path`` (none: empty), parsed and checked once per process; a
    malformed one (or a ``required`` one missing) stops the whole run, naming file and line."""
    if not path:
        return Expectations([])
    if path not in _expectations:
        try:
            loaded = Expectations.load(path, required=required)
            from ckptconf.conformance.suites import suite_test_names

            loaded.check_tests(suite_test_names())
        except ExpectationsError as exc:
            pytest.exit(f"ckptconf expectations: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        _expectations[path] = loaded
    return _expectations[path]


def expectations_of(config: pytest.Config, backend: Backend) -> Expectations:
    """The backend's own expectations: ``--ckpt-expectations``, else its ``expectations`` file
    (either must exist)."""
    return _load(config.getoption("ckpt_expectations") or backend.expectations, required=True)


def _verdict(
    config: pytest.Config,
    backend: Backend,
    test: str,
    checker_for: Callable[[Backend], Checker],
    *,
    ranks: Any,
) -> Verdict:
    """The verdict of ``test`` against ``backend``: its own entries, the parent's it inherits
    (of the parts it takes, :mod:`.inheritance`), and the other built-in backends' (for the
    ``inherits`` hint)."""
    builtins = {}
    for name in BUILT_IN:
        entries = _load(str(expectations_file(name) or "")).for_test(test)
        if entries:
            builtins[name] = (_builtin(name), entries)
    parent = inherited_from(config, backend)
    inherited: list = []
    if parent is not None:
        inheritance = inheritance_in_session(config, backend, parent, ranks)
        if parent in builtins:
            inherited = inheritance.entries(builtins[parent][1])
    return Verdict(
        test,
        backend.name,
        own=expectations_of(config, backend).for_test(test),
        parent=_builtin(parent) if parent else None,
        inherited=inherited,
        builtins=builtins,
        checker_for=checker_for,
        runs=config.stash.setdefault(_runs_key, {}),
    )


def inheritance_in_session(
    config: pytest.Config, backend: Backend, parent: str, ranks: Any
) -> Inheritance:
    """The parts ``backend`` takes from ``parent`` (:func:`.inheritance.inheritance_of`), found
    once a session."""
    known = config.stash.setdefault(_inheritance_key, {})
    if (backend.name, parent) not in known:
        known[backend.name, parent] = inheritance_of(backend, parent, ranks)
    return known[backend.name, parent]


def _builtin(name: str) -> Backend:
    if name not in _builtins:
        _builtins[name] = select_backend(name)
    return _builtins[name]


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    """Judge what a conformance test raised (a property test judges each example itself) and
    decide its outcome; expected and inherited failures end as pytest xfails."""
    verdict = pyfuncitem.stash.get(_verdict_key, None)
    if verdict is None:
        return (yield)
    # a property test judges each example, a lifecycle test each step: judged already
    drawn = getattr(pyfuncitem.obj, "ckptconf_property_test", False) or getattr(
        pyfuncitem.obj, "ckptconf_judged", False
    )
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    example = pyfuncitem.callspec.id if hasattr(pyfuncitem, "callspec") else ""

    def replay(checker: Checker) -> None:
        pyfuncitem.obj(**{**arguments, "ckpt": checker})

    try:
        result = yield
    except OutOfTime:  # the budget stopped drawing: what ran says nothing of the rest
        share = pyfuncitem.stash[_share_key]
        pyfuncitem.stash[_outcome_key] = Outcome.OUT_OF_TIME
        raise Unfinished(share.reason(_max_examples(pyfuncitem.obj))) from None
    except KnownHang:  # a property test stopped drawing at a known hang
        result = None
    except (Exception, HangFailure) as exc:
        if drawn or not verdict.judge(exc, replay, example):
            pyfuncitem.stash[_outcome_key] = verdict.outcome(failed=True)
            if verdict.hint:
                add_verdict(exc, verdict.hint)
            raise
        result = None
    else:
        if not drawn:
            verdict.passed(example, replay)
    outcome = verdict.outcome(failed=False)
    pyfuncitem.stash[_outcome_key] = outcome
    if outcome in (Outcome.EXPECTED, Outcome.INHERITED):
        pytest.xfail(verdict.reason())
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    suite = item.get_closest_marker("ckpt_suite")
    if suite and report.when in ("setup", "call"):
        level = item.get_closest_marker("ckpt_level")
        backend = item.stash.get(_backend_key, None)
        outcome, message = _outcome(item, call, report)
        info = {
            "id": canonical_id(item),
            "test": suite_test_id(item),
            "suite": suite.args[0],
            "level": level.args[0] if level else None,
            "backend": _described(backend, item.config),
            "outcome": outcome.value,
            "message": message,
            **_failure_info(call),
        }
        verdict = item.stash.get(_verdict_key, None)
        if verdict is not None and report.when == "call":
            info.update(verdict.to_json())
        share = item.stash.get(_share_key, None)
        if share is not None and report.when == "call":
            info["examples"] = share.examples
        if report.failed and info.get("failure") and item.config.getoption("verbose", 0) < 2:
            report.longrepr = _brief(info["failure"], item.config)
        # user_properties travel with the report to the xdist controller
        report.user_properties.append((INFO, info))
    return report


def _brief(failure: dict[str, Any], config: pytest.Config) -> str:
    """A failure's text as pytest shows it: the brief form, and where the rest is."""
    from .failures import render_brief

    path = config.getoption("ckpt_report")
    record = f"{path}, or pytest -vv" if path else "pytest -vv (or --ckpt-report PATH)"
    return render_brief(failure, record=record)


def _max_examples(test: Any) -> int | None:
    """The hypothesis ``max_examples`` of a property test (``None`` for another test)."""
    chosen = getattr(test, "_hypothesis_internal_use_settings", None)
    return getattr(chosen, "max_examples", None)


def _outcome(item: pytest.Item, call: pytest.CallInfo, report) -> tuple[Outcome, str | None]:
    """The outcome of a test's setup or call phase, from what it raised and its verdict."""
    value = call.excinfo.value if call.excinfo is not None else None
    if isinstance(value, Unsupported):
        return Outcome.UNSUPPORTED, value.reason
    if isinstance(value, Unfinished):
        return Outcome.OUT_OF_TIME, value.reason
    if isinstance(value, pytest.skip.Exception):
        return Outcome.SKIPPED, str(value.msg)
    decided = item.stash.get(_outcome_key, None) if report.when == "call" else None
    if decided is not None:
        verdict = item.stash[_verdict_key]
        if decided in (Outcome.EXPECTED, Outcome.INHERITED):
            return decided, verdict.reason()
        return decided, None
    return (Outcome.FAILED if report.failed else Outcome.PASSED), None


def _failure_info(call: pytest.CallInfo) -> dict[str, Any]:
    """The structured failure of a phase that raised, and hypothesis' falsifying example."""
    from .failures import ConformanceFailure, HangFailure

    if call.excinfo is None:
        return {}
    found = _leaves(call.excinfo.value)  # hypothesis may find several distinct failures
    value = next((e for e in found if isinstance(e, ConformanceFailure)), found[0])
    others = [_other(e) for e in found if e is not value]
    if isinstance(value, HangFailure):  # not shrunk: the case that hung is the one to show
        hung = value.failure.fields()
        hung["minimal_case"] = f"(not shrunk: a hang is not re-run)\n{hung['case']}"
        return {"minimal_case": hung["minimal_case"], "failure": hung}
    notes = list(getattr(value, "__notes__", []))
    own = getattr(value, "minimal_case", None)  # a lifecycle run shrinks itself
    out: dict[str, Any] = {"minimal_case": own or _falsifying_example(notes)}
    if isinstance(value, ConformanceFailure):
        out["failure"] = value.fields()
        out["failure"]["minimal_case"] = out["minimal_case"]
        if others:
            out["failure"]["others"] = others
    elif not isinstance(value, (pytest.skip.Exception, pytest.xfail.Exception)):
        out["error"] = f"{type(value).__name__}: {value}"[-4000:]
    return out


def _leaves(value: BaseException) -> list[BaseException]:
    """The exceptions of a (nested) exception group, in order; ``[value]`` for another."""
    inner = getattr(value, "exceptions", None)
    if not inner:
        return [value]
    return [leaf for e in inner for leaf in _leaves(e)]


def _other(value: BaseException) -> dict[str, Any]:
    """What the report keeps of a further distinct failure hypothesis found in the same test:
    its headline, step, kind, first error and minimal case."""
    from .failures import ConformanceFailure

    minimal = getattr(value, "minimal_case", None) or _falsifying_example(
        list(getattr(value, "__notes__", []))
    )
    if isinstance(value, ConformanceFailure):
        fields = value.fields()
        first = (fields.get("errors") or [None])[0]
        return {
            "what": fields.get("what"),
            "step": fields.get("step"),
            "kind": fields.get("kind"),
            "error": first,
            "minimal_case": minimal,
        }
    return {"what": f"{type(value).__name__}: {value}"[:500], "minimal_case": minimal}


def _falsifying_example(notes: list[str]) -> str | None:
    """The draws of hypothesis' falsifying example (``Draw 1 (case): ...``), the pinned example
    that failed (``Pinned('name', case=...)``), or the example as hypothesis tells it."""
    draws = [n for n in notes if n.startswith("Draw ")]
    if draws:
        return "\n".join(draws)
    pinned = next((n for n in notes if "data=Pinned(" in n), None)
    if pinned is not None:  # "Failing explicit example: test(\n    ..., data=Pinned(...),\n)"
        text = pinned[pinned.index("data=Pinned(") + len("data=") :].rstrip()
        return "pinned example " + text.removesuffix(")").rstrip().rstrip(",")
    example = [
        n
        for n in notes
        if n.startswith(("Falsifying example", "Falsifying explicit example", "Failing "))
    ]
    return "\n".join(example) or None
