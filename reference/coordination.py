"""Steps run on every rank with failures made visible to all ranks.

Each step catches what its rank raised and ships it (as a picklable
:class:`RankFailure`) to the coordinator, which either runs the global part or
reports the failures back; every rank then raises the same :class:`CheckpointError`
naming every failing rank. A rank that raised never skips a collective, so no rank
is left waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from .errors import CheckpointError, RankFailure

__all__ = ["Coordination"]

T = TypeVar("T")
R = TypeVar("R")

_OK, _FAILED = "ok", "failed"


class Coordination:
    """The ranks taking part in one save or load, and who coordinates them."""

    def __init__(
        self,
        process_group: dist.ProcessGroup | None = None,
        coordinator_rank: int = 0,
        no_dist: bool | None = None,
        where: str | None = None,
    ):
        self.where = where
        """The checkpoint's path or URL, named by every error of the steps."""
        if no_dist is None:
            no_dist = not (dist.is_available() and dist.is_initialized())
        self.use_dist = not no_dist
        self.group = process_group
        if self.use_dist:
            self.rank = dist.get_rank(process_group)
            self.world_size = dist.get_world_size(process_group)
            if not 0 <= coordinator_rank < self.world_size:
                raise ValueError(
                    f"coordinator_rank {coordinator_rank} is not a rank of the process group (size {self.world_size})"
                )
            self.global_coordinator = (
                dist.get_global_rank(process_group, coordinator_rank)
                if process_group is not None
                else coordinator_rank
            )
        else:
            self.rank, self.world_size, self.global_coordinator = 0, 1, 0
            coordinator_rank = 0
        self.coordinator_rank = coordinator_rank
        self.is_coordinator = self.rank == coordinator_rank

    def _attempt(self, fn: Callable[[], T]) -> tuple[str, Any]:
        try:
            return _OK, fn()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach every rank
            self._local_failure = exc
            return _FAILED, RankFailure.from_exception(exc)

    def _raise(self, step: str, failures: dict[int, RankFailure]) -> None:
        error = CheckpointError(
            step, {rank: (failure, None) for rank, failure in failures.items()}, self.where
        )
        raise error from getattr(self, "_local_failure", None)

    def _gather(self, value: Any) -> list[Any] | None:
        if not self.use_dist:
            return [value]
        out = [None] * self.world_size if self.is_coordinator else None
        dist.gather_object(value, out, dst=self.global_coordinator, group=self.group)
        return out

    def _scatter(self, values: list[Any] | None) -> Any:
        if not self.use_dist:
            assert values is not None
            return values[0]
        out = [None]
        dist.scatter_object_list(
            out,
            values if self.is_coordinator else None,
            src=self.global_coordinator,
            group=self.group,
        )
        return out[0]

    def _broadcast(self, value: Any) -> Any:
        if not self.use_dist:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=self.global_coordinator, group=self.group)
        return box[0]

    def _collect(
        self, step: str, gathered: list[tuple[str, Any]], reduce: Callable[[list[Any]], Any]
    ) -> tuple[str, Any]:
        failures = {
            rank: value for rank, (status, value) in enumerate(gathered) if status == _FAILED
        }
        if failures:
            return _FAILED, failures
        status, value = self._attempt(lambda: reduce([v for _, v in gathered]))
        return (status, value) if status == _OK else (_FAILED, {self.rank: value})

    def reduce_scatter(
        self, step: str, local: Callable[[], T], reduce: Callable[[list[T]], list[R]]
    ) -> R:
        """Run ``local`` everywhere, ``reduce`` on the coordinator, and give rank i item i."""
        self._local_failure = None
        gathered = self._gather(self._attempt(local))
        outcome = None
        if self.is_coordinator:
            assert gathered is not None
            status, value = self._collect(step, gathered, reduce)
            if status == _OK and len(value) != self.world_size:
                status, value = (
                    _FAILED,
                    {
                        self.rank: RankFailure(
                            "ValueError",
                            f"{step}: the global step returned {len(value)} results for {self.world_size} ranks",
                            "",
                        )
                    },
                )
            outcome = (
                [(status, v) for v in value]
                if status == _OK
                else [(status, value)] * self.world_size
            )
        status, value = self._scatter(outcome)
        if status == _FAILED:
            self._raise(step, value)
        return value

    def all_reduce(self, step: str, local: Callable[[], T], reduce: Callable[[list[T]], R]) -> R:
        """Run ``local`` everywhere, ``reduce`` on the coordinator, and give every rank its result."""
        self._local_failure = None
        gathered = self._gather(self._attempt(local))
        outcome = None
        if self.is_coordinator:
            assert gathered is not None
            outcome = self._collect(step, gathered, reduce)
        status, value = self._broadcast(outcome)
        if status == _FAILED:
            self._raise(step, value)
        return value

    def run_all(self, step: str, local: Callable[[], T]) -> T:
        """Run ``local`` everywhere; if any rank fails, every rank raises."""
        result = {}

        def keep() -> None:
            result["value"] = local()

        self.all_reduce(step, keep, lambda _: None)
        return result.get("value")  # type: ignore[return-value]
