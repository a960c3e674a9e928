"""Safe encodings: Python objects stored as ``BYTE_IO`` items, and plain data in JSON.

Objects are written with ``torch.save`` (the format DCP's planners read) and read
back with ``torch.load(weights_only=True)``, which rebuilds tensors, containers and
primitives and refuses to import or call anything else. A type outside that set fails
to load with an error naming the key, never by running code from the checkpoint.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import torch

__all__ = ["encode_object", "decode_object", "to_json_data", "from_json_data", "UnsafeObjectError"]


class UnsafeObjectError(ValueError):
    """A stored object needs types that a weights-only load may not construct."""


def encode_object(value: Any) -> bytes:
    """Serialize ``value`` as DCP does for non-tensor values."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def decode_object(data: bytes | io.BytesIO, *, key: str = "?") -> Any:
    """Deserialize an object written by :func:`encode_object` or DCP, without running code."""
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    try:
        with _plain_data_globals():
            return torch.load(
                stream, weights_only=True, map_location="cpu"
            )  # never False: untrusted
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError here
        raise UnsafeObjectError(
            f"object for key {key!r} cannot be loaded safely: {str(exc).splitlines()[0]}. "
            "Only tensors, containers and primitives load by default; allow-list other "
            "types with torch.serialization.add_safe_globals if you trust the checkpoint"
        ) from exc


_PLAIN_DATA_TYPES = [bytes, bytearray, frozenset]
"""Builtins pickle names as globals for some values (``b""`` is ``bytes()``); constructing them runs no user code."""


def _plain_data_globals():
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # older torch: allow-list process-wide
        torch.serialization.add_safe_globals(_PLAIN_DATA_TYPES)
        import contextlib

        return contextlib.nullcontext()
    return safe_globals(_PLAIN_DATA_TYPES)


_TAGS = ("__tuple__", "__dict__", "__bytes__", "__float__")


def to_json_data(value: Any, where: str = "value") -> Any:
    """Encode nested plain data (dict, list, tuple, str, int, float, bool, None, bytes) for JSON."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json_data(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            "__dict__": [
                [to_json_data(k, f"{where} key"), to_json_data(v, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    raise TypeError(
        f"{where}: {type(value).__name__} cannot be stored in checkpoint metadata; "
        "expected dict, list, tuple, str, int, float, bool, bytes or None"
    )


def from_json_data(data: Any, where: str = "value") -> Any:
    """Decode what :func:`to_json_data` produced; anything else is a ``ValueError`` naming ``where``."""
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [from_json_data(v, f"{where}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, dict) and len(data) == 1:
        ((tag, payload),) = data.items()
        if tag == "__tuple__" and isinstance(payload, list):
            return tuple(from_json_data(v, f"{where}[{i}]") for i, v in enumerate(payload))
        if tag == "__dict__" and isinstance(payload, list):
            out = {}
            for i, pair in enumerate(payload):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError(f"{where}: entry {i} of a dict must be a [key, value] pair")
                key = from_json_data(pair[0], f"{where} key {i}")
                try:
                    hash(key)
                except TypeError:
                    raise ValueError(f"{where}: dict key {i} is not hashable") from None
                out[key] = from_json_data(pair[1], f"{where}[{key!r}]")
            return out
        if tag == "__bytes__" and isinstance(payload, str):
            try:
                return base64.b64decode(payload, validate=True)
            except ValueError as exc:
                raise ValueError(f"{where}: invalid base64 bytes") from exc
        if tag == "__float__" and payload in ("nan", "inf", "-inf"):
            return float(payload)
    raise ValueError(
        f"{where}: unexpected JSON value {str(data)[:80]}; expected one of the tags {_TAGS}"
    )
