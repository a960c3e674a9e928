"""Stateful values: objects a state dict holds that save their ``state_dict()`` and load through
``load_state_dict()``, as ``torch.distributed.checkpoint`` treats them.

DCP's ``Stateful`` protocol (``torch.distributed.checkpoint.stateful``) is any object with
``state_dict()`` and ``load_state_dict(state_dict)``: an ``AppState`` wrapping a model and its
optimizer (DCP's tutorial), torchtitan's model and optimizer wrappers, a ``StatefulDataLoader``,
an ``nn.Module``. A save stores what ``state_dict()`` returns at the call; a load fills a
destination built from ``state_dict()`` in place, then hands it to ``load_state_dict``, and the
caller's dict keeps the same object. DCP does this for top-level values; the reference also for
Stateful values nested in dicts and lists (as an optimizer's state sits under an app's key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.stateful import Stateful

__all__ = ["is_stateful", "load_stateful", "saved_state"]


def is_stateful(value: Any) -> bool:
    """Whether ``value`` saves and loads through ``state_dict``/``load_state_dict`` (tensors,
    which have neither, are values)."""
    return isinstance(value, Stateful) and not isinstance(value, torch.Tensor)


def saved_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with every Stateful value, at any depth of dicts and lists, replaced by
    what its ``state_dict()`` returns now (itself taken apart the same way)."""
    return _replaced(state_dict, [])


def load_stateful(state_dict: dict[str, Any], load: Callable[[dict[str, Any]], None]) -> None:
    """Load into ``state_dict`` with ``load`` (which fills a dict in place), Stateful values
    through a destination built from their ``state_dict()``, then their ``load_state_dict``
    (the innermost first, so an outer object sees its parts loaded); the caller's dict keeps
    its objects, and its other values are loaded in place as without Stateful values."""
    found: list[tuple[Any, dict[str, Any]]] = []
    destination = _replaced(state_dict, found)
    if not found:
        load(state_dict)
        return
    load(destination)
    for value, loaded in reversed(found):
        value.load_state_dict(loaded)
    _write_back(state_dict, destination)


def _replaced(value: Any, found: list[tuple[Any, dict[str, Any]]]) -> Any:
    """``value`` with its Stateful values replaced; containers are copied only on the way to
    one (elsewhere the load fills the caller's own containers)."""
    if is_stateful(value):
        state = value.state_dict()
        if not isinstance(state, Mapping):
            raise TypeError(
                f"{type(value).__name__}.state_dict() returned a {type(state).__name__}, "
                "expected a dict"
            )
        replaced = _replaced(dict(state), found)
        found.append((value, replaced))
        return replaced
    if isinstance(value, Mapping):
        items = {key: _replaced(item, found) for key, item in value.items()}
        changed = any(items[key] is not item for key, item in value.items())
        return items if changed else value
    if isinstance(value, list):
        items = [_replaced(item, found) for item in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    return value


def _write_back(original: Any, destination: Any) -> None:
    """Values a load put into the copied containers (objects replaced, not filled in place)
    go back to the caller's own containers; Stateful values stay themselves."""
    if destination is original:
        return
    pairs = original.items() if isinstance(original, Mapping) else enumerate(original)
    for key, value in list(pairs):
        if is_stateful(value):
            continue
        loaded = destination[key]
        if isinstance(value, (Mapping, list)) and isinstance(loaded, (Mapping, list)):
            _write_back(value, loaded)
        elif loaded is not value:
            original[key] = loaded
