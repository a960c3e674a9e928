"""What the ranks of the lifecycle suite run: each step of a run with the backend held for it.

A training job builds its checkpoint machinery once and keeps it (clients, async queues,
persistent workers, caches, cached plans). So each rank process keeps the backend it got
at a run's first step, by the run's id, and every later step of that run uses it; the
run's last step (:func:`release`) drops it. An async save started in one step is waited
for in a later one; a load can be paused after reading the metadata while another step
saves (:func:`start_paused_load`, :func:`resume_load`).

Background saves and paused loads each use a process group of their own per process
(gloo), as a job's async checkpointing does (torchtitan makes one): the steps running
meanwhile use the default group.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
from ckptconf.harness.forwarding import ForwardingStorageReader
from ckptconf.harness.world import per_group

from ...backend import Backend
from ...kit.injection import FaultyStorageWriter
from ...kit.job_state import job_mismatches, job_state
from ...kit.jobs import PerRankCase
from ...kit.running import built_anew
from ...kit.values import call_outcome

__all__ = [
    "failing_save",
    "killed_save",
    "load",
    "release",
    "resume_load",
    "save",
    "start_async_save",
    "start_paused_load",
    "wait",
]

_PAUSE_LIMIT = 30.0
"""Seconds a paused load waits to be resumed (or a rank waits for its load to pause)."""


@dataclass
class _Held:
    backend: Backend
    pending: dict[int, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    """Async saves started and not yet waited for, by slot: (future, the state saved)."""
    paused: _PausedLoad | None = None


_HELD: dict[str, _Held] = {}
_GROUPS: dict[str, Any] = {}


def _held(backend: Backend, run: str) -> _Held:
    """The backend this process holds for ``run``: built anew at the run's first step here, so
    that a run (and its printed reproduction, in a new process) does not depend on what earlier
    runs left in the backend the process keeps between steps."""
    if run not in _HELD:
        _HELD[run] = _Held(built_anew(backend))
    return _HELD[run]


def _side_group(use: str):
    """This process's gloo group for ``use`` (``"async-<slot>"``: the background save to a
    slot; ``"paused"``: a paused load), each other than the default group and than each
    other, so that steps running at once never interleave collectives on one group (DCP's
    async_save asks for that). Every rank makes it on first use (collective)."""
    groups = per_group(_GROUPS)
    if use not in groups:
        groups[use] = dist.new_group(backend="gloo")
    return groups[use]


def save(backend: Backend, run: str, case: PerRankCase, path: str) -> None:
    """Save this rank's keys of ``case``."""
    _held(backend, run).backend.run_save(job_state(case, loading=False), path)


def start_async_save(backend: Backend, run: str, slot: int, case: PerRankCase, path: str) -> None:
    """Start an async save of ``case``; returns once async_save returned (the state staged)."""
    held = _held(backend, run)
    state = job_state(case, loading=False)
    group = _side_group(f"async-{slot}")  # two saves in flight never share a group
    future = held.backend.run_async_save(state, path, process_group=group)
    held.pending[slot] = (future, state)


def wait(backend: Backend, run: str, slot: int) -> None:
    """Wait for the async save to ``slot`` started by :func:`start_async_save`."""
    held = _held(backend, run)
    if slot not in held.pending:
        raise RuntimeError(
            f"no async save to slot {slot} is pending in this process (the rank's pool was "
            "restarted since it started?)"
        )
    future, _ = held.pending.pop(slot)
    _result(future)


def _result(future: Any) -> Any:
    if hasattr(future, "result"):
        return future.result()
    return future.wait()


def load(
    backend: Backend, run: str, case: PerRankCase, path: str, others: list[PerRankCase]
) -> dict[str, Any]:
    """Load ``case``'s load side into blank values: ``{"raised": ...}`` and, if it returned,
    ``mismatches`` against ``case`` and ``others`` (a list per case of the same keys)."""
    state = job_state(case, loading=True)
    outcome = call_outcome(lambda: _held(backend, run).backend.run_load(state, path))
    if not outcome["raised"]:
        outcome["mismatches"] = job_mismatches(case, state)
        outcome["others"] = [job_mismatches(other, state) for other in others]
    return outcome


