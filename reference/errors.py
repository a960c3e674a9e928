"""Exceptions of the reference implementation."""

from __future__ import annotations

import traceback
from typing import Any

from torch.distributed.checkpoint.api import CheckpointException

__all__ = [
    "CheckpointError",
    "RankFailure",
    "MetadataFormatError",
    "IntegrityError",
    "LoadContractError",
    "PlanValidationError",
    "UnknownFormatError",
]


class MetadataFormatError(ValueError):
    """Checkpoint metadata on disk is malformed, unsupported or inconsistent."""


class UnknownFormatError(ValueError):
    """A path holds something, but no checkpoint format ckptconf reads (a single-file format,
    another system's folder layout): neither whole nor broken, just not readable here."""


class IntegrityError(OSError):
    """Checkpoint data does not match what its metadata recorded (size or checksum)."""


class LoadContractError(ValueError):
    """A load request cannot be satisfied by the checkpoint (keys, shapes, dtypes, coverage)."""


class PlanValidationError(ValueError):
    """A global save plan is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"invalid global save plan ({len(problems)} problems):\n  {shown}{more}")


class RankFailure(Exception):
    """An exception raised on another rank, carried as its type name, message and traceback."""

    def __init__(self, type_name: str, message: str, formatted: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.formatted = formatted

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.formatted))

    @classmethod
    def from_exception(cls, exc: BaseException) -> RankFailure:
        """Capture ``exc`` in a form that pickles whatever the original type was."""
        if isinstance(exc, RankFailure):
            return exc
        return cls(
            type(exc).__qualname__,
            str(exc),
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )


class CheckpointError(CheckpointException):
    """A save or load failed on one or more ranks; raised identically on every rank.

    A subclass of DCP's ``CheckpointException``: ``failures`` maps each failing rank
    to ``(exception, stack summary)`` as DCP does, ``step`` names the phase and ``where`` the
    checkpoint (its path or URL, where the storage tells it).
    """

    def __init__(self, step: str, failures: dict[int, Any], where: str | None = None):
        super().__init__(step, failures)
        self.step, self.where = step, where

    @property
    def failed_ranks(self) -> list[int]:
        """Ranks that failed, ascending."""
        return sorted(self.failures)

    def __str__(self) -> str:
        of = f" of {self.where}" if self.where else ""
        lines = [f"checkpoint {self.step}{of} failed on rank(s) {self.failed_ranks}:"]
        for rank in self.failed_ranks:
            exc, _ = self.failures[rank]
            lines.append(f"  rank {rank}: {exc}")
        for rank in self.failed_ranks:
            exc, _ = self.failures[rank]
            formatted = getattr(exc, "formatted", None)
            if formatted:
                lines.append(f"--- traceback of rank {rank} ---\n{formatted.rstrip()}")
        return "\n".join(lines)
