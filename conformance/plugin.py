"""The pytest plugin (``pytest11`` entry point): markers always, everything else only when asked.

Installed, it registers the markers ``ckpt_suite``, ``ckpt_level`` and ``ckpt_requires``
and the ``--ckpt-*`` options, and does nothing else: no torch import, no hypothesis
profile or seed, no fixture. A session asks for ckptconf with a ``--ckpt-*`` option or
``CKPTCONF_PROFILE``, or by collecting a suite (a test module that imports
``ckptconf.conformance.suites``); then :func:`activate` registers the suites' fixtures
(:mod:`ckptconf.conformance.kit.fixtures`). Where results come back (the only process,
or the xdist controller), conformance outcomes are gathered into a report, printed as a
suite x outcome matrix and written with ``--ckpt-report``. Modelled on hypothesis' own
plugin, which does not import hypothesis until a run asks for it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time

import pytest

from . import options
from .options import requested
from .session import INFO, WORKER_SEED, profile_from_environment
from .session import of as session_of

__all__ = ["activate", "report_of"]

_config: pytest.Config | None = None  # the running session's: for activate() at a suite's import
_FIXTURES = "ckptconf.conformance.kit.fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_to_pytest(parser)


def pytest_configure(config: pytest.Config) -> None:
    global _config
    config.addinivalue_line("markers", "ckpt_suite(name): the conformance suite a test belongs to")
    config.addinivalue_line(
        "markers", "ckpt_level(level): core (any correct backend) or strict (hardening)"
    )
    config.addinivalue_line(
        "markers",
        "ckpt_requires(*features): features the test needs; see ckptconf.conformance.FEATURES",
    )
    _config = config
    try:
        profile_from_environment()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    # the suites may have been imported already: by a conftest (before this hook), or by an
    # earlier session in this process (their import, which activates, does not run twice)
    if requested(config) or "ckptconf.conformance.suites" in sys.modules:
        activate(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _config
    if requested(config):  # a launched world needs an option
        world = session_of(config).launched
        if world is not None:
            world.close()  # the other launched ranks stop serving
    if _config is config:
        _config = None


# --- SPMD: the ranks a launcher started ---------------------------------------------------------


def _launched_rank(config: pytest.Config) -> int | None:
    # an option, not CKPTCONF_PROFILE alone: an exported profile must not turn someone's own
    # pytest run under torchrun into ckptconf's SPMD mode
    if not options.given(config):
        return None
    from .kit.launched_ranks import launched_rank

    return launched_rank(bool(config.getoption("ckpt_spmd", None)))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config):
    """Under a launcher, every rank but 0 serves rank 0's steps instead of running tests."""
    rank = _launched_rank(config)
    if rank is None or rank == 0:
        return None
    from ckptconf.harness.launched import serve

    serve(config.getoption("ckpt_device") or "cpu")
    return 0


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under a launcher, rank 0 takes the world and checks the shared checkpoint folder;
    otherwise a process that runs the suites starts its rank pools' forkserver, which imports
    torch and the suites while pytest collects."""
    config = session.config
    rank = _launched_rank(config)
    if rank is None:
        xdist_controller = getattr(config.option, "numprocesses", None) and not _is_xdist_worker(
            config
        )
        if config.pluginmanager.has_plugin(_FIXTURES) and not xdist_controller:
            from .kit.running import PoolRanks

            with contextlib.suppress(ValueError):  # an unknown device mode: the tests say so
                PoolRanks(session_of(config).device).warm_up()
        return
    if rank != 0:
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(
            "-n (pytest-xdist) does not combine with a launched world (torchrun)"
        )
    from ckptconf.harness.launched import LaunchedWorld

    from .kit.launched_ranks import shared_folder

    chosen = session_of(config)
    # after a step timed out, how long the other ranks have to show they are free again
    ping = max(10.0, chosen.timeout or 60.0)
    world = chosen.launched = LaunchedWorld(chosen.device, ping_timeout=ping)
    wanted = chosen.world_size
    if wanted is not None and wanted > world.size:
        raise pytest.UsageError(
            f"--ckpt-world-size {wanted}: the launcher started {world.size} ranks; launch at "
            f"least {wanted}"
        )
    chosen.shared_folder = shared_folder(world, chosen.folder)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if not requested(item.config):  # a launched world needs an option
        return
    world = session_of(item.config).launched
    if world is not None and world.lost is not None:
        item.session.shouldstop = (
            f"ckptconf: the launched world is lost ({world.lost}); no further test can run in "
            "this launch, the report has every test run so far"
        )


def activate(config: pytest.Config | None = None) -> None:
    """Switch ckptconf on for this session (``config``, else the running one, if any): register
    the suites' fixtures. Done by the options, and by importing the suites."""
    config = config or _config
    if config is None or config.pluginmanager.has_plugin(_FIXTURES):
        return
    session_of(config).started = time.time()
    # by name, as -p and pytest_plugins register a plugin: the fixtures import the suites,
    # whose import calls this
    config.pluginmanager.import_plugin(_FIXTURES)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: give every worker this session's seed."""
    node.workerinput[WORKER_SEED] = session_of(node.config).seed


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not requested(config):
        return None
    import torch

    from .selection import backend_from_options

    if config.getoption("ckpt_backend") is not None:
        backend = backend_from_options(config)
        named = f"backend {backend.name} ({backend.spec})"
    else:  # a class-style run gives its backend by a fixture, known once a test asks for it
        named = "backend: the test module's backend fixture, else reference"
    chosen = session_of(config)
    seed = chosen.run_seed
    seeded = f"seed {'derandomized' if seed is None else seed}"
    if chosen.database is not None:
        seeded = f"example database {chosen.database} (hypothesis' own seeds)"
    return [
        f"ckptconf: {named}, torch {torch.__version__}, "
        f"profile {chosen.profile}, {seeded}, device {chosen.device}"
    ]


