"""Flatten nested state dicts into dotted keys and put values back by path.

Keys and traversal follow DCP's ``flatten_state_dict`` (dicts always recurse, lists
recurse when they hold tensors or containers, tuples and other values are leaves), so
checkpoints written by either side use the same keys. Unlike DCP, a collision such as
``{"a.b": x, "a": {"b": y}}`` is an error naming both paths instead of one value
silently replacing the other, and a path keeps the key objects it was made of: a value
under the int key ``0`` of ``optimizer.state_dict()["state"]`` goes back under ``0``, not
under a new key ``"0"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["ObjectPath", "flatten_state_dict", "get_by_path", "map_leaves", "set_by_path"]

ObjectPath = tuple[Any, ...]
"""The keys (and list indices) from the root of a state dict to a value, as they are there."""

_PLAIN_KEYS = (str, int, float, bytes, type(None))
"""Dict keys a path may hold below the top level: plain values (and tuples of them) that
checkpoint metadata can record exactly (bool is an int)."""


def _check_key(key: Any, path: ObjectPath) -> None:
    plain = isinstance(key, _PLAIN_KEYS) or (
        isinstance(key, tuple) and all(isinstance(k, _PLAIN_KEYS) for k in key)
    )
    if not plain:
        raise TypeError(
            f"state dict key {key!r} ({type(key).__name__}) under {'.'.join(map(str, path))!r}: "
            "keys below the top level must be str, int, float, bytes, None or tuples of them"
        )


def _holds_tensors_or_containers(values: list) -> bool:
    for value in values:
        if isinstance(value, (Mapping, torch.Tensor)) or getattr(value, "is_torch_tensor", False):
            return True
        if isinstance(value, list) and _holds_tensors_or_containers(value):
            return True
    return False


def flatten_state_dict(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, ObjectPath]]:
    """Return ``(flat, paths)``: values by dotted key, and each key's path in ``state_dict``."""
    flat: dict[str, Any] = {}
    paths: dict[str, ObjectPath] = {}

    def visit(path: ObjectPath, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, child in value.items():
                _check_key(key, path)
                visit(path + (key,), child)
            return
        if isinstance(value, list) and _holds_tensors_or_containers(value):
            for index, child in enumerate(value):
                visit(path + (index,), child)
            return
        key = ".".join(map(str, path))
        if key in flat:
            raise ValueError(
                f"state dict paths {paths[key]!r} and {path!r} both flatten to key {key!r}; "
                "rename one of them"
            )
        flat[key] = value
        paths[key] = path

    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(
                f"top-level state dict keys must be str, got {key!r} ({type(key).__name__})"
            )
        visit((key,), value)
    return flat, paths


def map_leaves(state_dict: Mapping[str, Any], fn: Callable[[str, Any], Any]) -> dict[str, Any]:
    """A copy of ``state_dict``'s containers (dict keys and list positions as they are) whose
    every leaf is ``fn(flat key, leaf)``; leaves are what :func:`flatten_state_dict` yields."""

    def rebuild(path: ObjectPath, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: rebuild(path + (key,), child) for key, child in value.items()}
        if isinstance(value, list) and _holds_tensors_or_containers(value):
            return [rebuild(path + (index,), child) for index, child in enumerate(value)]
        return fn(".".join(map(str, path)), value)

    flatten_state_dict(state_dict)  # the same checks: top-level keys, collisions
    return {key: rebuild((key,), value) for key, value in state_dict.items()}


def get_by_path(root: Any, path: ObjectPath) -> Any:
    """The value at ``path`` in nested dicts and lists."""
    node = root
    for part in path:
        node = node[part]
    return node


def set_by_path(root: Any, path: ObjectPath, value: Any) -> None:
    """Put ``value`` at ``path``, creating dicts and lists on the way as needed."""
    node = root
    for part, next_part in zip(path[:-1], path[1:]):
        if isinstance(node, list):
            while len(node) <= part:  # type: ignore[operator]
                node.append(None)
            if node[part] is None:  # type: ignore[index]
                node[part] = [] if isinstance(next_part, int) else {}  # type: ignore[index]
            node = node[part]  # type: ignore[index]
        else:
            if part not in node:
                node[part] = [] if isinstance(next_part, int) else {}
            node = node[part]
    last = path[-1]
    if isinstance(node, list):
        while len(node) <= last:  # type: ignore[operator]
            node.append(None)
    node[last] = value
