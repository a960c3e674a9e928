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

from collections.abc import Mapping
from typing import Any

import torch
from torch.distributed.checkpoint.stateful import Stateful

__all__ = ["StatefulLoad", "is_stateful", "saved_state"]


def is_stateful(value: Any) -> bool:
    """Whether ``value`` saves and loads through ``state_dict``/``load_state_dict`` (tensors,
    which have neither, are values)."""
    return isinstance(value, Stateful) and not isinstance(value, torch.Tensor)


def saved_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with every Stateful value, at any depth of dicts and lists, replaced by
    what its ``state_dict()`` returns now (itself taken apart the same way). Raises
    ``TypeError`` naming the key of a ``state_dict()`` that returned no dict."""
    return _Replacer().replaced(state_dict, "")


class StatefulLoad:
    """One load into ``state_dict`` through its Stateful values.

    Call order: build it (calls every Stateful's ``state_dict()``; ``TypeError`` naming the key
    of one that returned no dict), load into :attr:`destination` in place, then
    :meth:`finish` (each Stateful's ``load_state_dict``, the innermost first so an outer
    object sees its parts loaded; then the values the load replaced go back into the caller's
    containers, whose Stateful objects stay themselves). Without Stateful values,
    ``destination`` is ``state_dict`` itself.
    """

    def __init__(self, state_dict: dict[str, Any]):
        self.state_dict = state_dict
        self._replacer = _Replacer()
        self.destination: dict[str, Any] = self._replacer.replaced(state_dict, "")

    def finish(self) -> None:
        for value, loaded in reversed(self._replacer.found):
            value.load_state_dict(loaded)
        self._write_back(self.state_dict, self.destination)

    def _write_back(self, original: Any, destination: Any) -> None:
        """Into the caller's containers that were copied on the way to a Stateful, the values
        the load put in the copies; any other value (a list loaded as one object included) is
        replaced whole."""
        if destination is original:
            return
        pairs = original.items() if isinstance(original, Mapping) else enumerate(original)
        for key, value in list(pairs):
            if is_stateful(value):
                continue
            loaded = destination[key]
            if id(loaded) in self._replacer.copies:
                self._write_back(value, loaded)
            elif loaded is not value:
                original[key] = loaded


class _Replacer:
    """Takes Stateful values out of a state dict, recording them and the containers copied."""

    def __init__(self) -> None:
        self.found: list[tuple[Any, dict[str, Any]]] = []
        self.copies: set[int] = set()
        self._keep: list[Any] = []  # the copies stay alive, so their ids stay theirs

    def replaced(self, value: Any, key: str) -> Any:
        """``value`` with its Stateful values replaced; containers are copied only on the way
        to one (elsewhere a load fills the caller's own containers)."""
        if is_stateful(value):
            state = value.state_dict()
            if not isinstance(state, Mapping):
                raise TypeError(
                    f"{type(value).__name__}.state_dict() (the Stateful at key {key or '<root>'!r}) "
                    f"returned a {type(state).__name__}, expected a dict"
                )
            replaced = self._copy(dict(state), key, force=True)
            self.found.append((value, replaced))
            return replaced
        if isinstance(value, (Mapping, list)):
            return self._copy(value, key)
        return value

    def _copy(self, value: Any, key: str, force: bool = False) -> Any:
        if isinstance(value, Mapping):
            items = {k: self.replaced(v, _joined(key, k)) for k, v in value.items()}
            changed = force or any(items[k] is not v for k, v in value.items())
        else:
            items = [self.replaced(v, _joined(key, i)) for i, v in enumerate(value)]
            changed = any(a is not b for a, b in zip(items, value))
        if not changed:
            return value
        self.copies.add(id(items))
        self._keep.append(items)
        return items


def _joined(key: str, part: Any) -> str:
    return f"{key}.{part}" if key else str(part)
