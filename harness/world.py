"""Warm rank pools: N processes with a process group, started once, reused by every call.

``World(size=2, device="cpu").run(fn, *args)`` runs ``fn`` on every rank and returns
one result per rank. Each call ends with a barrier, also after ``fn`` raised, so that a
rank left waiting in a collective meets its partner, and unpickles a fresh ``fn``; the
process group is reused, nothing else is shared between calls on purpose.
A rank's exception comes back as a :class:`RankError` with its traceback and what the
rank printed; a call past its timeout dumps every rank's Python stack (faulthandler)
into a :class:`WorldTimeout`, and a rank that dies is reported with its exit code. In
both cases the pool is killed and the next call starts a fresh one.

Device modes: ``cpu`` (gloo), ``cuda`` (NCCL, one GPU per rank), ``cuda-shared``
(several ranks on GPU 0, gloo for the control plane; tensor collectives on CUDA
tensors over gloo hang, so check values through local shards in this mode).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import faulthandler
import multiprocessing as mp
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .errors import RankError, WorldError, WorldTimeout, results_of

__all__ = [
    "TIMINGS",
    "Timings",
    "World",
    "DEVICE_MODES",
    "get_world",
    "shutdown_all",
    "device_available",
    "per_group",
    "preload",
    "rank_context",
    "rank_device",
    "start_forkserver",
]

DEVICE_MODES = ("cpu", "cuda", "cuda-shared")


@dataclass
class Timings:
    """Where this process's worlds spent their time (seconds): pool starts, and calls from
    sending one to every rank's reply. ``ckptconf bench suite`` reads :data:`TIMINGS`."""

    starts: int = 0
    start_seconds: float = 0.0
    calls: int = 0
    call_seconds: float = 0.0


TIMINGS = Timings()
"""This process's :class:`Timings`, since it started."""
_STACK_MARKER = "most recent call first"


def device_available(device: str, size: int) -> str | None:
    """``None`` if a world of ``size`` ranks can run in ``device`` mode here, else why not."""
    if device not in DEVICE_MODES:
        return f"unknown device mode {device!r}; expected one of {DEVICE_MODES}"
    if device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return "CUDA is not available"
    if device == "cuda" and torch.cuda.device_count() < size:
        return f"cuda mode needs {size} GPUs, found {torch.cuda.device_count()}"
    return None


def rank_device():
    """The torch device this rank computes on in the current world."""
    import torch

    mode = os.environ.get("CKPTCONF_DEVICE_MODE", "cpu")
    if mode == "cpu":
        return torch.device("cpu")
    if mode == "cuda":
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device("cuda", 0)


_GROUP_OWNER = object()


def per_group(cache: dict) -> dict:
    """``cache``, emptied first if the default process group changed since it was filled.

    For a rank's cache of sub-groups and meshes: they belong to the default group they were
    made from. A warm pool keeps one group per process, but a launched world
    (:mod:`.launched`) makes a new one when a step's size changes, and groups of the old
    one are dead (using them hangs). Every rank calls it at the same point of a step.
    """
    import torch.distributed as dist

    current = dist.group.WORLD if dist.is_initialized() else None
    if cache.get(_GROUP_OWNER) is not current:
        cache.clear()
        cache[_GROUP_OWNER] = current
    return cache


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _die_with_controller(watch) -> None:
    """Kill this rank once the controller's end of ``watch`` is closed (the controller exited
    or died, or closed the world), whatever the rank's main thread is stuck in.

    Not PR_SET_PDEATHSIG alone: a forkserver's rank is the forkserver's child, and each rank
    holds the controller's forkserver-alive pipe, so the forkserver outlives a controller
    while any rank is stuck in a collective.
    """
    with contextlib.suppress(EOFError, OSError):
        watch.recv()
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PRELOAD = [
    "torch",
    "torch.distributed",
    "torch.distributed.checkpoint",
    "torch.distributed.tensor",
    # distribute_tensor imports dynamo on first use: 1.3 s in every fresh rank otherwise
    "torch._dynamo",
    "ckptconf.harness.world",
]
"""What the forkserver imports once, so that each rank it forks starts without importing torch
(about 3 CPU-seconds a rank otherwise)."""


