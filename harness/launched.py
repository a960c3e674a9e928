"""The world an external launcher started (torchrun, ``srun torchrun``): every process a rank,
rank 0 also the controller.

Under torchrun every process runs the same command. :func:`launcher_env` reads the
launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Call order::

    rank 0:        world = LaunchedWorld(device)
                   world.run(fn, *args, size=w, timeout=t)   # any number of steps
                   world.close()                              # the other ranks' serve() returns
    other ranks:   serve(device)

Transport: the launcher's TCPStore, keys under ``ckptconf/``. For step ``n`` rank 0 sets
``call/n``; every rank reads it, and ranks ``0..w-1`` run ``fn`` in a default process group
of ``w`` ranks (made anew when ``w`` changes, its rendezvous under ``pg/n``), then a
barrier, as the warm pools do, and answer ``result/n/<rank>``. Rank 0 runs its own part
on a thread, so that it can still time out. A step past its timeout: rank 0 sets
``stack/n``, each rank's watchdog thread answers with its Python stack (faulthandler), and
the step raises :class:`~.errors.WorldTimeout` naming the stuck ranks. The world is then
*suspect*: before the next step every rank must answer a ping, and the process groups are
made anew. A rank that does not answer (still stuck), or rank 0's own part stuck, makes
the world lost: :class:`WorldLost`, and no step runs any more; :meth:`LaunchedWorld.close`
then tells the other ranks to stop and the stuck ones to end their process, so that the
launcher returns. Every group's collectives time out with the step (feature-detected
``_set_pg_timeout``), so a rank left waiting on a stuck one gets an error back.
"""

from __future__ import annotations

import contextlib
import faulthandler
import itertools
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ckptconf.reference.compat import accepts_parameter, set_group_timeouts

from .errors import RankError, WorldTimeout, results_of

__all__ = ["LaunchedWorld", "LauncherEnv", "WorldLost", "launcher_env", "serve"]

_PREFIX = "ckptconf/"
_POLL = timedelta(minutes=10)  # one wait on the store (c10d logs a warning at each timeout)
_PING_TIMEOUT = 60.0
_STACK_TIMEOUT = 10.0
_FIRST_STEP = 600.0  # how long a rank waits for rank 0's first step (its session start)
_GRACE = 10.0  # rank 0's own part: seconds past the deadline (its collectives time out then)


class WorldLost(RuntimeError):
    """A rank of the launched world is stuck for good (or rank 0's own part is): no further
    step can run in this launch."""


@dataclass(frozen=True)
class LauncherEnv:
    """What the launcher told this process."""

    rank: int
    size: int
    local_rank: int
    master_addr: str
    master_port: int
    agent_store: bool
    """Whether the launcher's agent hosts the store (torchrun), so rank 0 is a client too."""


def launcher_env(environ: dict[str, str] | None = None) -> LauncherEnv | None:
    """The launcher's environment, or ``None`` when this process was not started by one
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` all set, as torchrun and
    ``torch.distributed``'s env:// convention do)."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    return LauncherEnv(
        rank=int(env["RANK"]),
        size=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
        master_addr=env["MASTER_ADDR"],
        master_port=int(env["MASTER_PORT"]),
        agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
    )


def _prefix() -> str:
    """Keys of this launch attempt: the launcher's store outlives a restart (``--max-restarts``)."""
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"{_PREFIX}{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def _store(env: LauncherEnv, *, server: bool):
    import torch.distributed as dist

    store = dist.TCPStore(
        env.master_addr,
        env.master_port,
        is_master=server and env.rank == 0 and not env.agent_store,
        timeout=timedelta(seconds=600),
        wait_for_workers=False,
    )
    return dist.PrefixStore(_prefix(), store)


def _wait(store, key: str, deadline: float | None, *, poll: timedelta = _POLL) -> bool:
    """Wait until ``key`` is set (``True``) or ``deadline`` (monotonic) passed (``False``);
    without a deadline, forever, in waits of ``poll``."""
    while True:
        if store.check([key]):
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        step = poll if remaining is None else timedelta(seconds=remaining)
        with contextlib.suppress(Exception):  # the store's wait raises at its timeout
            store.wait([key], step)


