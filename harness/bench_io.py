"""Benchmark of checkpoint I/O in one process: the reference, torch DCP and raw file I/O.

The state is ``count`` float32 tensors of ``total`` bytes together. Each round saves it with
torch DCP (``FileSystemWriter``, default options), with the reference (``ckptconf.reference.save``)
and as raw bytes (one file, written sequentially, fsynced: what any checkpoint must at least
do), then loads each back into destination tensors allocated beforehand. Rounds interleave
the three so that a machine's drift affects all alike; the best round of each is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass

__all__ = ["IoBench", "bench_io", "default_folder"]


@dataclass
class IoBench:
    """Best seconds of a save and a load of ``total`` bytes, per implementation."""

    total: int
    count: int
    save: dict[str, float]
    load: dict[str, float]

    def gib_per_s(self, seconds: float) -> float:
        return self.total / seconds / 2**30


def default_folder() -> str:
    """``/dev/shm`` where it exists (memory: the figures show the software, not a disk)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def _state(total: int, count: int):
    import torch

    per = max(1, total // count // 4)
    return {f"t{i}": torch.full((per,), float(i), dtype=torch.float32) for i in range(count)}


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


def bench_io(
    total: int = 256 << 20, count: int = 64, rounds: int = 3, folder: str | None = None
) -> IoBench:
    """Save and load ``total`` bytes in ``count`` tensors with each implementation."""
    import ckptconf.reference as ref
    import torch.distributed.checkpoint as dcp

    state = _state(total, count)
    total = sum(t.numel() * 4 for t in state.values())
    destination = {k: v.clone().zero_() for k, v in state.items()}
    root = tempfile.mkdtemp(prefix="ckptconf-bench-", dir=folder or default_folder())
    saves = {
        "raw": lambda p: _raw_save(state, p),
        "dcp": lambda p: dcp.save(state, storage_writer=dcp.FileSystemWriter(p), no_dist=True),
        "reference": lambda p: ref.save(state, p),
    }
    loads = {
        "raw": lambda p: _raw_load(destination, p),
        "dcp": lambda p: dcp.load(
            destination, storage_reader=dcp.FileSystemReader(p), no_dist=True
        ),
        "reference": lambda p: ref.load(destination, p),
    }
    best_save = dict.fromkeys(saves, float("inf"))
    best_load = dict.fromkeys(loads, float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP's "no process group" notice
        try:
            _rounds(rounds, root, saves, loads, best_save, best_load, state, destination)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return IoBench(total, count, best_save, best_load)


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
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
