"""Running one step of a case on every rank: the interface the suites use, and the pool implementation.

A suite never starts processes itself. It hands a :class:`Ranks` a backend, a world size
and a rank function, and gets one :class:`RankOutcome` per rank back: what the function
returned, or what it raised (type, message, traceback) and what the rank printed. A
step that cannot finish on every rank (a rank hung past the timeout, or died) raises
:class:`RanksLost` with every rank's stack or exit; the pool is then restarted.

Call order, for an implementer of another :class:`Ranks` (ranks launched by torchrun,
say): ``unavailable(world)`` first (``None``, or why such a world cannot run here, e.g.
too few GPUs), then ``run`` once per step; ``run_fresh`` for steps that kill a rank.
A rank function is a module-level callable ``fn(backend, *args)``; it runs with the
process group initialised and ``ckptconf.harness.rank_device()`` naming its device.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ckptconf.conformance.backend import Backend

__all__ = ["PoolRanks", "RankOutcome", "Ranks", "RanksLost", "built_anew", "call_with_backend"]


@dataclass(frozen=True)
class RankOutcome:
    """What one rank did in one step: its return value, or the exception it raised."""

    rank: int
    value: Any = None
    error_type: str | None = None
    """The exception's type name (``Stuck`` for a rank stopped by a timeout, ``RankDied``)."""
    message: str = ""
    traceback: str = ""
    output: str = ""
    """What the rank printed during the step."""
    causes: tuple[str, ...] = ()
    """``rank N: Type: message`` of each rank's failure a checkpoint error carries
    (:func:`~ckptconf.harness.errors.causes_of`)."""

    @property
    def raised(self) -> bool:
        """Whether the rank raised instead of returning."""
        return self.error_type is not None

    def __str__(self) -> str:
        if self.raised:
            return f"rank {self.rank}: {self.error_type}: {self.message}"
        return f"rank {self.rank}: returned {self.value!r:.200}"


class RanksLost(Exception):
    """A step did not finish on every rank: one hung past its timeout (``hung``) or died.

    ``outcomes`` has an entry for every rank that did not finish: its stack when it was
    stopped (``Stuck``) or how it died (``RankDied``), and what it printed.
    """

    def __init__(self, reason: str, outcomes: Sequence[RankOutcome], *, hung: bool):
        self.reason, self.outcomes, self.hung = reason, list(outcomes), hung
        text = "\n".join(f"--- {o} ---\n{o.traceback or o.output}".rstrip() for o in outcomes)
        super().__init__(f"{reason}\n{text}")


class Ranks(ABC):
    """How the ranks of a case are run: warm process pools (:class:`PoolRanks`), or the ranks
    an external launcher started. Suites only call these three methods."""

    device: str = "cpu"
    """The device mode: ``cpu`` (gloo), ``cuda`` (NCCL, a GPU per rank) or ``cuda-shared``."""

    @abstractmethod
    def unavailable(self, world: int) -> str | None:
        """``None`` if a step can run on ``world`` ranks here, else why not (shown as a skip)."""

    @abstractmethod
    def run(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        world: int,
        timeout: float,
    ) -> list[RankOutcome]:
        """``fn(backend, *args)`` on each of ``world`` ranks; one outcome per rank, in rank order.

        Raises :class:`RanksLost` if a rank hangs past ``timeout`` seconds or dies.
        """

    @abstractmethod
    def run_fresh(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        args: Sequence[Any],
        *,
        world: int,
        timeout: float,
    ) -> list[RankOutcome]:
        """As :meth:`run`, on ranks started for this step alone (a step that kills a rank)."""


_BUILT: dict[str | bytes, Backend] = {}
"""The backends this process built, by spec or pickled bytes (a rank keeps what it built)."""
_KEEP = 8
"""How many backends a process keeps built; the oldest goes first (a run uses one or two)."""


