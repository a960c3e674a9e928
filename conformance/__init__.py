"""ckptconf.conformance: the conformance suite any checkpoint backend plugs into.

What a plug-in author needs, all importable from here:

- :class:`Backend` (what a backend gives the suite), :data:`FEATURES` (what it may declare
  unsupported), :func:`select_backend` (a built-in name or ``module:attr``);
- :class:`StoredObjects` (what a backend stored for a checkpoint, for the corruption
  tests; :class:`LocalFiles` by default);
- :class:`ConformanceFailure` (the one failure type, with fields), :class:`Mismatch`,
  :class:`RankOutcome`;
- :func:`check_save_then_load` and the cases it takes (:class:`SaveLoadCase`,
  :class:`TensorSpec`, :class:`Layout`) for property tests of your own;
- :mod:`ckptconf.conformance.strategies`: hypothesis strategies for cases;
- :mod:`ckptconf.conformance.suites`: the abstract ``*Tests`` classes to subclass.

Run: ``ckptconf run --backend X`` or ``pytest --pyargs ckptconf.conformance --ckpt-backend X``.
Layout and the path of one test from pytest to your backend: ``docs/architecture.md``.

Importing this package imports neither torch nor hypothesis (the pytest plugin lives in
it and must stay out of other projects' test runs); the names above load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "FEATURES",
    "Backend",
    "BackendSpecError",
    "ConformanceFailure",
    "Layout",
    "LocalFiles",
    "Mismatch",
    "RankOutcome",
    "SaveLoadCase",
    "StoredObjects",
    "TensorSpec",
    "check_save_then_load",
    "select_backend",
]

_WHERE = {
    "FEATURES": ".backend",
    "Backend": ".backend",
    "BackendSpecError": ".selection",
    "select_backend": ".selection",
    "ConformanceFailure": ".kit.failures",
    "Mismatch": ".kit.failures",
    "RankOutcome": ".kit.running",
    "check_save_then_load": ".kit.trial",
    "Layout": ".kit.cases",
    "SaveLoadCase": ".kit.cases",
    "TensorSpec": ".kit.cases",
    "LocalFiles": ".stored",
    "StoredObjects": ".stored",
}

if TYPE_CHECKING:
    from .backend import FEATURES, Backend
    from .kit.cases import Layout, SaveLoadCase, TensorSpec
    from .kit.failures import ConformanceFailure, Mismatch
    from .kit.running import RankOutcome
    from .kit.trial import check_save_then_load
    from .selection import BackendSpecError, select_backend
    from .stored import LocalFiles, StoredObjects


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
