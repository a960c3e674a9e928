"""Selecting a backend: a built-in name or ``module:attr``."""

from __future__ import annotations

import pkgutil
from dataclasses import replace

from .backend import Backend

__all__ = ["BackendSpecError", "load_backend"]


class BackendSpecError(ValueError):
    """A ``--ckpt-backend`` value does not name a usable backend."""


def load_backend(spec: str) -> Backend:
    """The backend named by ``spec``: a built-in name, an adapter's name
    (:data:`~.adapters.ADAPTERS`), or ``module:attr`` (a Backend or a zero-argument callable
    returning one); ``attr`` may be dotted."""
    from .adapters import ADAPTERS, AdapterUnavailable, load_adapter
    from .builtin import BUILT_IN

    if spec in BUILT_IN:
        return replace(BUILT_IN[spec](), spec=spec)
    if spec in ADAPTERS:
        try:
            return replace(load_adapter(spec), spec=spec)
        except (AdapterUnavailable, RuntimeError) as exc:
            raise BackendSpecError(str(exc)) from exc
    if ":" not in spec:
        raise BackendSpecError(
            f"unknown backend {spec!r}: use a built-in name ({', '.join(sorted(BUILT_IN))}), "
            f"an adapter ({', '.join(sorted(ADAPTERS))}) or module:attr"
        )
    module_name, _, attr_path = spec.partition(":")
    try:
        obj = pkgutil.resolve_name(spec)
    except ImportError as exc:
        raise BackendSpecError(
            f"backend {spec!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    except AttributeError as exc:
        raise BackendSpecError(
            f"backend {spec!r}: module {module_name!r} has no attribute {attr_path!r} ({exc})"
        ) from exc
    if not isinstance(obj, Backend):
        if not callable(obj):
            raise BackendSpecError(
                f"backend {spec!r} is a {type(obj).__name__}, expected a "
                "ckptconf.conformance.Backend or a zero-argument callable returning one"
            )
        try:
            obj = obj()
        except TypeError as exc:
            raise BackendSpecError(
                f"backend {spec!r}: calling it with no arguments failed: {exc}"
            ) from exc
        if not isinstance(obj, Backend):
            raise BackendSpecError(
                f"backend {spec!r} returned a {type(obj).__name__}, expected a "
                "ckptconf.conformance.Backend"
            )
    return replace(obj, spec=spec)