def preload(*modules: str) -> None:
    """Have the forkserver import ``modules`` too (the code the ranks will run), so that no rank
    imports them itself. Effective only before this process starts its first world."""
    _PRELOAD.extend(m for m in modules if m not in _PRELOAD)


def start_forkserver() -> None:
    """Start this process's forkserver now, if ranks start from one: it imports what
    :func:`preload` named in its own process while this one goes on, so the first world's start
    does not wait for those imports (about 3 CPU-seconds: torch, the suites). Call it after
    every :func:`preload`; no effect once a forkserver runs, or where ranks are spawned."""
    if rank_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    forkserver.ensure_running()


def rank_context(method: str | None = None):
    """The multiprocessing context ranks start from: ``method`` if given (``"spawn"`` or
    ``"forkserver"``), else ``forkserver`` where there is one (Linux, macOS), preloaded with
    torch, else ``spawn``.

    Never ``fork``: the controller may hold threads and a CUDA context. A forked rank
    re-imports ``__main__`` as a spawned one does, so scripts need the usual
    ``if __name__ == "__main__"`` guard either way.
    """
    if method not in (None, "spawn", "forkserver"):
        raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {method!r}")
    if method == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # no effect once a forkserver of this process runs
    return ctx


def _worker(
    rank: int, size: int, device: str, store: str, conn, log_path: str, parent: int, watch
) -> None:
    _die_with_parent()
    if not _alive(parent):  # the controller died before this rank started
        os._exit(1)
    threading.Thread(
        target=_die_with_controller, args=(watch,), name="ckptconf-watch", daemon=True
    ).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the controller handles Ctrl-C and stops us
    log = open(log_path, "a+", buffering=1)  # noqa: SIM115 - lives as long as the process
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    faulthandler.register(signal.SIGUSR1, file=log, all_threads=True)
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), CKPTCONF_DEVICE_MODE=device
    )
    try:
        import torch
        import torch.distributed as dist

        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(rank)
        elif device == "cuda-shared":
            torch.cuda.set_device(0)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=size)
        conn.send(("ready", rank))
    except BaseException as exc:  # noqa: BLE001
        conn.send(("failed", RankError.of(rank, exc)))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "stop":
            break
        _, call_id, payload = message
        log.flush()
        start = os.lseek(log.fileno(), 0, os.SEEK_END)
        ok, value = True, None
        try:
            # no barrier first: the controller sent this call only after every rank answered
            # the last one, so the ranks are in step already
            fn, args, kwargs = pickle.loads(payload)
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the controller
            ok, value = (
                False,
                RankError.of(rank, exc),
            )
        try:
            dist.barrier()
        except BaseException as exc:  # noqa: BLE001
            if ok:
                ok, value = (
                    False,
                    RankError.of(rank, exc),
                )
        sys.stdout.flush()
        # from the open descriptor, not the path: the log may have been removed or replaced
        end = os.lseek(log.fileno(), 0, os.SEEK_END)
        output = os.pread(log.fileno(), end - start, start).decode(errors="replace")
        try:
            conn.send((call_id, ok, value, output))
        except Exception as exc:  # noqa: BLE001 - the result did not pickle
            conn.send(
                (
                    call_id,
                    False,
                    RankError(rank, type(exc).__qualname__, f"result not picklable: {exc}", ""),
                    output,
                )
            )
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


