"""Steps run on every rank with failures made visible to all ranks.

Each step catches what its rank raised and ships it (as a picklable
:class:`RankFailure`) to the coordinator, which either runs the global part or
reports the failures back; every rank then raises the same :class:`CheckpointError`
naming every failing rank. A rank that raised never skips a collective, so no rank
is left waiting for it.
"""

from __future__ import annotations

import json
import pickle
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


_FIRST = 4096
"""Payload bytes of a rank's first frame each way: a step whose messages fit takes one gather and
one scatter; a longer message costs a second collective each way (and the gathering side a
request to send it)."""

_REPLY, _SEND_REST = 0, 1  # what a frame the coordinator scatters is
_HEADER = struct.Struct("<B7xQQ")  # kind, this message's length, the longest rest to come


def _frame(kind: int, data: bytes, length: int, rest: int, size: int, device) -> torch.Tensor:
    """A header and the first ``size`` bytes of ``data`` (padded), as uint8 on ``device``."""
    buffer = bytearray(_HEADER.size + size)
    _HEADER.pack_into(buffer, 0, kind, length, rest)
    part = data[:size]
    buffer[_HEADER.size : _HEADER.size + len(part)] = part
    return torch.frombuffer(buffer, dtype=torch.uint8).to(device)


def _unframe(tensor: torch.Tensor) -> tuple[int, int, int, bytes]:
    """``(kind, length, rest, payload)`` of a frame: the message's whole length, the longest
    rest to come, and the frame's payload bytes."""
    raw = tensor.cpu().numpy().tobytes()
    kind, length, rest = _HEADER.unpack_from(raw)
    return kind, length, rest, raw[_HEADER.size :]


def _reply_frames(replies: list[bytes], size: int, device) -> list[torch.Tensor]:
    """The first frames of the coordinator's ``replies``, each saying how long a rest follows."""
    rest = max(len(r) for r in replies) - size
    return [_frame(_REPLY, r, len(r), max(rest, 0), size, device) for r in replies]


def _failures_in(gathered: list[bytes]) -> dict[int, RankFailure]:
    """The failures of the ranks whose bytes (status byte first) say they failed."""
    failures: dict[int, RankFailure] = {}
    for rank, blob in enumerate(gathered):
        if blob[:1] != _OK_BYTE:
            failures.update(_parse_failures(blob, rank))
    return failures


def _wrong_count(step: str, got: int, world: int) -> RankFailure:
    return RankFailure(
        "ValueError", f"{step}: the global step returned {got} results for {world} ranks", ""
    )