class _BackendRef:
    """How a backend reaches the ranks: by its spec (rebuilt there) or pickled.

    A rank builds it once per process and keeps it for every later step, as a training job
    holds its checkpoint machinery (clients, workers, caches), unless the backend sets
    ``rebuild_per_step``.
    """

    def __init__(self, backend: Backend):
        self.spec = backend.spec
        self.payload: bytes | None = None
        if self.spec is None:
            try:
                self.payload = pickle.dumps(backend)
            except Exception as exc:  # noqa: BLE001 - pickling raises several types
                raise TypeError(
                    f"backend {backend.name!r} cannot be sent to the ranks ({exc}); make its "
                    "callables module-level functions or classes, or select it with "
                    "--ckpt-backend module:attr"
                ) from exc

    def resolve(self) -> Backend:
        """The backend, in this process: the one built at an earlier step, else built now."""
        key = self.spec if self.spec is not None else self.payload
        assert key is not None
        backend = _BUILT.get(key)
        if backend is not None:
            return backend
        backend = self.build()
        if not backend.rebuild_per_step:
            while len(_BUILT) >= _KEEP:
                del _BUILT[next(iter(_BUILT))]
            _BUILT[key] = backend
        return backend

    def build(self) -> Backend:
        """A new instance of the backend, from its spec or its pickled bytes."""
        if self.spec is not None:
            from ckptconf.conformance.selection import select_backend

            return select_backend(self.spec)
        assert self.payload is not None
        return pickle.loads(self.payload)


def built_anew(backend: Backend) -> Backend:
    """A new instance of ``backend``, built as a rank builds it (from its spec, or a pickle
    round trip), sharing nothing the kept one holds: for a lifecycle run, which must not
    depend on what earlier runs left in the backend this process keeps."""
    return _BackendRef(backend).build()


def call_with_backend(ref: _BackendRef, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    """On a rank: ``fn(backend, *args)`` with the backend ``ref`` names."""
    return fn(ref.resolve(), *args)


class PoolRanks(Ranks):
    """Steps run on the harness's warm worlds (:func:`ckptconf.harness.get_world`), one per
    world size, in one device mode; ``run_fresh`` starts a world for the step alone."""

    def __init__(self, device: str = "cpu"):
        from ckptconf.harness import DEVICE_MODES
        from ckptconf.harness.world import preload

        # the suites' rank functions and the reference, imported once by the forkserver rather
        # than by every rank (half a second each; tests that kill a rank start fresh ranks)
        preload("ckptconf.conformance.suites", "ckptconf.reference")
        if device not in DEVICE_MODES:
            raise ValueError(f"unknown device mode {device!r}; expected one of {DEVICE_MODES}")
        self.device = device

    def __repr__(self) -> str:
        return f"PoolRanks(device={self.device!r})"

    def warm_up(self) -> None:
        """Start the forkserver the pools' ranks fork from, so that it imports torch, the suites
        and the reference while the caller goes on (pytest collecting): the first step then
        waits for none of it."""
        from ckptconf.harness.world import start_forkserver

        start_forkserver()

    def unavailable(self, world: int) -> str | None:
        from ckptconf.harness import device_available

        reason = device_available(self.device, world)
        return None if reason is None else f"{self.device} mode, {world} rank(s): {reason}"

    def run(self, backend, fn, args, *, world, timeout):
        from ckptconf.harness import get_world

        pool = get_world(world, self.device)
        return _outcomes(lambda *call: pool.run(*call, timeout=timeout), backend, fn, args, world)

    def run_fresh(self, backend, fn, args, *, world, timeout):
        from ckptconf.harness import run_fresh_world

        def call(target, *rest):
            return run_fresh_world(target, world, *rest, timeout=timeout, device=self.device)

        return _outcomes(call, backend, fn, args, world)


def _outcomes(call, backend, fn, args, world: int) -> list[RankOutcome]:
    """Outcomes of ``call(call_with_backend, ref, fn, args)`` on a harness world."""
    from ckptconf.harness import WorldError, WorldTimeout

    ref = _BackendRef(backend)
    try:
        values = call(call_with_backend, ref, fn, tuple(args))
    except WorldError as exc:
        outcomes = [
            RankOutcome(
                e.rank,
                error_type=e.type_name,
                message=e.message,
                traceback=e.traceback,
                output=exc.output.get(e.rank, ""),
                causes=e.causes,
            )
            for e in exc.errors
        ]
        if exc.results is None:  # the pool was stopped: a hang, a dead rank, a failed start
            reason = exc.reason or str(exc).splitlines()[0]
            raise RanksLost(reason, outcomes, hung=isinstance(exc, WorldTimeout)) from None
        by_rank = {o.rank: o for o in outcomes}
        return [
            by_rank.get(r) or RankOutcome(r, value=exc.results[r], output=exc.output.get(r, ""))
            for r in range(world)
        ]
    return [RankOutcome(r, value=v) for r, v in enumerate(values)]