def failing_save(
    backend: Backend, run: str, case: PerRankCase, path: str, hook: str, fault_rank: int
) -> dict[str, Any]:
    """Save through the held backend's writer failing at ``hook`` on ``fault_rank``: whether
    this rank raised, and whether the fault was injected here."""
    held = _held(backend, run).backend
    writer = FaultyStorageWriter(held.storage_writer(path), hook=hook, rank=fault_rank)
    state = job_state(case, loading=False)
    outcome = call_outcome(lambda: held.run_save(state, path, storage_writer=writer))
    return {**outcome, "fired": writer.fired}


def killed_save(backend: Backend, case: PerRankCase, path: str, rank: int, point: str) -> None:
    """Save through a writer that SIGKILLs ``rank`` at ``point`` (on fresh ranks: nothing held)."""
    from ckptconf.harness.faults import KillingWriter

    writer = KillingWriter(backend.storage_writer(path), rank=rank, point=point)
    backend.run_save(job_state(case, loading=False), path, storage_writer=writer)


class _PausingReader(ForwardingStorageReader):
    """Forwards to ``inner``; ``read_data`` first says it is paused and waits to be resumed."""

    def __init__(self, inner, paused: threading.Event, resumed: threading.Event):
        super().__init__(inner)
        self.paused, self.resumed = paused, resumed

    def read_data(self, plan, planner):
        self.paused.set()
        if not self.resumed.wait(_PAUSE_LIMIT):
            raise TimeoutError(f"the paused load was not resumed within {_PAUSE_LIMIT:g} s")
        return super().read_data(plan, planner)


@dataclass
class _PausedLoad:
    case: PerRankCase
    state: dict[str, Any]
    thread: threading.Thread
    resumed: threading.Event
    outcome: dict[str, Any] = field(default_factory=dict)


def start_paused_load(backend: Backend, run: str, case: PerRankCase, path: str) -> str:
    """Start loading ``case`` on a thread; return once its reader reached ``read_data`` (the
    metadata read, no data yet): ``"paused"``, or ``"finished"`` if the load ended first."""
    held = _held(backend, run)
    if held.paused is not None:  # left by a racing load whose save failed: let it end first
        held.paused.resumed.set()
        held.paused.thread.join(_PAUSE_LIMIT)
        held.paused = None
    state = job_state(case, loading=True)  # on this thread: making meshes is collective
    group = _side_group("paused")
    paused, resumed = threading.Event(), threading.Event()
    reader = _PausingReader(held.backend.storage_reader(path), paused, resumed)
    outcome: dict[str, Any] = {}

    def run_load() -> None:
        outcome.update(
            call_outcome(
                lambda: held.backend.run_load(
                    state, path, process_group=group, storage_reader=reader
                )
            )
        )

    thread = threading.Thread(target=run_load, name="ckptconf-paused-load", daemon=True)
    held.paused = _PausedLoad(case, state, thread, resumed, outcome)
    thread.start()
    deadline = time.monotonic() + _PAUSE_LIMIT
    while not paused.wait(0.05):
        if not thread.is_alive():
            return "finished"
        if time.monotonic() > deadline:
            return "never paused"
    return "paused"


def resume_load(backend: Backend, run: str, others: list[PerRankCase]) -> dict[str, Any]:
    """Let the paused load go on and finish: ``{"raised": ...}`` and, if it returned,
    ``mismatches`` against its case and ``others`` (cases of the same keys)."""
    held = _held(backend, run)
    paused = held.paused
    if paused is None:
        raise RuntimeError("no paused load in this process (its pool was restarted?)")
    held.paused = None
    paused.resumed.set()
    paused.thread.join(_PAUSE_LIMIT)  # within the step's timeout: a stuck load is named
    if paused.thread.is_alive():
        raise TimeoutError("the resumed load did not finish")
    outcome = dict(paused.outcome)
    if not outcome.get("raised", True):
        outcome["mismatches"] = job_mismatches(paused.case, paused.state)
        outcome["others"] = [job_mismatches(other, paused.state) for other in others]
    return outcome


def release(backend: Backend, run: str) -> None:
    """The run's end: drop what this process held for it (async saves left pending are waited
    for first: a job finishes its last save)."""
    held = _HELD.pop(run, None)
    if held is None:
        return
    if held.paused is not None:
        held.paused.resumed.set()
        held.paused.thread.join(_PAUSE_LIMIT)
    for future, _ in held.pending.values():
        _result(future)