# --- the report, where results come back (the only process or the xdist controller) ------------

_report_key = pytest.StashKey["object"]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _config is None or _is_xdist_worker(_config):
        return
    info = next((v for name, v in getattr(report, "user_properties", ()) if name == INFO), None)
    if info is None:
        return
    from .report import Report

    if _report_key not in _config.stash:
        chosen = session_of(_config)
        _config.stash[_report_key] = Report(
            profile=chosen.profile,
            seed=chosen.run_seed,
            started=chosen.started,
            command=_command(),
            runner=_runner(_config),
        )
    _config.stash[_report_key].record(info, report)
    path = _config.getoption("ckpt_report")
    if path:  # after every test: a stopped run keeps what it found
        _config.stash[_report_key].write(path)


def pytest_report_teststatus(report, config: pytest.Config):
    """Pytest's own lines and summary use the suite's words: ``inherited``, ``unsupported``...
    Here, not in the suites' fixtures, so that the xdist controller of a class-style run, which
    imports no suite, speaks them too."""
    info = next((v for name, v in getattr(report, "user_properties", ()) if name == INFO), None)
    if info is None or report.when not in ("setup", "call"):
        return None
    from .kit.outcomes import Outcome

    outcome = Outcome(info["outcome"])
    if outcome in (Outcome.PASSED, Outcome.FAILED) or report.when == "setup" and report.passed:
        return None
    return outcome.value, outcome.letter, outcome.value.upper()


def _runner(config: pytest.Config) -> str:
    """How the ranks ran: the warm pools, or the world a launcher started."""
    chosen = session_of(config)
    device, world = chosen.device, chosen.launched
    if world is None:
        return f"warm pools ({device})"
    return f"launched world: {world.size} ranks ({device})"


def _command() -> str:
    """The command line of this run, as the person typed it (``ckptconf run ...`` or pytest)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "pytest"
    if program == "__main__.py":
        program = "ckptconf"
    return shlex.join([program, *sys.argv[1:]])


def report_of(config: pytest.Config):
    """The conformance report of this run, or ``None`` if no conformance test ran."""
    return config.stash.get(_report_key, None)


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    report = report_of(config)
    if report is None:
        return
    from .expectations import Expectations, ExpectationsError

    if not report.backend and requested(config):
        from .selection import backend_from_options, describe_backend

        report.backend = describe_backend(backend_from_options(config), config)
    path = config.getoption("ckpt_expectations") or report.backend.get("expectations")
    whole = _unfiltered(config) and not any(t["outcome"] == "out of time" for t in report.tests)
    if path and whole:  # only a whole run shows that an entry matches nothing
        with contextlib.suppress(ExpectationsError):  # a bad file stopped the run already
            report.unmatched_expectations = Expectations.load(path).unmatched(
                report.matched_entries()
            )
    path = config.getoption("ckpt_report")
    if path:
        report.write(path)


def _unfiltered(config: pytest.Config) -> bool:
    """Whether the run was the whole suite: no ``-k``/``-m``, no node ids (``--lf``), no
    ``-x``/``--maxfail``."""
    option = config.option
    if option.keyword or option.markexpr or getattr(option, "maxfail", 0):
        return False
    return not any("::" in str(arg) for arg in config.args)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    report = report_of(config)
    if report is None:
        return
    terminalreporter.write_sep("=", f"ckptconf conformance: {report.backend.get('name')}")
    for line in report.matrix_lines():
        terminalreporter.write_line(line)
    for entry in report.unmatched_expectations:
        terminalreporter.write_line(
            f"expectation matched no failure this run (remove it?): {entry}", yellow=True
        )
    path = config.getoption("ckpt_report")
    if path:
        terminalreporter.write_line(f"report written to {path}")