def _padded(data: bytes, size: int, device) -> torch.Tensor:
    buffer = bytearray(size)
    buffer[: len(data)] = data
    return torch.frombuffer(buffer, dtype=torch.uint8).to(device)


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

    def _round_trip(self, mine: bytes, reply: Callable[[list[bytes]], list[bytes]]) -> bytes:
        """Every rank's ``mine`` to the coordinator, which calls ``reply`` (it must not raise) on
        them in rank order; rank i gets item i of what it returns. Bytes only, in uint8 tensors
        on the group's collective device: one gather and one scatter of fixed frames when every
        message fits :data:`_FIRST` bytes (the object collectives took four), two more
        collectives per direction in which one does not."""
        if not self.use_dist:
            return reply([mine])[0]
        device = object_collective_device(self.group)
        size, world, coordinator = _FIRST, self.world_size, self.global_coordinator
        frame = _frame(_REPLY, mine, len(mine), 0, size, device)
        frames = [torch.empty_like(frame) for _ in range(world)] if self.is_coordinator else None
        dist.gather(frame, frames, dst=coordinator, group=self.group)
        messages: list[bytes] = []  # the coordinator's: what every rank sent, in rank order
        lengths: list[int] = []
        replies: list[bytes] = []
        answer = None
        if frames is not None:
            heads = [_unframe(f) for f in frames]
            messages = [payload[:length] for _, length, _, payload in heads]
            lengths = [length for _, length, _, _ in heads]
            rest = max(lengths) - size
            if rest > 0:
                answer = [_frame(_SEND_REST, b"", 0, rest, size, device)] * world
            else:
                replies = reply(messages)
                answer = _reply_frames(replies, size, device)
        out = torch.empty_like(frame)
        dist.scatter(out, answer, src=coordinator, group=self.group)
        kind, length, rest, payload = _unframe(out)
        if kind == _SEND_REST:  # someone's message was longer than a frame: the rests follow
            tail = _padded(mine[size:], rest, device)
            tails = [torch.empty_like(tail) for _ in range(world)] if frames is not None else None
            dist.gather(tail, tails, dst=coordinator, group=self.group)
            answer = None
            if tails is not None:
                whole = [
                    m + t.cpu().numpy().tobytes()[: max(0, n - size)]
                    for m, t, n in zip(messages, tails, lengths)
                ]
                replies = reply(whole)
                answer = _reply_frames(replies, size, device)
            dist.scatter(out, answer, src=coordinator, group=self.group)
            kind, length, rest, payload = _unframe(out)
        if rest > 0:  # some reply was longer than a frame: the rests follow
            tail = torch.empty(rest, dtype=torch.uint8, device=device)
            rests = [_padded(r[size:], rest, device) for r in replies] if replies else None
            dist.scatter(tail, rests, src=coordinator, group=self.group)
            if length > size:
                return payload + tail.cpu().numpy().tobytes()[: length - size]
        return payload[:length]

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
        """Run ``local`` everywhere, ``reduce`` on the coordinator, and give rank i item i.

        Values travel pickled, as DCP's object collectives carry them (plans and write results
        of any planner and storage; the reference's own save plans take
        :meth:`reduce_scatter_bytes`)."""
        self._local_failure = None
        mine = pickle.dumps(self._attempt(local))

        def reply(blobs: list[bytes]) -> list[bytes]:
            status, value = self._collect(step, [pickle.loads(b) for b in blobs], reduce)
            if status == _OK and len(value) != self.world_size:
                status, value = (
                    _FAILED,
                    {self.rank: _wrong_count(step, len(value), self.world_size)},
                )
            if status == _OK:
                return [pickle.dumps((status, v)) for v in value]
            return [pickle.dumps((status, value))] * self.world_size

        status, value = pickle.loads(self._round_trip(mine, _never_raising(reply, step, self.rank)))
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

        def reply(gathered: list[bytes]) -> list[bytes]:
            failures = _failures_in(gathered)
            if not failures:
                status, value = self._attempt(lambda: reduce([b[1:] for b in gathered]))
                if status == _OK and len(value) != self.world_size:
                    status, value = _FAILED, _wrong_count(step, len(value), self.world_size)
                if status == _OK:
                    return [_OK_BYTE + bytes(v) for v in value]
                failures = {self.rank: value}
            return [_FAILED_BYTE + _failures_json(failures)] * self.world_size

        blob = self._round_trip(mine, reply)
        if blob[:1] != _OK_BYTE:
            self._raise(step, _parse_failures(blob, self.coordinator_rank))
        return blob[1:]

    def all_reduce(self, step: str, local: Callable[[], T], reduce: Callable[[list[T]], R]) -> R:
        """Run ``local`` everywhere, ``reduce`` on the coordinator, and give every rank its result
        (pickled, as :meth:`reduce_scatter`)."""
        self._local_failure = None
        mine = pickle.dumps(self._attempt(local))

        def reply(blobs: list[bytes]) -> list[bytes]:
            outcome = self._collect(step, [pickle.loads(b) for b in blobs], reduce)
            return [pickle.dumps(outcome)] * self.world_size

        status, value = pickle.loads(self._round_trip(mine, _never_raising(reply, step, self.rank)))
        if status == _FAILED:
            self._raise(step, value)
        return value

    def run_all(self, step: str, local: Callable[[], T]) -> T:
        """Run ``local`` everywhere; if any rank fails, every rank raises.

        One all-reduce of a flag when every rank succeeds (a step every load takes); only
        after a failure do the failures travel, as JSON, to every rank.
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

        def reply(gathered: list[bytes]) -> list[bytes]:
            return [_FAILED_BYTE + _failures_json(_failures_in(gathered))] * self.world_size

        self._raise(step, _parse_failures(self._round_trip(mine, reply), self.coordinator_rank))


def _never_raising(
    reply: Callable[[list[bytes]], list[bytes]], step: str, rank: int
) -> Callable[[list[bytes]], list[bytes]]:
    """``reply``, a failure of which (bytes off the wire that do not unpickle) becomes every
    rank's outcome instead of leaving the other ranks waiting."""

    def safe(blobs: list[bytes]) -> list[bytes]:
        try:
            return reply(blobs)
        except Exception as exc:  # noqa: BLE001 - every rank must get an answer
            failure = RankFailure.from_exception(exc)
            return [pickle.dumps((_FAILED, {rank: failure}))] * len(blobs)

    return safe
