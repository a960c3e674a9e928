"""SPMD: the suites on the ranks an external launcher started (torchrun, ``srun torchrun``).

The second implementation of :class:`~.running.Ranks` (the first is the warm pools). Every
launched process runs the same command (``torchrun ... -m ckptconf run`` or ``pytest``);
rank 0 is the controller: it collects the tests, draws and shrinks the hypothesis cases,
sends each step to the ranks and gathers their outcomes, prints the progress and writes
the report. Every other rank only serves steps (:func:`ckptconf.harness.launched.serve`)
until rank 0 is done. The suites do not know which runner runs them.

A step on ``w`` ranks runs on launched ranks ``0..w-1`` (a process group of ``w`` ranks), so
a 4-rank launch runs the same cases as the 4-rank pools, and the report is the same. A
step needing more ranks than were launched is unsupported (skipped with the reason). A
step that kills a rank runs on fresh local processes of rank 0's machine, as in pool
mode. A hang fails its test with every stuck rank's stack; if a rank stays stuck, the
world is lost and the run stops, with what it found so far in the report.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .running import PoolRanks, Ranks, RanksLost, _outcomes

__all__ = ["LaunchedRanks", "launched_rank", "shared_folder"]

_RUN_ID = "TORCHELASTIC_RUN_ID"


def launched_rank(explicit: bool = False) -> int | None:
    """This process's rank when it runs under a launcher (torchrun sets ``TORCHELASTIC_RUN_ID``;
    ``explicit``: ``--ckpt-spmd`` was given), else ``None``. The caller decides whether the
    session asked for ckptconf at all (an option, not only an environment variable)."""
    from ckptconf.harness.launched import launcher_env

    if not explicit and _RUN_ID not in os.environ:
        return None
    env = launcher_env()
    if env is None:
        if explicit:
            raise pytest.UsageError(
                "--ckpt-spmd: this process was not started by a launcher (RANK, WORLD_SIZE, "
                "MASTER_ADDR and MASTER_PORT are not all set); start it with torchrun"
            )
        return None
    return env.rank


class LaunchedRanks(Ranks):
    """Steps run on the launched world; ``run_fresh`` on fresh processes of rank 0's machine."""

    def __init__(self, world, device: str = "cpu"):
        self.world, self.device = world, device

    def __repr__(self) -> str:
        return f"LaunchedRanks({self.world!r})"

    def unavailable(self, world: int) -> str | None:
        if world > self.world.size:
            return (
                f"needs {world} ranks; the launcher started {self.world.size} (launch at least "
                f"{world} to run it)"
            )
        return None

    def run(self, backend, fn, args: Sequence[Any], *, world: int, timeout: float):
        from ckptconf.harness.launched import WorldLost

        def call(*step):
            return self.world.run(*step, size=world, timeout=timeout)

        try:
            return _outcomes(call, backend, fn, args, world)
        except WorldLost as exc:  # a hang of this test's: not shrunk; the session then stops
            raise RanksLost(f"the launched world is lost: {exc}", [], hung=True) from None

    def run_fresh(self, backend, fn, args: Sequence[Any], *, world: int, timeout: float):
        return PoolRanks(self.device).run_fresh(backend, fn, args, world=world, timeout=timeout)


def _read_token(path: str) -> tuple[str, str]:
    """On a rank: this host's name and what the token file at ``path`` holds (or why not);
    the rank also writes, renames and removes a file of its own there."""
    import torch.distributed as dist

    host = socket.gethostname()
    try:
        token = Path(path).read_text()
    except OSError as exc:
        return host, f"cannot read it: {exc}"
    rank = dist.get_rank() if dist.is_initialized() else 0
    mine = Path(path).with_name(f".ckptconf-rank{rank}")
    try:
        mine.with_suffix(".tmp").write_text(token)
        mine.with_suffix(".tmp").replace(mine)
        mine.unlink()
    except OSError as exc:
        return host, f"cannot write there: {exc}"
    return host, token


def shared_folder(world, root: str | None) -> Path:
    """The folder the run's checkpoints go under (``root``, else a new temporary folder),
    checked to be the same folder on every launched rank: rank 0 writes a token file there,
    every rank must read it back and write, rename and remove a file of its own. Raises
    ``pytest.UsageError`` naming the ranks that cannot."""
    import tempfile

    folder = (
        Path(root) / f"ckptconf-{uuid.uuid4().hex[:12]}"
        if root
        else Path(tempfile.mkdtemp(prefix="ckptconf-spmd-"))
    )
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    path = folder / ".ckptconf-token"
    path.write_text(token)
    from ckptconf.harness import WorldError

    try:
        seen = world.run(_read_token, str(path), size=world.size, timeout=120)
    except WorldError as exc:
        raise pytest.UsageError(
            f"checking the checkpoint folder {folder} on every rank failed: {exc}"
        ) from None
    blind = [f"rank {r} on {host}: {got}" for r, (host, got) in enumerate(seen) if got != token]
    if blind:
        raise pytest.UsageError(
            f"the checkpoint folder {folder} is not the same folder on every rank ("
            + "; ".join(blind)
            + "). Give --ckpt-dir (ckptconf run --dir) a folder on storage every node sees."
        )
    path.unlink()
    return folder