class World:
    """A pool of ``size`` rank processes in one ``device`` mode, started on first use."""

    def __init__(
        self,
        size: int,
        device: str = "cpu",
        *,
        start_timeout: float = 180.0,
        start_method: str | None = None,
    ):
        if size < 1:
            raise ValueError(f"a world needs at least one rank, got {size}")
        self.start_method = start_method
        rank_context(start_method)  # a wrong name fails here, not at the first run
        reason = device_available(device, size)
        if reason is not None and device not in DEVICE_MODES:
            raise ValueError(reason)
        self.size, self.device, self.start_timeout = size, device, start_timeout
        self.restarts = -1  # becomes 0 at the first start
        self._procs: list = []
        self._conns: list = []
        self._watch: Any = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._call_id = 0
        self._call_log_start: list[int] | None = None

    def __repr__(self) -> str:
        return f"World(size={self.size}, device={self.device!r}, alive={self.alive})"

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """Whether the rank processes are running."""
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    @property
    def pids(self) -> list[int]:
        """Process ids of the ranks (empty when not started)."""
        return [p.pid for p in self._procs]

    def _logs(self) -> list[str]:
        assert self._tmp is not None
        return [os.path.join(self._tmp.name, f"rank{r}.log") for r in range(self.size)]

    def start(self) -> None:
        """Start the ranks and their process group (done by the first ``run``)."""
        if self.alive:
            return
        self.close()
        reason = device_available(self.device, self.size)
        if reason is not None:
            raise RuntimeError(f"cannot start a {self.device} world of {self.size}: {reason}")
        began = time.perf_counter()
        ctx = rank_context(self.start_method)
        self._tmp = tempfile.TemporaryDirectory(prefix="ckptconf-world-")
        store = os.path.join(self._tmp.name, "store")
        # never written: the ranks stop themselves when the controller's end closes
        watch, self._watch = ctx.Pipe(duplex=False)
        for rank, log in enumerate(self._logs()):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(rank, self.size, self.device, store, child_end, log, os.getpid(), watch),
                # not daemonic: a daemonic process may not start children, and backends do
                # (async writer processes, managers, coordinators). Ranks still die with the
                # controller: PR_SET_PDEATHSIG, and shutdown_all at exit (before
                # multiprocessing joins non-daemonic children: atexit runs it first).
                daemon=False,
                name=f"ckptconf-rank{rank}",
            )
            proc.start()
            child_end.close()
            self._procs.append(proc)
            self._conns.append(parent_end)
        watch.close()
        _LIVE.add(self)
        self._call_log_start = None
        self.restarts += 1
        deadline = time.monotonic() + self.start_timeout
        waiting = set(range(self.size))
        while waiting:
            replies = self._collect(waiting, deadline, what="start")
            for rank, (status, detail) in replies.items():
                if status == "failed":
                    self.close()
                    raise WorldError([detail], {})
                waiting.discard(rank)
        TIMINGS.starts += 1
        TIMINGS.start_seconds += time.perf_counter() - began

    def run(
        self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0, **kwargs: Any
    ) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every rank; return the results in rank order.

        Raises :class:`WorldError` naming every rank that raised (the pool stays up), or
        :class:`WorldTimeout` / :class:`WorldError` after a hang or a dead rank (the pool
        is killed; the next call restarts it).
        """
        payload = pickle.dumps((fn, args, kwargs))
        self.start()
        began = time.perf_counter()
        self._call_id += 1
        call_id = self._call_id
        # a rank killed before it opened its log has none: its death is reported below
        self._call_log_start = [
            os.path.getsize(p) if os.path.exists(p) else 0 for p in self._logs()
        ]
        try:
            for conn in self._conns:
                conn.send(("call", call_id, payload))
            replies = self._collect(
                set(range(self.size)), time.monotonic() + timeout, what=f"call of {_name(fn)}"
            )
        except KeyboardInterrupt:  # Ctrl-C: the ranks may be stuck in the call; kill them now
            self.close(grace=0)
            raise
        finally:
            TIMINGS.calls += 1
            TIMINGS.call_seconds += time.perf_counter() - began
        for rank, (reply_id, *_) in replies.items():
            assert reply_id == call_id, f"rank {rank} answered call {reply_id}, expected {call_id}"
        return results_of({rank: tuple(reply[1:]) for rank, reply in replies.items()}, self.size)

    def _collect(self, waiting: set[int], deadline: float, *, what: str) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        waiting = set(waiting)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._abort(
                    WorldTimeout, f"{what} did not finish within its timeout", sorted(waiting)
                )
            sentinels = {self._procs[r].sentinel: r for r in waiting}
            conns = {self._conns[r]: r for r in waiting}
            for ready in wait(list(conns) + list(sentinels), timeout=remaining):
                rank = conns.get(ready, sentinels.get(ready))
                if rank not in waiting:
                    continue
                if ready in conns:
                    try:
                        replies[rank] = ready.recv()
                        waiting.discard(rank)
                        continue
                    except (EOFError, OSError):
                        pass
                try:
                    if self._conns[rank].poll():  # exited after sending its reply
                        replies[rank] = self._conns[rank].recv()
                        waiting.discard(rank)
                        continue
                except (EOFError, OSError):
                    pass
                self._procs[rank].join(timeout=5)
                code = self._procs[rank].exitcode
                raise self._abort(
                    WorldError,
                    f"rank {rank} died during {what} ({_describe_exit(code)})",
                    sorted(waiting),
                    dead=rank,
                )
        return replies

    def _abort(
        self, kind: type[WorldError], reason: str, stuck: list[int], dead: int | None = None
    ) -> WorldError:
        """Dump the stacks of the ranks still running, kill the pool, build the error."""
        logs = self._logs()
        sizes = {r: os.path.getsize(p) if os.path.exists(p) else 0 for r, p in enumerate(logs)}
        signalled = []
        for rank in stuck:
            proc = self._procs[rank]
            if rank != dead and proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGUSR1)
                    signalled.append(rank)
                except ProcessLookupError:
                    pass
        for rank in signalled:
            _wait_for_text(logs[rank], sizes[rank], _STACK_MARKER)
        output = {}
        starts = getattr(self, "_call_log_start", None) or [0] * self.size
        for rank, path in enumerate(logs):
            if os.path.exists(path):
                output[rank] = (
                    Path(path).read_bytes()[starts[rank] :].decode(errors="replace")[-8000:]
                )
        errors = []
        for rank in stuck:
            if rank == dead:
                errors.append(RankError(rank, "RankDied", reason, output.get(rank, "")))
            else:
                errors.append(
                    RankError(
                        rank,
                        "Stuck",
                        f"{reason}; its stack when stopped is below",
                        output.get(rank, ""),
                    )
                )
        self.close()
        return kind(errors, {}, None, reason=reason)

    def close(self, grace: float = 2.0) -> None:
        """Stop the ranks (kill any that have not stopped within ``grace`` seconds each) and
        forget them."""
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop",))
        for proc in self._procs:
            proc.join(timeout=grace)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._procs, self._conns = [], []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        _LIVE.discard(self)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _wait_for_text(path: str, start: int, marker: str, limit: float = 5.0) -> None:
    """Wait until ``marker`` appears in ``path`` after byte ``start`` (faulthandler output); at
    once if there is no such file (a rank that died before opening its log has no stack)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with open(path, "rb") as file:
                file.seek(start)
                if marker.encode() in file.read():
                    return
        except FileNotFoundError:
            return
        time.sleep(0.02)


_LIVE: set[World] = set()
_CACHE: dict[tuple[int, str], World] = {}


def get_world(size: int, device: str = "cpu") -> World:
    """The process-wide warm world of this size and device mode."""
    key = (size, device)
    if key not in _CACHE:
        _CACHE[key] = World(size, device)
    return _CACHE[key]


def shutdown_all() -> None:
    """Stop every world this process started."""
    for world in list(_LIVE):
        world.close()
    _CACHE.clear()


atexit.register(shutdown_all)
