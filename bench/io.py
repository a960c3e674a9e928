"""Benchmark of checkpoint I/O in one process: the reference, torch DCP and raw file I/O.

The state is ``count`` float32 tensors of ``total`` bytes together. Each round saves it with
torch DCP (``FileSystemWriter``, default options and 4 threads), with the reference (``ckptconf.reference.save``)
and as raw bytes (one file, written sequentially, fsynced: what any checkpoint must at least
do), then loads each back into destination tensors allocated beforehand. Rounds interleave
the three so that a machine's drift affects all alike; the best round of each is kept.

Peak memory is measured apart, each implementation's save and its load in a process of its
own (forked from the harness's forkserver, which has torch imported): the process does a tiny
save and load first (lazy imports, thread pools), builds the state (a save) or the
destination (a load, every page written), takes ``ru_maxrss`` as the baseline, saves or loads,
and takes it again. The growth of this high-water mark is what the save or load held beyond
the state: a staging copy, a read buffer. The load's process loads what the save's wrote.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

__all__ = ["IoBench", "IMPLEMENTATIONS", "TIMED", "bench_io", "default_folder", "peak_rss_growth"]

IMPLEMENTATIONS = ("raw", "dcp", "reference")
"""What peak memory is measured for."""
TIMED = ("raw", "dcp", "dcp-4", "reference", "reference-unverified")
"""What is timed: ``dcp-4`` is DCP's ``FileSystemWriter(thread_count=4)`` (its reader has no
thread count, so its load is DCP's default load of that checkpoint); ``reference`` is
``ckptconf.reference`` with its defaults (replicas verified: a checksum of every item while
planning), ``reference-unverified`` the same with ``ReferenceSavePlanner(verify_replicas=False)``,
to show what the default check costs."""


@dataclass
class IoBench:
    """Best seconds of a save and a load of ``total`` bytes, per implementation."""

    total: int
    count: int
    save: dict[str, float]
    load: dict[str, float]
    rss: dict[str, dict[str, int]] = field(default_factory=dict)
    """Peak RSS growth in bytes over the state, per step (``"save"``, ``"load"``) and
    implementation, each measured in a process of its own; empty if not measured."""

    def gib_per_s(self, seconds: float) -> float:
        return self.total / seconds / 2**30

    def rss_ratio(self, step: str, name: str) -> float:
        """Peak RSS growth of ``name``'s ``step`` over the state's bytes."""
        return self.rss[step][name] / self.total


def default_folder(room: int = 1 << 30) -> str:
    """``/dev/shm`` where it is a folder in memory with ``room`` bytes free (the figures show
    the software, not a disk), else the temporary folder (see
    :func:`ckptconf.conformance.options.memory_folder`)."""
    from ckptconf.conformance.options import memory_folder

    return memory_folder(room=room) or tempfile.gettempdir()


def _state(total: int, count: int):
    import torch

    per = max(1, total // count // 4)
    return {f"t{i}": torch.full((per,), float(i), dtype=torch.float32) for i in range(count)}


def _destination(total: int, count: int):
    """Tensors to load the state into, every page written (resident before the load)."""
    return {k: v.fill_(-1.0) for k, v in _state(total, count).items()}


def _raw_save(state, path: str) -> None:
    with open(path, "wb") as file:
        for tensor in state.values():
            file.write(memoryview(tensor.numpy()).cast("B"))
        file.flush()
        os.fsync(file.fileno())


def _raw_load(state, path: str) -> None:
    with open(path, "rb", buffering=0) as file:
        for tensor in state.values():
            file.readinto(memoryview(tensor.numpy()).cast("B"))


def _save_with(name: str, state, path: str) -> None:
    import ckptconf.reference as ref
    import torch.distributed.checkpoint as dcp
    from ckptconf.reference.compat import no_dist

    if name == "raw":
        _raw_save(state, path)
    elif name in ("dcp", "dcp-4"):
        threads = 4 if name == "dcp-4" else 1
        writer = dcp.FileSystemWriter(path, thread_count=threads)
        dcp.save(state, storage_writer=writer, **no_dist(dcp.save))
    elif name == "reference-unverified":
        ref.save(state, path, planner=ref.ReferenceSavePlanner(verify_replicas=False))
    else:
        ref.save(state, path)


def _load_with(name: str, destination, path: str) -> None:
    import ckptconf.reference as ref
    import torch.distributed.checkpoint as dcp
    from ckptconf.reference.compat import no_dist

    if name == "raw":
        _raw_load(destination, path)
    elif name in ("dcp", "dcp-4"):
        dcp.load(destination, storage_reader=dcp.FileSystemReader(path), **no_dist(dcp.load))
    else:  # the replica check is a save's: both reference checkpoints load alike
        ref.load(destination, path)


def _max_rss() -> int:
    """This process's peak resident set size so far, in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _measure_in_child(step: str, name: str, total: int, count: int, path: str) -> int:
    """In a fresh process: the growth of peak RSS over the built state during ``name``'s
    ``step`` of ``path`` (a load checks the values it got)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warm = f"{path}-warm-up"
        tiny = _state(4096, 2)
        _save_with(name, tiny, warm)
        _load_with(name, {k: v.clone() for k, v in tiny.items()}, warm)
        _remove(warm)
        if step == "save":
            state = _state(total, count)
            baseline = _max_rss()
            _save_with(name, state, path)
            return _max_rss() - baseline
        destination = _destination(total, count)
        baseline = _max_rss()
        _load_with(name, destination, path)
        growth = _max_rss() - baseline
    expected = _state(total, count)
    if not all(destination[k].equal(expected[k]) for k in expected):
        raise AssertionError(f"{name}: the load did not give back the saved values")
    return growth


def peak_rss_growth(
    total: int, count: int, folder: str, names: tuple[str, ...] = IMPLEMENTATIONS
) -> dict[str, dict[str, int]]:
    """Peak RSS growth in bytes of each implementation's save, then load, of ``total`` bytes
    in ``count`` tensors, each step in a process of its own, writing in ``folder``."""
    from concurrent.futures import ProcessPoolExecutor

    from ckptconf.harness.world import rank_context

    out: dict[str, dict[str, int]] = {"save": {}, "load": {}}
    for name in names:
        path = os.path.join(folder, f"{name}-rss")
        try:
            for step in ("save", "load"):
                with ProcessPoolExecutor(1, mp_context=rank_context()) as pool:  # a fresh process
                    out[step][name] = pool.submit(
                        _measure_in_child, step, name, total, count, path
                    ).result()
        finally:
            _remove(path)
    return out


def bench_io(
    total: int = 256 << 20,
    count: int = 64,
    rounds: int = 3,
    folder: str | None = None,
    *,
    rss: bool = True,
) -> IoBench:
    """Save and load ``total`` bytes in ``count`` tensors with each implementation; with
    ``rss``, also each one's peak RSS growth (:func:`peak_rss_growth`)."""
    root = tempfile.mkdtemp(prefix="ckptconf-bench-", dir=folder or default_folder(2 * total))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP's "no process group" notice
        try:
            total, best_save, best_load = _timed(total, count, rounds, root)
            growth = peak_rss_growth(total, count, root) if rss else {}
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return IoBench(total, count, best_save, best_load, growth)


