"""Selecting a backend: a built-in name, an adapter's name or ``module:attr``; the backend a
pytest session selected (``--ckpt-backend``), the built-in it inherits from, and what a
report says of it."""

from __future__ import annotations

import pkgutil
from dataclasses import replace
from typing import Any

import pytest

from .backend import Backend

__all__ = [
    "BackendSpecError",
    "backend_from_options",
    "describe_backend",
    "inherited_from",
    "option_backend",
    "select_backend",
]


class BackendSpecError(ValueError):
    """A ``--ckpt-backend`` value does not name a usable backend."""


def select_backend(spec: str) -> Backend:
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


_KEY = pytest.StashKey[Backend]()


def backend_from_options(config: Any) -> Backend:
    """The backend pytest ``config``'s ``--ckpt-backend`` names (default ``reference``),
    selected once per session; ``pytest.UsageError`` if it names none."""
    if _KEY not in config.stash:
        spec = config.getoption("ckpt_backend") or "reference"
        try:
            config.stash[_KEY] = select_backend(spec)
        except BackendSpecError as exc:
            raise pytest.UsageError(str(exc)) from None
    return config.stash[_KEY]


def option_backend(config: Any) -> Backend | None:
    """The backend ``--ckpt-backend`` selected in this session, if it was asked for yet."""
    return config.stash.get(_KEY, None)


def inherited_from(config: Any, backend: Backend) -> str | None:
    """The built-in backend whose failures ``backend`` inherits: ``--ckpt-inherit``, else its own
    ``inherits``; ``pytest.UsageError`` naming where it came from if that is not a built-in."""
    from .builtin import BUILT_IN

    chosen = config.getoption("ckpt_inherit")
    parent = chosen or backend.inherits
    if parent is not None and parent not in BUILT_IN:
        given = (
            f"--ckpt-inherit {parent!r}"
            if chosen
            else f"backend {backend.name!r}: inherits={parent!r}"
        )
        raise pytest.UsageError(
            f"{given} is not a built-in backend ({', '.join(sorted(BUILT_IN))})"
        )
    return parent


def describe_backend(backend: Backend, config: Any = None) -> dict[str, Any]:
    """What the report says of ``backend`` (in pytest session ``config``, if given: its
    ``--ckpt-inherit``)."""
    return {
        "name": backend.name,
        "spec": backend.spec,
        "description": backend.description,
        "unsupported": sorted(backend.unsupported),
        "expectations": backend.expectations,
        "inherits": inherited_from(config, backend) if config is not None else backend.inherits,
    }
