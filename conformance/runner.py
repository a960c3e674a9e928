"""Running a case against a backend on warm worlds, and failure messages for a person."""

from __future__ import annotations

from collections.abc import Sequence

from ckptconf.harness import WorldError, get_world

from . import rank_ops
from .backend import Backend, BackendRef
from .cases import Mismatch, SaveLoadCase

__all__ = ["ConformanceFailure", "save_then_load", "check_save_then_load"]

_MAX_SHOWN = 8


class ConformanceFailure(AssertionError):
    """A backend broke the contract; the message says where and how to reproduce it."""


def _failure(
    backend: Backend, what: str, case_text: str, body: str, repro: str | None
) -> ConformanceFailure:
    lines = [f"[{backend.name}] {what}", "case:", case_text, body.rstrip()]
    if repro:
        lines.append(f"reproduce: {repro}")
    return ConformanceFailure("\n".join(lines))


def save_then_load(
    backend: Backend, case: SaveLoadCase, path: str, *, timeout: float = 120.0
) -> list[Mismatch]:
    """Save on ``case.save_world`` ranks, load on ``case.load_world`` ranks; every mismatch."""
    ref = BackendRef.of(backend)
    get_world(case.save_world).run(rank_ops.save_case, ref, case, path, timeout=timeout)
    results = get_world(case.load_world).run(rank_ops.load_case, ref, case, path, timeout=timeout)
    return [m for rank_result in results for m in rank_result]


def check_save_then_load(
    backend: Backend,
    case: SaveLoadCase,
    path: str,
    *,
    repro: str | None = None,
    timeout: float = 120.0,
) -> None:
    """Save then load; raise :class:`ConformanceFailure` on an error or any wrong value."""
    try:
        mismatches = save_then_load(backend, case, path, timeout=timeout)
    except WorldError as exc:
        raise _failure(backend, "save or load raised", case.describe(), str(exc), repro) from None
    if mismatches:
        raise _failure(
            backend,
            f"{len(mismatches)} loaded value(s) differ from what was saved",
            case.describe(),
            _listing(mismatches),
            repro,
        )


def _listing(mismatches: Sequence[Mismatch]) -> str:
    shown = [f"  {m}" for m in mismatches[:_MAX_SHOWN]]
    if len(mismatches) > _MAX_SHOWN:
        shown.append(f"  ... {len(mismatches) - _MAX_SHOWN} more")
    return "\n".join(shown)
