"""Differences between torch DCP versions, detected by feature, never by version string.

Versions named are the ones these facts were read from; the code never compares them.

| what                                     | how it varies                                   | detected by |
|------------------------------------------|-------------------------------------------------|-------------|
| ``CURRENT_DCP_VERSION``                  | in ``filesystem.py`` ("1.0.0" in 2.13); absent in old torch | import |
| ``_StridedShard`` placement              | not in every version                            | import (geometry.py) |
| ``set_up_storage_writer``/``reader`` kwargs | ``rank``, ``use_collectives`` passed only if the method takes ``**kwargs`` | signature |
| ``SavePlanner.set_up_planner(storage_meta=)`` | older planners lack the parameter          | signature |
| ``_validate_global_plan`` result         | bool in older torch, list of errors in 2.13     | result type |
| ``async_save`` result                    | ``Future`` or ``AsyncSaveResponse``             | isinstance |
| ``_Checkpointer.save``                   | 2.13 passes a removed ``coordinator_rank``: TypeError | not used; ours is reference.Checkpointer |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["DCP_FORMAT_VERSION", "accepts_kwargs", "accepts_parameter", "dcp_validation_errors"]

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION as DCP_FORMAT_VERSION
except ImportError:  # torch < 2.4 has no version string
    DCP_FORMAT_VERSION = "1.0.0"


def accepts_kwargs(fn: Callable) -> bool:
    """Whether ``fn`` takes ``**kwargs`` (DCP passes extra arguments only then)."""
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
    )


def accepts_parameter(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name``."""
    return name in inspect.signature(fn).parameters


def dcp_validation_errors(result: Any) -> list[str]:
    """Normalise DCP's ``_validate_global_plan`` result (bool in old torch, error list in new)."""
    if isinstance(result, bool):
        return [] if result else ["DCP's _validate_global_plan rejected the plan"]
    return list(result)
