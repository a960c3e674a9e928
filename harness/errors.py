"""Errors of calls on N ranks, carrying every rank's exception, traceback and output."""

from __future__ import annotations

import traceback as traceback_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RankError", "WorldError", "WorldTimeout", "causes_of", "results_of"]


@dataclass
class RankError:
    """What one rank raised: exception type, message and formatted traceback (or stack)."""

    rank: int
    type_name: str
    message: str
    traceback: str
    causes: tuple[str, ...] = ()
    """``rank N: Type: message`` of each failure an exception carries from the ranks it names
    (:func:`causes_of`): what each rank raised, where the error is every rank's at once."""

    def __str__(self) -> str:
        return f"rank {self.rank}: {self.type_name}: {self.message}"

    @classmethod
    def of(cls, rank: int, exc: BaseException) -> RankError:
        """What ``exc``, being handled on ``rank``, says: type, message, traceback, causes."""
        return cls(
            rank, type(exc).__qualname__, str(exc), traceback_module.format_exc(), causes_of(exc)
        )


def causes_of(exc: BaseException) -> tuple[str, ...]:
    """``rank N: Type: message`` of each rank's failure ``exc`` carries (its own rank's too), in
    rank order; ``()`` for an exception of one rank.

    A checkpoint error raised alike on every rank holds every failing rank's exception: DCP's
    ``CheckpointException.failures`` (rank to ``(exception, stack)``), which the reference's
    ``CheckpointError`` subclasses (rank to ``(RankFailure, None)``). Its text has them all, so
    a pattern found in it may come from another rank's error than the one it describes."""
    failures = getattr(exc, "failures", None)
    if not isinstance(failures, Mapping):
        return ()
    causes = []
    for rank in sorted(failures, key=lambda r: (not isinstance(r, int), str(r))):
        cause = failures[rank]
        if isinstance(cause, tuple) and cause:
            cause = cause[0]
        if not isinstance(cause, BaseException):
            continue
        if hasattr(cause, "type_name") and hasattr(cause, "message"):  # carried: RankFailure
            name, message = cause.type_name, cause.message
        else:
            name, message = type(cause).__qualname__, str(cause)
        causes.append(f"rank {rank}: {name}: {message}")
    return tuple(causes)


class WorldError(Exception):
    """One or more ranks failed; ``errors`` has each failing rank's exception and traceback."""

    def __init__(
        self,
        errors: list[RankError],
        output: dict[int, str] | None = None,
        results: list[Any] | None = None,
        *,
        reason: str | None = None,
    ):
        self.errors = sorted(errors, key=lambda e: e.rank)
        self.output = output or {}
        self.results = results
        self.reason = reason
        head = reason or f"{len(self.errors)} rank(s) failed"
        lines = [f"{head}: ranks {', '.join(str(e.rank) for e in self.errors)}"]
        groups: dict[tuple[str, str], list[RankError]] = {}
        for e in self.errors:  # ranks that failed the same way are listed once
            groups.setdefault((e.type_name, e.message), []).append(e)
        for (type_name, message), same in groups.items():
            # a message carrying every rank's traceback (the reference's errors do): shown below
            message = message.split("\n--- traceback of rank", 1)[0]
            lines.append(f"  {_ranks(same)}: {type_name}: {message}")
        for (type_name, _), same in groups.items():
            if type_name in _STACKS:  # each rank's own stack: where it was stuck
                shown = {}
                for e in same:
                    shown.setdefault(e.traceback, []).append(e)
                traces = [(trace, ranks, "") for trace, ranks in shown.items()]
            else:  # one exception raised on several ranks: the lowest rank's traceback
                also = f" (rank {same[0].rank}'s traceback)" if len(same) > 1 else ""
                traces = [(same[0].traceback, same, also)]
            for trace, ranks, also in traces:
                if trace.strip():
                    lines.append(f"--- {_ranks(ranks)}{also} ---\n{trace.rstrip()}")
        for rank, text in sorted(self.output.items()):
            if text.strip():
                lines.append(f"--- output of rank {rank} ---\n{text.rstrip()[-4000:]}")
        super().__init__("\n".join(lines))

    @property
    def failed_ranks(self) -> list[int]:
        """Ranks that failed, ascending."""
        return [e.rank for e in self.errors]


_STACKS = {"Stuck", "RankDied"}
"""Error kinds whose "traceback" is the rank's own stack or output, not an exception's."""


def _ranks(errors: list[RankError]) -> str:
    return f"rank{'s' if len(errors) > 1 else ''} {', '.join(str(e.rank) for e in errors)}"


class WorldTimeout(WorldError):
    """A call did not finish in time; each stuck rank's error holds its Python stack."""


def results_of(replies: dict[int, tuple[bool, Any, str]], size: int) -> list[Any]:
    """The results in rank order from each rank's ``(ok, value or RankError, output)``; raises
    :class:`WorldError` naming every rank that failed (with the others' results)."""
    results: list[Any] = [None] * size
    errors, output = [], {}
    for rank, (ok, value, text) in sorted(replies.items()):
        output[rank] = text
        if ok:
            results[rank] = value
        else:
            errors.append(value)
    if errors:
        raise WorldError(errors, output, results)
    return results
