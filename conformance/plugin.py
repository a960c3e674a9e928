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
import random
import shlex
import sys
import time

import pytest

__all__ = ["activate", "report_of", "run_seed", "session_profile", "session_seed"]

_OPTIONS = (
    "ckpt_backend",
    "ckpt_report",
    "ckpt_profile",
    "ckpt_expectations",
    "ckpt_device",
    "ckpt_timeout",
    "ckpt_inherit",
    "ckpt_no_shrink",
    "ckpt_dir",
    "ckpt_spmd",
    "ckpt_world_size",
    "ckpt_budget",
    "ckpt_max_examples",
    "ckpt_database",
)
_PROFILE_NAMES = ("ci", "dev", "thorough")
INFO = "ckptconf"
"""The ``user_properties`` entry carrying a conformance test's data to the report."""
_SEED = "ckptconf_seed"  # workerinput key: the controller's seed, for every xdist worker

_config: pytest.Config | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ckptconf", "checkpoint conformance (ckptconf)")
    group.addoption(
        "--ckpt-backend",
        default=None,
        help="backend under test: a built-in name or module:attr (default: reference)",
    )
    group.addoption(
        "--ckpt-report", default=None, metavar="PATH", help="write a JSON report of the run to PATH"
    )
    group.addoption(
        "--ckpt-profile",
        default=None,
        choices=_PROFILE_NAMES,
        help="hypothesis profile of the suites: ci (default when CI is set), dev (default "
        "otherwise), thorough",
    )
    group.addoption(
        "--ckpt-expectations",
        default=None,
        metavar="PATH",
        help="expectations file (default: the backend's own)",
    )
    group.addoption(
        "--ckpt-device",
        default=None,
        choices=("cpu", "cuda", "cuda-shared"),
        help="where the ranks' tensors live: cpu (gloo, default), cuda (NCCL, a GPU per rank), "
        "cuda-shared (ranks share GPU 0, gloo control plane)",
    )
    group.addoption(
        "--ckpt-timeout",
        default=None,
        type=float,
        metavar="SECONDS",
        help="seconds every step may take on its ranks before they are stopped and their stacks "
        "shown (default: 120, 60 for fault tests); a hang fails its test at once, unshrunk",
    )

    group.addoption(
        "--ckpt-no-shrink",
        action="store_true",
        default=None,
        help="report each failing example as found, unshrunk: faster (triage, meta-tests), but "
        "the minimal case is not minimal",
    )
    group.addoption(
        "--ckpt-dir",
        default=None,
        metavar="PATH",
        help="folder the run's checkpoints go under (default: a temporary folder); under a "
        "launcher across nodes, on storage every node sees (checked before any test runs)",
    )
    group.addoption(
        "--ckpt-spmd",
        action="store_true",
        default=None,
        help="run as one rank of the world a launcher started (automatic under torchrun): rank "
        "0 runs the tests and reports, every rank runs each step; see ckptconf.conformance.kit.launched",
    )
    group.addoption(
        "--ckpt-world-size",
        default=None,
        type=int,
        metavar="N",
        help="also draw cases on N ranks where a suite draws world sizes (default: the "
        "launched world's size under torchrun; in pool mode nothing beyond 4 ranks)",
    )
    group.addoption(
        "--ckpt-budget",
        default=None,
        metavar="DURATION",
        help="time for the whole run (90s, 10m, 1h30m), shared by its tests: a test whose share "
        "runs out stops drawing examples and is reported 'out of time' with how many it ran "
        "(never a pass)",
    )
    group.addoption(
        "--ckpt-max-examples",
        default=None,
        type=int,
        metavar="N",
        help="examples a property test draws, in place of the profile's (a test drawing a share "
        "of them, such as a third per storage hook, draws that share of N)",
    )
    group.addoption(
        "--ckpt-database",
        default=None,
        metavar="DIR",
        help="keep hypothesis' example database in DIR: failing examples are saved there and "
        "replayed first by the next run given the same DIR (dev and thorough profiles; the ci "
        "profile is derandomized and refuses it)",
    )
    group.addoption(
        "--ckpt-inherit",
        default=None,
        metavar="NAME",
        help="a built-in backend (e.g. torch-dcp) the backend is built on: failures that one "
        "is known for are reported as inherited, apart from the backend's own",
    )


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
    profile = os.environ.get("CKPTCONF_PROFILE")
    if profile is not None and profile not in _PROFILE_NAMES:
        raise pytest.UsageError(
            f"CKPTCONF_PROFILE={profile!r} is not a ckptconf profile; expected one of "
            f"{list(_PROFILE_NAMES)}"
        )
    # the suites may have been imported already: by a conftest (before this hook), or by an
    # earlier session in this process (their import, which activates, does not run twice)
    if requested(config) or "ckptconf.conformance.suites" in sys.modules:
        activate(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _config
    world = config.stash.get(_world_key, None)
    if world is not None:
        world.close()  # the other launched ranks stop serving
    if _config is config:
        _config = None


# --- SPMD: the ranks a launcher started ---------------------------------------------------------

_world_key = pytest.StashKey["object"]()
_folder_key = pytest.StashKey["object"]()


def _launched_rank(config: pytest.Config) -> int | None:
    # an option, not CKPTCONF_PROFILE alone: an exported profile must not turn someone's own
    # pytest run under torchrun into ckptconf's SPMD mode
    if not _option_given(config):
        return None
    from .kit.launched import launched_rank

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
    """Under a launcher, rank 0 takes the world and checks the shared checkpoint folder."""
    config = session.config
    if _launched_rank(config) != 0:
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(
            "-n (pytest-xdist) does not combine with a launched world (torchrun)"
        )
    from ckptconf.harness.launched import LaunchedWorld

    from .kit.launched import shared_folder

    timeout = config.getoption("ckpt_timeout") or 60.0
    # after a step timed out, how long the other ranks have to show they are free again
    world = LaunchedWorld(config.getoption("ckpt_device") or "cpu", ping_timeout=max(10.0, timeout))
    config.stash[_world_key] = world
    wanted = config.getoption("ckpt_world_size")
    if wanted is not None and wanted > world.size:
        raise pytest.UsageError(
            f"--ckpt-world-size {wanted}: the launcher started {world.size} ranks; launch at "
            f"least {wanted}"
        )
    config.stash[_folder_key] = shared_folder(world, config.getoption("ckpt_dir"))


def pytest_runtest_teardown(item: pytest.Item) -> None:
    world = launched_world(item.config)
    if world is not None and world.lost is not None:
        item.session.shouldstop = (
            f"ckptconf: the launched world is lost ({world.lost}); no further test can run in "
            "this launch, the report has every test run so far"
        )


def launched_world(config: pytest.Config):
    """The launched world rank 0 runs steps on, or ``None`` outside a launcher."""
    return config.stash.get(_world_key, None)


def session_world_size(config: pytest.Config | None = None) -> int | None:
    """The largest world the suites draw cases on, if set: ``--ckpt-world-size``, else the
    launched world's size."""
    config = config or _config
    if config is None:
        return None
    chosen = config.getoption("ckpt_world_size", None)
    world = launched_world(config)
    return chosen or (world.size if world is not None else None)


def launched_folder(config: pytest.Config):
    """The folder checked to be shared by every launched rank, or ``None`` outside a launcher."""
    return config.stash.get(_folder_key, None)


def requested(config: pytest.Config) -> bool:
    """Whether the run asked for ckptconf by an option or ``CKPTCONF_PROFILE``."""
    return "CKPTCONF_PROFILE" in os.environ or _option_given(config)


def _option_given(config: pytest.Config) -> bool:
    return any(config.getoption(name, None) is not None for name in _OPTIONS)


def activate(config: pytest.Config | None = None) -> None:
    """Switch ckptconf on for this session (``config``, else the running one, if any): register
    the suites' fixtures. Done by the options, and by importing the suites."""
    config = config or _config
    if config is None or config.pluginmanager.has_plugin("ckptconf-suites"):
        return
    from .kit import fixtures

    config.stash[_started_key] = time.time()
    config.pluginmanager.register(fixtures, "ckptconf-suites")


def session_profile(config: pytest.Config | None = None) -> str:
    """The session's ckptconf profile: ``--ckpt-profile``, ``CKPTCONF_PROFILE``, ``ci`` under CI,
    else ``dev``."""
    config = config or _config
    chosen = config.getoption("ckpt_profile", None) if config is not None else None
    return chosen or os.environ.get("CKPTCONF_PROFILE") or ("ci" if os.environ.get("CI") else "dev")


def session_option(name: str, config: pytest.Config | None = None):
    """The value of the ckptconf option ``name`` (``"ckpt_max_examples"``) in this session, or
    ``None`` outside one."""
    config = config or _config
    return config.getoption(name, None) if config is not None else None


def session_shrinks(config: pytest.Config | None = None) -> bool:
    """Whether the suites' failing examples are shrunk (not under ``--ckpt-no-shrink``)."""
    config = config or _config
    return not (config is not None and config.getoption("ckpt_no_shrink", None))


def session_seed(config: pytest.Config | None = None) -> int | None:
    """The seed of the suites' non-derandomized profiles: ``--hypothesis-seed`` if given, else
    one drawn once per session (by the xdist controller, shared with its workers); ``None``
    with ``--ckpt-database``, whose replays hypothesis runs only in unseeded tests."""
    config = config or _config
    if config is None or config.getoption("ckpt_database", None) is not None:
        return None  # a seeded hypothesis test uses no example database
    given = config.getoption("hypothesis_seed", None)
    if given is not None:
        return int(given)
    worker = getattr(config, "workerinput", None)
    if worker is not None and _SEED in worker:
        return worker[_SEED]
    if not hasattr(config, "_ckptconf_seed"):
        config._ckptconf_seed = random.randrange(2**32)  # type: ignore[attr-defined]
    return config._ckptconf_seed  # type: ignore[attr-defined]


def run_seed(config: pytest.Config | None = None) -> int | None:
    """The seed this run's suite tests use: ``None`` under a derandomized profile (``ci``)."""
    from .kit.profiles import PROFILES

    profile = session_profile(config)
    return None if PROFILES[profile].get("derandomize") else session_seed(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: give every worker this session's seed."""
    node.workerinput[_SEED] = session_seed(node.config)


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not requested(config):
        return None
    import torch

    from .kit.fixtures import backend_from_options

    if config.getoption("ckpt_backend") is not None:
        backend = backend_from_options(config)
        named = f"backend {backend.name} ({backend.spec})"
    else:  # a class-style run gives its backend by a fixture, known once a test asks for it
        named = "backend: the test module's backend fixture, else reference"
    seed = run_seed(config)
    device = config.getoption("ckpt_device") or "cpu"
    database = config.getoption("ckpt_database")
    seeded = f"seed {'derandomized' if seed is None else seed}"
    if database is not None:
        seeded = f"example database {database} (hypothesis' own seeds)"
    return [
        f"ckptconf: {named}, torch {torch.__version__}, "
        f"profile {session_profile(config)}, {seeded}, device {device}"
    ]


# --- the report, where results come back (the only process or the xdist controller) ------------

_report_key = pytest.StashKey["object"]()
_started_key = pytest.StashKey[float]()


def session_started(config: pytest.Config) -> float:
    """When ckptconf was activated in this session (``time.time()``; now, if it was not)."""
    return config.stash.get(_started_key, time.time())


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
        _config.stash[_report_key] = Report(
            profile=session_profile(_config),
            seed=run_seed(_config),
            started=_config.stash.get(_started_key, time.time()),
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
    device = config.getoption("ckpt_device", None) or "cpu"
    world = launched_world(config)
    if world is None:
        return f"warm pools ({device})"
    return f"launched world: {world.size} ranks ({device})"


def _command() -> str:
    """The command line of this run, as the person typed it (``ckptconf run ...`` or pytest)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else "pytest"
    if program in ("__main__.py", "cli.py"):
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
        from .kit.fixtures import backend_from_options, describe_backend

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