def _timed(total: int, count: int, rounds: int, root: str):
    """The state's bytes and each implementation's best save and load seconds (the state is
    freed on return, before any process measuring memory starts)."""
    state = _state(total, count)
    total = sum(t.numel() * 4 for t in state.values())
    destination = {k: v.clone().zero_() for k, v in state.items()}
    saves = {n: lambda p, n=n: _save_with(n, state, p) for n in TIMED}
    loads = {n: lambda p, n=n: _load_with(n, destination, p) for n in TIMED}
    best_save = dict.fromkeys(saves, float("inf"))
    best_load = dict.fromkeys(loads, float("inf"))
    _rounds(rounds, root, saves, loads, best_save, best_load, state, destination)
    return total, best_save, best_load


def _rounds(rounds, root, saves, loads, best_save, best_load, state, destination) -> None:
    """Run every implementation once per round, keeping each one's best save and load."""
    for number in range(rounds):
        for name in saves:
            path = os.path.join(root, f"{name}-{number}")
            start = time.perf_counter()
            saves[name](path)
            best_save[name] = min(best_save[name], time.perf_counter() - start)
            for tensor in destination.values():
                tensor.zero_()
            start = time.perf_counter()
            loads[name](path)
            best_load[name] = min(best_load[name], time.perf_counter() - start)
            if not all(destination[k].equal(state[k]) for k in state):
                raise AssertionError(f"{name}: the load did not give back the saved values")
            _remove(path)
