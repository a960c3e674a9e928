"""Safe encodings: Python objects stored as ``BYTE_IO`` items, and plain data in JSON.

Objects are written with ``torch.save`` (the format DCP's planners read) and read back with
``torch.load(weights_only=True)``, which rebuilds tensors, containers and primitives and
refuses to import or call anything else, plus :data:`SAFE_TYPES`: value types training stacks
keep in their state dicts whose rebuilding runs no code of theirs (numpy arrays and scalars,
``io.BytesIO``, ``argparse.Namespace``, paths, ``bytes``, ``frozenset``; found in Megatron's,
TransformerEngine's and torchtitan's state dicts). :func:`encode_object` checks that the bytes
it writes load back so: a value that would not (an enum, a dataclass, a ``torch.Generator``,
a lambda) is refused when it is saved, naming its key and type, so a save that succeeds is
loadable. Reading never runs code from the checkpoint.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
from typing import Any

import torch

__all__ = [
    "UnsafeObjectError",
    "decode_object",
    "encode_object",
    "from_json_data",
    "safe_types",
    "to_json_data",
]


class UnsafeObjectError(ValueError):
    """An object cannot be stored or loaded safely: the message names the key and the type."""


def encode_object(value: Any, *, key: str = "?") -> bytes:
    """Serialize ``value`` as DCP does for non-tensor values, after checking it loads back
    with :func:`decode_object`; raises :class:`UnsafeObjectError` naming ``key`` and the
    type otherwise (the save must not write what no safe load can read)."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        raise UnsafeObjectError(
            f"object for key {key!r} (a {type(value).__name__}) cannot be saved: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    data = buffer.getvalue()
    try:
        decode_object(data, key=key)
    except UnsafeObjectError as exc:
        raise UnsafeObjectError(
            f"object for key {key!r} (a {type(value).__name__}) cannot be stored safely: a "
            f"checkpoint loads only tensors, containers, primitives and {_safe_names()}, and "
            f"{_refused(exc)}. Store its state as such values (a dict of plain data, "
            "a tensor), or make the object Stateful (state_dict/load_state_dict)"
        ) from None
    return data


def decode_object(data: bytes | io.BytesIO, *, key: str = "?") -> Any:
    """Deserialize an object written by :func:`encode_object` or DCP, without running code."""
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    try:
        # torch's safe_globals() swaps a process-wide set in and out: two threads decoding at
        # once (sibling saves, an async save beside a load) would take each other's out
        with _DECODING, _safe_globals():
            return torch.load(
                stream, weights_only=True, map_location="cpu"
            )  # never False: untrusted
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError here
        raise UnsafeObjectError(
            f"object for key {key!r} cannot be loaded safely: {str(exc).splitlines()[0]}. "
            "Only tensors, containers, primitives and ckptconf's safe types load by default; "
            "allow-list other types with torch.serialization.add_safe_globals if you trust "
            "the checkpoint"
        ) from exc


_DECODING = threading.Lock()


def safe_types() -> list[Any]:
    """The types (and numpy's rebuilding functions) a weights-only load may construct beyond
    torch's defaults: each rebuilds data, none runs code of the checkpoint's choosing."""
    import argparse
    import pathlib
    import types

    found: list[Any] = [bytes, bytearray, frozenset, io.BytesIO, argparse.Namespace]
    found += [types.SimpleNamespace, pathlib.PurePosixPath, pathlib.PosixPath]
    found += [pathlib.PureWindowsPath, pathlib.WindowsPath]
    try:
        import numpy
    except ImportError:  # numpy is a dependency, but a missing one must not stop other loads
        return found
    multiarray = getattr(getattr(numpy, "_core", None), "multiarray", None)
    multiarray = multiarray or numpy.core.multiarray
    found += [multiarray._reconstruct, multiarray.scalar, numpy.ndarray, numpy.dtype]
    dtypes = getattr(numpy, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return found


def _safe_names() -> str:
    return "numpy arrays and scalars, io.BytesIO, argparse.Namespace, SimpleNamespace, paths, bytes"


def _refused(exc: UnsafeObjectError) -> str:
    """What the weights-only load refused, from its message."""
    cause = str(exc.__cause__ or exc)
    found = re.search(r"GLOBAL ([\w.<>]+)", cause)
    if found:
        return f"it holds a {found.group(1)}, which a safe load does not construct"
    return f"it does not load back ({cause.splitlines()[0] if cause else 'unknown error'})"


def _safe_globals():
    """A context allowing :func:`safe_types` in weights-only loads: only those not allowed
    already, so that leaving it takes out none that the program allowed itself."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # older torch: allow-list process-wide
        torch.serialization.add_safe_globals(safe_types())
        import contextlib

        return contextlib.nullcontext()
    allowed = getattr(torch.serialization, "get_safe_globals", lambda: [])()
    return safe_globals([t for t in safe_types() if t not in allowed])


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
