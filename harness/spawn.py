"""Fresh processes per call: start N ranks with a gloo process group, run one function, stop.

The slow tier (a process start and a process group per call), for code that must
own its processes, such as tests that kill a rank. Results come back per rank; a
rank's exception comes back as :class:`RankError` with its traceback; a call past its
timeout dumps every rank's Python stack (faulthandler) into the error.
"""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RankError", "WorldError", "WorldTimeout", "run_fresh_world"]


@dataclass
class RankError:
    """What one rank raised: exception type, message and formatted traceback."""

    rank: int
    type_name: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"rank {self.rank}: {self.type_name}: {self.message}"


class WorldError(Exception):
    """One or more ranks failed; ``errors`` has each failing rank's exception and traceback."""

    def __init__(
        self,
        errors: list[RankError],
        output: dict[int, str] | None = None,
        results: list[Any] | None = None,
    ):
        self.errors = errors
        self.output = output or {}
        self.results = results
        lines = [f"{len(errors)} rank(s) failed: " + ", ".join(str(e.rank) for e in errors)]
        for error in errors:
            lines.append(
                f"--- rank {error.rank}: {error.type_name}: {error.message}\n{error.traceback.rstrip()}"
            )
        for rank, text in sorted(self.output.items()):
            if text.strip():
                lines.append(f"--- output of rank {rank} ---\n{text.rstrip()[-4000:]}")
        super().__init__("\n".join(lines))

    @property
    def failed_ranks(self) -> list[int]:
        """Ranks that raised, ascending."""
        return sorted(e.rank for e in self.errors)


class WorldTimeout(WorldError):
    """The call did not finish in time; the message holds every rank's stacks."""


def _worker(
    rank: int, world_size: int, store_path: str, log_path: str, fn_bytes: bytes, results: Any
) -> None:
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)
    try:
        import torch.distributed as dist

        fn, args, kwargs = pickle.loads(fn_bytes)
        dist.init_process_group(
            "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
        )
        try:
            value = fn(*args, **kwargs)
            results.put((rank, True, pickle.dumps(value)))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the controller
        results.put(
            (
                rank,
                False,
                pickle.dumps(
                    RankError(rank, type(exc).__qualname__, str(exc), traceback.format_exc())
                ),
            )
        )


def run_fresh_world(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` new ranks; return each rank's result.

    ``fn`` must be importable by name (module-level) so that spawned processes find it.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="ckptconf-world-") as tmp:
        store = os.path.join(tmp, "store")
        logs = [os.path.join(tmp, f"rank{r}.log") for r in range(world_size)]
        results = ctx.Queue()
        payload = pickle.dumps((fn, args, kwargs))
        procs = [
            ctx.Process(
                target=_worker, args=(r, world_size, store, logs[r], payload, results), daemon=True
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        values: dict[int, Any] = {}
        errors: list[RankError] = []
        deadline = time.monotonic() + timeout
        try:
            while len(values) + len(errors) < world_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _timeout(procs, logs, timeout)
                try:
                    rank, ok, data = results.get(timeout=min(remaining, 0.5))
                except queue.Empty:
                    reported = set(values) | {e.rank for e in errors}
                    for r, p in enumerate(procs):
                        if p.exitcode is not None and r not in reported:
                            # a rank that exited has flushed its message, if it sent one
                            try:
                                rank, ok, data = results.get(timeout=1.0)
                            except queue.Empty:
                                errors.append(
                                    RankError(
                                        r, "ProcessExit", f"rank exited with code {p.exitcode}", ""
                                    )
                                )
                                continue
                            _record(values, errors, rank, ok, data)
                    continue
                _record(values, errors, rank, ok, data)
            for p in procs:
                p.join(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        if errors:
            raise WorldError(
                sorted(errors, key=lambda e: e.rank),
                _read_logs(logs),
                [values.get(r) for r in range(world_size)],
            )
        return [values[r] for r in range(world_size)]


def _record(
    values: dict[int, Any], errors: list[RankError], rank: int, ok: bool, data: bytes
) -> None:
    if ok:
        values[rank] = pickle.loads(data)
    else:
        errors.append(pickle.loads(data))


def _read_logs(logs: list[str]) -> dict[int, str]:
    return {
        r: Path(p).read_text(errors="replace") if os.path.exists(p) else ""
        for r, p in enumerate(logs)
    }


def _timeout(procs, logs: list[str], timeout: float) -> WorldTimeout:
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGUSR1)
    # faulthandler writes synchronously in the signal handler; wait until each log stops growing
    for p, path in zip(procs, logs):
        if p.is_alive():
            _wait_for_stack(path)
    output = _read_logs(logs)
    errors = [
        RankError(r, "Timeout", f"still running after {timeout:.1f}s", output[r][-8000:])
        for r, p in enumerate(procs)
        if p.is_alive()
    ]
    return WorldTimeout(errors)


def _wait_for_stack(path: str, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        text = Path(path).read_text(errors="replace") if os.path.exists(path) else ""
        if "most recent call first" in text:
            return
        time.sleep(0.05)
