"""Steps run on every rank with failures made visible to all ranks.

Each step catches what its rank raised and ships it (as a picklable
:class:`RankFailure`) to the coordinator, which either runs the global part or
reports the failures back; every rank then raises the same :class:`CheckpointError`
naming every failing rank. A rank that raised never skips a collective, so no rank
is left waiting for it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .compat import object_collective_device
from .errors import CheckpointError, RankFailure

__all__ = ["Coordination"]

T = TypeVar("T")
R = TypeVar("R")

_OK, _FAILED = "ok", "failed"
_OK_BYTE, _FAILED_BYTE = b"\x00", b"\x01"


def _framed(data: bytes, size: int, device: torch.device) -> torch.Tensor:
    """``data`` behind its length (u64) in a uint8 tensor of ``8 + size`` bytes on ``device``."""
    buffer = bytearray(8 + size)
    buffer[:8] = struct.pack("<Q", len(data))
    buffer[8 : 8 + len(data)] = data
    return torch.frombuffer(buffer, dtype=torch.uint8).to(device)


def _unframed(tensor: torch.Tensor) -> bytes:
    """The bytes :func:`_framed` put in ``tensor``; ``ValueError`` if its length is wrong."""
    raw = tensor.cpu().numpy().tobytes()
    (length,) = struct.unpack_from("<Q", raw)
    if length > len(raw) - 8:
        raise ValueError(f"bytes off the wire claim {length} bytes in a frame of {len(raw) - 8}")
    return raw[8 : 8 + length]


def _failures_json(failures: dict[int, RankFailure]) -> bytes:
    return json.dumps(
        {str(r): [f.type_name, f.message, f.formatted] for r, f in failures.items()}
    ).encode("utf-8")


def _parse_failures(blob: bytes, sender: int) -> dict[int, RankFailure]:
    """Failures sent as :func:`_failures_json` after a status byte, checked as untrusted input."""
    try:
        obj = json.loads(blob[1:].decode("utf-8"))
        out = {}
        for rank, (type_name, message, formatted) in obj.items():
            if not all(isinstance(s, str) for s in (type_name, message, formatted)):
                raise ValueError("not strings")
            out[int(rank)] = RankFailure(type_name, message, formatted)
        return out
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        return {sender: RankFailure("ValueError", f"unreadable bytes off the wire ({exc})", "")}


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

    def reduce_scatter_bytes(
        self,
        step: str,
        local: Callable[[], bytes],
        reduce: Callable[[list[bytes]], list[bytes]],
    ) -> bytes:
        """:meth:`reduce_scatter` of bytes, carried in tensors: nothing off the wire is unpickled.

        Each rank's bytes (or its failure, as JSON) are gathered to the coordinator, which runs
        ``reduce`` on them and sends rank i item i of its result; a failure anywhere raises the
        same ``CheckpointError`` on every rank, as :meth:`reduce_scatter` does.
        """
        self._local_failure = None
        status, value = self._attempt(local)
        mine = (
            _OK_BYTE + value if status == _OK else _FAILED_BYTE + _failures_json({self.rank: value})
        )
        gathered = self._gather_bytes(mine)
        outcome: list[bytes] | None = None
        if self.is_coordinator:
            assert gathered is not None
            failures: dict[int, RankFailure] = {}
            for rank, blob in enumerate(gathered):
                if blob[:1] != _OK_BYTE:
                    failures.update(_parse_failures(blob, rank))
            if not failures:
                status, value = self._attempt(lambda: reduce([b[1:] for b in gathered]))
                if status == _OK and len(value) != self.world_size:
                    status, value = (
                        _FAILED,
                        RankFailure(
                            "ValueError",
                            f"{step}: the global step returned {len(value)} results for {self.world_size} ranks",
                            "",
                        ),
                    )
                if status == _OK:
                    outcome = [_OK_BYTE + bytes(v) for v in value]
                else:
                    failures = {self.rank: value}
            if outcome is None:
                outcome = [_FAILED_BYTE + _failures_json(failures)] * self.world_size
        blob = self._scatter_bytes(outcome)
        if blob[:1] != _OK_BYTE:
            self._raise(step, _parse_failures(blob, self.coordinator_rank))
        return blob[1:]

    def _gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` on the coordinator (``None`` elsewhere), in uint8 tensors."""
        if not self.use_dist:
            return [data]
        device = object_collective_device(self.group)
        longest = torch.tensor([len(data)], dtype=torch.int64, device=device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=self.group)
        buffer = _framed(data, int(longest.item()), device)
        out = (
            [torch.empty_like(buffer) for _ in range(self.world_size)]
            if self.is_coordinator
            else None
        )
        dist.gather(buffer, out, dst=self.global_coordinator, group=self.group)
        return None if out is None else [_unframed(t) for t in out]

    def _scatter_bytes(self, values: list[bytes] | None) -> bytes:
        """Rank i's item of the coordinator's ``values``, in uint8 tensors."""
        if not self.use_dist:
            assert values is not None
            return values[0]
        device = object_collective_device(self.group)
        longest = torch.tensor(
            [max(map(len, values)) if values is not None else 0], dtype=torch.int64, device=device
        )
        dist.broadcast(longest, src=self.global_coordinator, group=self.group)
        size = int(longest.item())
        out = torch.empty(8 + size, dtype=torch.uint8, device=device)
        pieces = [_framed(v, size, device) for v in values] if values is not None else None
        dist.scatter(out, pieces, src=self.global_coordinator, group=self.group)
        return _unframed(out)

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
        """Run ``local`` everywhere; if any rank fails, every rank raises.

        One all-reduce of a flag when every rank succeeds (a step every load takes: the object
        collectives of :meth:`all_reduce` cost four); only after a failure do the failures
        travel, as JSON in uint8 tensors, to every rank.
        """
        self._local_failure = None
        status, value = self._attempt(local)
        if not self.use_dist:
            if status == _FAILED:
                self._raise(step, {self.rank: value})
            return value
        device = object_collective_device(self.group)
        failed = torch.tensor([status == _FAILED], dtype=torch.int32, device=device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=self.group)
        if not failed.item():
            return value
        mine = _OK_BYTE if status == _OK else _FAILED_BYTE + _failures_json({self.rank: value})
        gathered = self._gather_bytes(mine)
        outcome = None
        if gathered is not None:
            failures: dict[int, RankFailure] = {}
            for rank, blob in enumerate(gathered):
                if blob[:1] != _OK_BYTE:
                    failures.update(_parse_failures(blob, rank))
            outcome = [_FAILED_BYTE + _failures_json(failures)] * self.world_size
        self._raise(step, _parse_failures(self._scatter_bytes(outcome), self.coordinator_rank))
