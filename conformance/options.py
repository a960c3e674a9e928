"""The one table of ckptconf's options: pytest's ``--ckpt-*`` and ``ckptconf run``'s.

Every option is declared once (:data:`OPTIONS`): the pytest plugin adds each as
``--ckpt-<name>``, and ``ckptconf run`` adds those it shows as ``--<name>`` with the same help
and passes the value on to pytest as ``--ckpt-<name>`` (:func:`as_pytest_args`). Importing this
module imports neither pytest nor torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OPTIONS",
    "Option",
    "add_to_parser",
    "add_to_pytest",
    "as_pytest_args",
    "checkpoints_in_memory",
    "given",
    "memory_folder",
    "own_session",
    "requested",
]


@dataclass(frozen=True)
class Option:
    """One ckptconf option. ``name`` is the pytest option without ``--ckpt-``; ``kwargs`` go
    to ``addoption``/``add_argument`` (``type``, ``choices``, ``metavar``, ``action``);
    ``in_run``: whether ``ckptconf run`` shows it; ``run_default``: its default there (the
    plugin's is always ``None``: an option not given leaves the session inert); ``path``:
    made absolute before it is passed on (``ckptconf run`` runs pytest in a folder of its own)."""

    name: str
    help: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    in_run: bool = True
    run_default: Any = None
    path: bool = False

    @property
    def dest(self) -> str:
        """The attribute of pytest's options: ``ckpt_max_examples``."""
        return "ckpt_" + self.name.replace("-", "_")

    @property
    def run_dest(self) -> str:
        """The attribute of ``ckptconf run``'s parsed arguments: ``max_examples``."""
        return self.name.replace("-", "_")

    @property
    def flag(self) -> bool:
        return self.kwargs.get("action") == "store_true"


_DEVICES = ("cpu", "cuda", "cuda-shared")

OPTIONS: tuple[Option, ...] = (
    Option(
        "backend",
        "backend under test: a built-in name or module:attr (default: reference)",
        run_default="reference",
    ),
    Option(
        "report",
        "write a JSON report of the run to PATH (ckptconf run: default ./ckptconf-report.json)",
        dict(metavar="PATH"),
        run_default="ckptconf-report.json",
        path=True,
    ),
    Option(
        "profile",
        "hypothesis profile of the suites: ci (default when CI is set), dev (default "
        "otherwise), thorough",
        dict(choices=("ci", "dev", "thorough")),
    ),
    Option(
        "expectations",
        "expectations file (default: the backend's own)",
        dict(metavar="PATH"),
        path=True,
    ),
    Option(
        "device",
        "where the ranks' tensors live: cpu (gloo, default), cuda (NCCL, a GPU per rank), "
        "cuda-shared (ranks share GPU 0, gloo control plane)",
        dict(choices=_DEVICES),
        run_default="cpu",
    ),
    Option(
        "timeout",
        "seconds every step may take on its ranks before they are stopped and their stacks "
        "shown (default: 120, 60 for fault tests); a hang fails its test at once, unshrunk",
        dict(type=float, metavar="SECONDS"),
    ),
    Option(
        "inherit",
        "a built-in backend (e.g. torch-dcp) the backend is built on: failures that one is "
        "known for are reported as inherited, apart from the backend's own, and do not count "
        "against the exit code",
        dict(metavar="NAME"),
    ),
    Option(
        "no-shrink",
        "report each failing example as found, unshrunk: faster (triage, meta-tests), but the "
        "minimal case is not minimal",
        dict(action="store_true"),
    ),
    Option(
        "dir",
        "folder the run's checkpoints go under, one folder per test, removed when it passed and "
        "kept when it failed (default: ckptconf run: a new folder in memory where there is one; "
        "pytest: its temporary folder); under a launcher across nodes, on storage every node "
        "sees (checked before any test runs)",
        dict(metavar="PATH"),
        path=True,
    ),
    Option(
        "spmd",
        "run as one rank of the world a launcher started (automatic under torchrun): rank 0 "
        "runs the tests and reports, every rank runs each step; see "
        "ckptconf.conformance.kit.launched_ranks",
        dict(action="store_true"),
        in_run=False,  # ckptconf run finds the launcher's world itself
    ),
    Option(
        "world-size",
        "also draw cases on N ranks where a suite draws world sizes (default: the launched "
        "world's size under torchrun; in pool mode nothing beyond 4 ranks)",
        dict(type=int, metavar="N"),
    ),
    Option(
        "budget",
        "time for the whole run (90s, 10m, 1h30m), shared by its tests: a test whose share "
        "runs out stops drawing examples and is reported 'out of time' with how many it ran "
        "(never a pass, never a failure)",
        dict(metavar="DURATION"),
    ),
    Option(
        "max-examples",
        "examples a property test draws, in place of the profile's (a test drawing a share of "
        "them, such as a third per storage hook, draws that share of N)",
        dict(type=int, metavar="N"),
    ),
    Option(
        "database",
        "keep hypothesis' example database in DIR: failing examples are saved there and "
        "replayed first by the next run given the same DIR (dev and thorough profiles; the ci "
        "profile is derandomized and refuses it)",
        dict(metavar="DIR"),
        path=True,
    ),
)
"""Every ckptconf option, in the order ``--help`` shows them."""


def given(config: Any) -> bool:
    """Whether pytest ``config`` was given any ``--ckpt-*`` option."""
    return any(config.getoption(o.dest, None) is not None for o in OPTIONS)


def requested(config: Any) -> bool:
    """Whether the pytest session asked for ckptconf: a ``--ckpt-*`` option or
    ``CKPTCONF_PROFILE``."""
    return "CKPTCONF_PROFILE" in os.environ or given(config)


def add_to_pytest(parser: Any) -> None:
    """Add every option to pytest's ``parser`` as ``--ckpt-<name>``, default ``None``."""
    group = parser.getgroup("ckptconf", "checkpoint conformance (ckptconf)")
    for option in OPTIONS:
        kwargs = dict(option.kwargs)
        group.addoption(f"--ckpt-{option.name}", default=None, help=option.help, **kwargs)


def add_to_parser(parser: Any) -> None:
    """Add the options ``ckptconf run`` shows to its argparse ``parser`` as ``--<name>``."""
    for option in OPTIONS:
        if option.in_run:
            parser.add_argument(
                f"--{option.name}", default=option.run_default, help=option.help, **option.kwargs
            )


def as_pytest_args(values: Any, options: Iterable[Option] = OPTIONS) -> list[str]:
    """``ckptconf run``'s parsed ``values`` as pytest's ``--ckpt-*`` arguments (those given)."""
    out: list[str] = []
    for option in options:
        if not option.in_run:
            continue
        value = getattr(values, option.run_dest, None)
        if value is None or value is False:
            continue
        if option.flag:
            out.append(f"--ckpt-{option.name}")
            continue
        text = os.path.abspath(value) if option.path else str(value)
        out += [f"--ckpt-{option.name}", text]
    return out


@contextmanager
def own_session() -> Iterator[list[str]]:
    """pytest arguments for a session of ckptconf's own (``ckptconf run``, ``bench suite``),
    valid inside the ``with``: an empty config file in a temporary folder as rootdir, so
    that the options of the project pytest runs in do not apply; no cache folder and no
    terminal reporter (the caller reports); ``--assert=plain``: the suites check values
    themselves, and rewriting asserts would re-parse every module of every plugin's
    distribution (hypothesis is 77 modules) on each run where bytecode is not cached."""
    with tempfile.TemporaryDirectory(prefix="ckptconf-session-") as folder:
        config = os.path.join(folder, "pytest.ini")
        with open(config, "w") as file:
            file.write("[pytest]\n")
        yield [
            *("-c", config, "--rootdir", folder),
            *("-p", "no:cacheprovider", "-p", "no:terminal", "--assert=plain"),
        ]


def memory_folder(path: str = "/dev/shm", room: int = 1 << 30) -> str | None:
    """``path`` if it is a folder in memory (tmpfs or ramfs) this process may write, with at
    least ``room`` bytes free; else ``None``.

    Where ``ckptconf run`` puts its checkpoints unless told (``--dir``): a conformance run
    checks what a backend writes and reads, not how fast a disk syncs, and on a small VM the
    disk's metadata syncs were a sixth of the reference's ci run. Durability is checked from
    the recorded system calls (the crash-states suite), which no filesystem changes.
    """
    try:
        if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
            return None
        stats = os.statvfs(path)
        with open("/proc/self/mounts") as mounts:
            table = [line.split()[1:3] for line in mounts]
    except OSError:  # no such folder, or not Linux
        return None
    if stats.f_bavail * stats.f_frsize < room:
        return None
    real = os.path.realpath(path)
    mounted = [(point, kind) for point, kind in table if os.path.commonpath([real, point]) == point]
    if not mounted:
        return None
    _, kind = max(mounted, key=lambda entry: len(entry[0]))  # the innermost mount holds it
    return path if kind in ("tmpfs", "ramfs") else None


@contextmanager
def checkpoints_in_memory(prefix: str, *, wanted: bool = True) -> Iterator[str | None]:
    """A new folder named ``prefix...`` in :func:`memory_folder` for the ``with`` (``None``
    where there is none, or when not ``wanted``), removed with whatever it holds afterwards."""
    memory = memory_folder() if wanted else None
    if memory is None:
        yield None
        return
    made = tempfile.mkdtemp(prefix=prefix, dir=memory)
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)