class _Rank:
    """One rank's side: its process groups, its steps and its watchdog."""

    def __init__(self, env: LauncherEnv, device: str):
        self.env, self.device = env, device
        # one client per thread that uses it: a TCPStore client's blocking wait holds its socket
        self.store = _store(env, server=True)  # the control channel (the main thread)
        self._group_store = _store(env, server=False)  # process groups (rank 0: its step thread)
        self.group_size: int | None = None
        self.log = None  # serve(): this rank's output, read back per step
        os.environ["CKPTCONF_DEVICE_MODE"] = device
        self._watch_store = _store(env, server=False)
        threading.Thread(target=self._watchdog, name="ckptconf-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """Answer each stack request (``dump/<k>``, naming a step) with this process's stacks."""
        for k in itertools.count(1):
            _wait(self._watch_store, f"dump/{k}", None, poll=timedelta(hours=1))
            request = self._watch_store.get(f"dump/{k}").decode()
            if request.startswith("abort:"):  # the world is lost and this rank stuck in it: end,
                stuck = {int(r) for r in request.removeprefix("abort:").split(",") if r}
                if self.env.rank in stuck and self.env.rank != 0:  # so the launcher can stop
                    os._exit(3)
                continue
            n = int(request)
            with tempfile.TemporaryFile("w+") as file:
                faulthandler.dump_traceback(file=file, all_threads=True)
                file.seek(0)
                text = file.read()
            host = socket.gethostname()
            self._watch_store.set(f"stack/{n}/{self.env.rank}", f"(host {host})\n{text}")

    def groups(self, size: int, generation: int, fresh: bool, timeout: float) -> None:
        """Make the default process group ``size`` ranks wide (ranks ``>= size`` have none);
        anew if ``fresh`` (after a step that failed, its collectives may be out of step).
        Its collectives time out a little after the step's deadline (``_GRACE / 2`` later): the
        step is then seen stuck at its deadline, whatever the load, and a rank left waiting
        gets an error back within rank 0's grace."""
        import torch
        import torch.distributed as dist

        collectives = timeout + _GRACE / 2
        if self.group_size == size and not fresh:
            set_group_timeouts(collectives)  # sub-groups and meshes too: a stuck rank errs
            return
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self.group_size = size
        if self.env.rank >= size:
            return
        backend = "nccl" if self.device == "cuda" else "gloo"
        if self.device == "cuda":
            torch.cuda.set_device(self.env.local_rank)
        options: dict[str, Any] = {}
        if self.device == "cuda" and accepts_parameter(dist.init_process_group, "device_id"):
            options["device_id"] = torch.device("cuda", self.env.local_rank)
        dist.init_process_group(
            backend,
            store=dist.PrefixStore(f"pg/{generation}/", self._group_store),
            rank=self.env.rank,
            world_size=size,
            timeout=timedelta(seconds=collectives),
            **options,
        )

    def execute(self, n: int, size: int, payload: bytes, fresh: bool, timeout: float) -> tuple:
        """Run step ``n``'s function here: ``(ok, value or RankError, output)``."""
        import torch
        import torch.distributed as dist

        rank = self.env.rank

        def error_of(exc: BaseException) -> RankError:
            return RankError.of(rank, exc)

        # as the warm pools' worker does: a barrier after the function, also after it raised,
        # so that every rank's outcome is its own
        ok, value = True, None
        start = self._log_offset()
        try:
            if self.device == "cuda":
                torch.cuda.set_device(self.env.local_rank)
            elif self.device == "cuda-shared":
                torch.cuda.set_device(0)
            self.groups(size, n, fresh, timeout)
            fn, args, kwargs = pickle.loads(payload)
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to rank 0
            ok, value = False, error_of(exc)
        try:
            dist.barrier()
        except BaseException as exc:  # noqa: BLE001
            self.group_size = None  # out of step: every rank makes a new group next step
            if ok:
                ok, value = False, error_of(exc)
        return ok, value, self._output_since(start)

    def capture_output(self) -> None:
        """Send this process's output to a log read back with each step (ranks other than 0:
        rank 0's output is its test's, captured by pytest)."""
        self.log = tempfile.TemporaryFile("a+", buffering=1)  # noqa: SIM115 - the process's
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        sys.stdout = sys.stderr = self.log

    def _log_offset(self) -> int:
        if self.log is None:
            return 0
        self.log.flush()
        return os.lseek(self.log.fileno(), 0, os.SEEK_END)

    def _output_since(self, start: int) -> str:
        if self.log is None:
            return ""
        sys.stdout.flush()
        end = self._log_offset()
        return os.pread(self.log.fileno(), end - start, start).decode(errors="replace")[-8000:]

    def answer(self, n: int, reply: tuple) -> None:
        try:
            data = pickle.dumps(reply)
        except Exception as exc:  # noqa: BLE001 - the result did not pickle
            error = RankError(
                self.env.rank, type(exc).__qualname__, f"result not picklable: {exc}", ""
            )
            data = pickle.dumps((False, error, reply[2]))
        self.store.set(f"result/{n}/{self.env.rank}", data)


def serve(device: str = "cpu") -> None:
    """Run the steps rank 0 sends until it closes the world (ranks other than 0)."""
    env = launcher_env()
    if env is None:
        raise RuntimeError("serve() needs a launcher's environment (RANK, WORLD_SIZE, ...)")
    me = _Rank(env, device)
    me.capture_output()
    for n in itertools.count(1):
        if not _wait(me.store, f"call/{n}", time.monotonic() + _FIRST_STEP if n == 1 else None):
            print(
                f"ckptconf: rank {env.rank} got no step from rank 0 within {_FIRST_STEP:.0f} s "
                "(did rank 0 fail before its session started?); stopping",
                file=sys.__stderr__,
            )
            break
        kind, size, payload, fresh, timeout, paths = pickle.loads(me.store.get(f"call/{n}"))
        # rank 0's import path (pytest puts a test module's folder there): so that what it
        # sends unpickles here, as it does in the pools' forked ranks
        sys.path.extend(p for p in paths if p not in sys.path)
        if kind == "stop":
            break
        if kind == "ping":
            me.store.set(f"result/{n}/{env.rank}", b"pong")
        elif env.rank < size:
            me.answer(n, me.execute(n, size, payload, fresh, timeout))
        else:
            me.groups(size, n, fresh, timeout)
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class LaunchedWorld:
    """Rank 0's side of the launched world: runs steps on the first ``size`` ranks."""

    def __init__(self, device: str = "cpu", *, ping_timeout: float = _PING_TIMEOUT):
        env = launcher_env()
        if env is None:
            raise RuntimeError(
                "LaunchedWorld needs a launcher's environment (RANK, WORLD_SIZE, ...)"
            )
        if env.rank != 0:
            raise RuntimeError(
                f"LaunchedWorld runs on rank 0; this is rank {env.rank} (call serve())"
            )
        self.env, self.device, self.size = env, device, env.size
        self._me = _Rank(env, device)
        self._steps = itertools.count(1)
        self._suspect = False
        self._ping_timeout = ping_timeout
        self._fresh = False  # make the process groups anew at the next step
        self._dumps = 0
        self._stuck: set[int] = set()  # ranks stuck for good: told to end when the world closes
        self.lost: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"LaunchedWorld(size={self.size}, device={self.device!r})"

    def _post(
        self, kind: str, size: int, payload: bytes = b"", fresh: bool = False, timeout: float = 0
    ) -> int:
        n = next(self._steps)
        message = (kind, size, payload, fresh, timeout, list(sys.path))
        self._me.store.set(f"call/{n}", pickle.dumps(message))
        return n

    def _ping(self) -> None:
        n = self._post("ping", self.size)
        deadline = time.monotonic() + self._ping_timeout
        silent = [
            r for r in range(1, self.size) if not _wait(self._me.store, f"result/{n}/{r}", deadline)
        ]
        if silent:
            self._stuck.update(silent)
            self.lost = (
                f"rank(s) {', '.join(map(str, silent))} did not answer within "
                f"{self._ping_timeout:.0f} s after a step timed out: they are still stuck"
            )
            raise WorldLost(self.lost)
        self._suspect = False

    def run(
        self, fn: Callable[..., Any], *args: Any, size: int, timeout: float = 60.0, **kwargs: Any
    ) -> list[Any]:
        """``fn(*args, **kwargs)`` on ranks ``0..size-1``; the results in rank order.

        Raises :class:`~.errors.WorldError` naming every rank that raised,
        :class:`~.errors.WorldTimeout` with the stuck ranks' stacks, or :class:`WorldLost`.
        """
        if self.lost is not None:
            raise WorldLost(self.lost)
        if not 1 <= size <= self.size:
            raise ValueError(f"a step on {size} ranks; the launcher started {self.size}")
        fresh = self._fresh
        if self._suspect:
            self._ping()
            fresh = True
        payload = pickle.dumps((fn, args, kwargs))
        n = self._post("call", size, payload, fresh, timeout)
        self._fresh = True  # unless the step ends cleanly (below)
        mine: dict[str, tuple] = {}
        worker = threading.Thread(
            target=lambda: mine.setdefault(
                "reply", self._me.execute(n, size, payload, fresh, timeout)
            ),
            name="ckptconf-rank0",
            daemon=True,
        )
        worker.start()
        deadline = time.monotonic() + timeout
        replies: dict[int, tuple] = {}
        for r in range(1, size):
            if _wait(self._me.store, f"result/{n}/{r}", deadline):
                replies[r] = pickle.loads(self._me.store.get(f"result/{n}/{r}"))
        worker.join(max(0.0, deadline - time.monotonic()))
        stuck = [r for r in range(size) if r not in replies and (r or worker.is_alive())]
        if stuck:
            self._request_stacks(n)  # now, while the stuck ranks are still where they hang
            worker.join(_GRACE)
        if "reply" in mine:
            replies[0] = mine["reply"]
        elif 0 not in stuck:
            stuck.insert(0, 0)
        if stuck:
            raise self._timed_out(n, stuck, fn, rank0_stuck=worker.is_alive())
        self._forget(n, size)
        results = results_of(replies, size)
        self._fresh = False
        return results

    def _request_stacks(self, n: int) -> None:
        self._dumps += 1
        self._me.store.set(f"dump/{self._dumps}", str(n).encode())

    def _timed_out(
        self, n: int, stuck: list[int], fn: Callable, *, rank0_stuck: bool
    ) -> WorldTimeout:
        deadline = time.monotonic() + _STACK_TIMEOUT
        what = f"call of {getattr(fn, '__qualname__', fn)!r} did not finish within its timeout"
        errors = []
        for r in stuck:
            got = _wait(self._me.store, f"stack/{n}/{r}", deadline)
            stack = self._me.store.get(f"stack/{n}/{r}").decode(errors="replace") if got else ""
            errors.append(RankError(r, "Stuck", f"{what}; its stack when stopped is below", stack))
        if rank0_stuck:  # rank 0's own part cannot be stopped: its process group is gone
            self.lost = f"rank 0's own part of step {n} is stuck ({what})"
            self._stuck.update(r for r in stuck if r)
        self._suspect = True
        return WorldTimeout(errors, {}, None, reason=what)

    def _abort(self) -> None:
        """Tell the stuck ranks' watchdogs to end their processes (the launcher then stops)."""
        self._dumps += 1
        stuck = ",".join(map(str, sorted(self._stuck)))
        self._me.store.set(f"dump/{self._dumps}", f"abort:{stuck}".encode())

    def _forget(self, n: int, size: int) -> None:
        # not call/n: a rank outside the step may not have read it yet (it stays, a few KiB)
        for key in [f"result/{n}/{r}" for r in range(size)]:
            with contextlib.suppress(Exception):
                self._me.store.delete_key(key)

    def close(self) -> None:
        """Tell every other rank to stop serving (their :func:`serve` returns)."""
        if self._closed:
            return
        self._closed = True
        if self._suspect and self.lost is None:  # a step timed out since: who is still stuck?
            with contextlib.suppress(WorldLost):
                self._ping()
        self._post("stop", self.size)
        if self._stuck:
            self._abort()
        sys.stdout.flush()
