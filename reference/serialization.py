"""Safe encodings: Python objects stored as ``BYTE_IO`` items, and plain data in JSON.

Objects are written with ``torch.save`` (the format DCP's planners read) and read back with
``torch.load(weights_only=True)``, which rebuilds tensors, containers and primitives and
refuses to import or call anything else. Value types that training stacks keep in their state
dicts beyond those (numpy arrays, scalars, dtypes and RNG states, ``io.BytesIO``,
``argparse.Namespace``, ``SimpleNamespace``, paths, ``frozenset``; found in Megatron's,
TransformerEngine's and torchtitan's state dicts) are written as calls of :func:`rebuild`,
which builds only those types from plain data: numpy values from ``.npy`` bytes read with
``allow_pickle=False`` (numpy's own pickling would hand the file numpy's ``dtype.__setstate__``,
with which crafted bytes make arrays over arbitrary memory). ``rebuild`` is the one function
ckptconf adds to torch's weights-only allowlist (``torch.serialization.add_safe_globals``);
nothing is swapped in and out of that process-wide list, so loads in other threads and the
program's own allowlist are left alone. Sets are written in a fixed order, so equal sets on
ranks with different string-hash seeds (torchrun) have equal bytes.

:func:`encode_object` checks that the bytes it writes load back: a value that would not (an
enum, a dataclass, a ``torch.Generator``, a lambda, a numpy object array) is refused when it is
saved, naming its key and type, so a save that succeeds is loadable. Reading never runs code
from the checkpoint. Objects DCP wrote holding such types (pickled by their own classes) are
refused on load, naming the type, unless the program allow-lists it itself; numpy's own
pickling is refused even then (a program's imports can widen torch's process-wide list:
``megatron.core`` adds numpy's at import).
"""

from __future__ import annotations

import argparse
import base64
import codecs
import io
import math
import pathlib
import pickle
import re
import sys
import threading
import types
from typing import Any

import torch

__all__ = [
    "UnsafeObjectError",
    "decode_object",
    "encode_object",
    "from_json_data",
    "rebuild",
    "safe_types",
    "to_json_data",
]


class UnsafeObjectError(ValueError):
    """An object cannot be stored or loaded safely: the message names the key and the type."""


def encode_object(value: Any, *, key: str = "?") -> bytes:
    """Serialize ``value`` as DCP does for non-tensor values (``torch.save``; the types of
    :func:`safe_types` as calls of :func:`rebuild`), after checking it loads back with
    :func:`decode_object`; raises :class:`UnsafeObjectError` naming ``key`` and the type
    otherwise (the save must not write what no safe load can read)."""
    try:
        data = _saved(value, _PICKLE_MODULE)
        if _BUILTIN_GLOBALS.search(data):  # sets or b"": again, with the slow pickler
            _SORT_KEYS.cache = {}
            try:
                data = _saved(value, _ORDERED_PICKLE_MODULE)
            finally:
                _SORT_KEYS.cache = None
    except RecursionError:
        raise UnsafeObjectError(
            f"object for key {key!r} ({_kind(value)}) cannot be saved: it refers to itself "
            "through a Namespace, SimpleNamespace, set or numpy value (store it without the cycle)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        raise UnsafeObjectError(
            f"object for key {key!r} ({_kind(value)}) cannot be saved: {_reason(exc)}"
        ) from exc
    try:
        decode_object(data, key=key)
    except UnsafeObjectError as exc:
        raise UnsafeObjectError(
            f"object for key {key!r} ({_kind(value)}) cannot be stored safely: a "
            f"checkpoint loads only tensors, containers, primitives and {_safe_names()}, and "
            f"{_reason(exc.__cause__ or exc)}. Store its state as such values (a dict of plain "
            "data, a tensor), or make the object Stateful (state_dict/load_state_dict)"
        ) from None
    return data


def decode_object(data: bytes | io.BytesIO, *, key: str = "?") -> Any:
    """Deserialize an object written by :func:`encode_object` or DCP, without running code:
    ``torch.load(weights_only=True)`` with :func:`rebuild` allowed. Raises
    :class:`UnsafeObjectError` naming ``key`` and what was refused."""
    stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    if not stream.getbuffer().nbytes:
        raise UnsafeObjectError(
            f"object for key {key!r} cannot be loaded: its stored bytes are empty"
        )
    refused = _refused_globals(stream)
    if refused:
        raise UnsafeObjectError(
            f"object for key {key!r} cannot be loaded safely: it holds a {refused[0]}, numpy's "
            "own pickling, which rebuilds arrays from a raw description of memory; refused even "
            "where the program allow-lists it (importing megatron.core adds numpy's to torch's "
            "weights-only list for the whole process). Store numpy values with "
            "ckptconf.reference (as .npy bytes) or convert them to tensors"
        )
    _allow_rebuild()
    try:
        # never weights_only=False: the bytes are untrusted
        return torch.load(stream, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError here
        raise UnsafeObjectError(
            f"object for key {key!r} cannot be loaded safely: {_reason(exc)}. Only tensors, "
            f"containers, primitives and {_safe_names()} load; allow-list other types with "
            "torch.serialization.add_safe_globals if you trust the checkpoint"
        ) from exc


def rebuild(kind: str, payload: Any) -> Any:
    """The value a stored object's ``(kind, payload)`` stands for (a call :func:`encode_object`
    writes for the types of :func:`safe_types`). Builds only those types, from plain data:
    numpy values from ``.npy`` bytes (``allow_pickle=False``: no object arrays). Raises
    ``ValueError`` naming the kind for anything else."""
    build = _BUILDERS.get(kind) if isinstance(kind, str) else None
    if build is None:
        raise ValueError(
            f"unknown stored object kind {kind!r}; expected one of {sorted(_BUILDERS)}"
        )
    try:
        return build(payload)
    except Exception as exc:  # noqa: BLE001 - a crafted payload may raise anything
        raise ValueError(f"stored {kind} is malformed: {_reason(exc)}") from None


def safe_types() -> list[type]:
    """The types beyond torch's weights-only defaults that objects may hold: each is written
    as a call of :func:`rebuild` and built back from plain data, never by its own unpickling."""
    found: list[type] = [set, frozenset, io.BytesIO, argparse.Namespace, types.SimpleNamespace]
    found += list(_PATHS.values())
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        found += [numpy.ndarray, numpy.generic, numpy.dtype]
    return found


# --- writing: torch.save with a pickler that writes the safe types as rebuild calls ------------


def _encoded(obj: Any) -> tuple[str, Any] | None:
    """``(kind, payload)`` for a value of :func:`safe_types`, ``None`` for any other."""
    kind = type(obj)
    if kind is argparse.Namespace or kind is types.SimpleNamespace:
        return kind.__name__, dict(vars(obj))
    if kind is io.BytesIO:
        return "BytesIO", (obj.getvalue(), obj.tell())
    if kind in _PATH_NAMES:
        return "path", (_PATH_NAMES[kind], str(obj))
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    if kind is numpy.ndarray:
        return "ndarray", _npy(obj)
    if isinstance(obj, numpy.generic):
        return "numpy_scalar", _npy(numpy.asarray(obj))
    if isinstance(obj, numpy.dtype):
        return "numpy_dtype", _exact_dtype(obj)
    if isinstance(obj, type) and issubclass(obj, numpy.generic):
        return "numpy_type", _npy(numpy.empty(0, dtype=obj))
    return None


class _Pickler(pickle.Pickler):
    """The C pickler; it hands sets, frozensets and bytes to no hook (sets are written in hash
    order, which differs between processes for strings, and ``b""`` as a call of ``bytes``,
    which weights-only loads refuse)."""

    def reducer_override(self, obj: Any) -> Any:
        encoded = _encoded(obj)
        return NotImplemented if encoded is None else (rebuild, encoded)


class _OrderedPickler(pickle._Pickler):  # type: ignore[name-defined]
    """The pure-Python pickler (20 to 30 times slower), which hands every value to
    ``reducer_override``: sets and frozensets are written with their items in a fixed order,
    ``b""`` as ``_codecs.encode("", "latin1")`` (as other bytes are)."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is set:  # as pickle writes a set, so that loads without ckptconf read it
            return set, (_in_fixed_order(obj),)
        if kind is frozenset:  # torch's weights-only loads do not construct frozensets
            return rebuild, ("frozenset", _in_fixed_order(obj))
        if kind is bytes and not obj:
            return codecs.encode, ("", "latin1")
        encoded = _encoded(obj)
        return NotImplemented if encoded is None else (rebuild, encoded)


def _pickle_module(pickler: type) -> types.ModuleType:
    module = types.ModuleType("ckptconf_pickle")  # what torch.save uses of a pickle module
    module.Pickler = pickler  # type: ignore[attr-defined]
    module.dump = pickle.dump  # type: ignore[attr-defined]
    return module


_PICKLE_MODULE = _pickle_module(_Pickler)
_ORDERED_PICKLE_MODULE = _pickle_module(_OrderedPickler)
# a set, frozenset or b"" in a protocol-2 pickle (torch.save's): a GLOBAL of the builtin
_BUILTIN_GLOBALS = re.compile(rb"c(?:__builtin__|builtins)\n(?:set|frozenset|bytes)\n")


def _saved(value: Any, pickle_module: types.ModuleType) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer, pickle_module=pickle_module)
    return buffer.getvalue()


class _KeyPickler(_OrderedPickler):
    """Encodes a set item for sorting: tensors by their bytes (a plain pickle names a storage
    by its address, which differs between processes)."""

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.storage.TypedStorage):
            return ("storage", str(obj.dtype), bytes(obj._untyped_storage.cpu().tolist()))
        return None


_SORT_KEYS = threading.local()


def _in_fixed_order(items: set | frozenset) -> list[Any]:
    """The items sorted by their own encoding: the same order in every process, whatever its
    string-hash seed (set order is not). Each item's encoding is computed once per
    :func:`encode_object` (nested sets would otherwise be encoded once per level above)."""
    cache: dict[int, bytes] | None = getattr(_SORT_KEYS, "cache", None)
    if cache is None:
        cache = {}

    def encoding(item: Any) -> bytes:
        if id(item) not in cache:
            buffer = io.BytesIO()
            _KeyPickler(buffer, protocol=2).dump(item)
            cache[id(item)] = buffer.getvalue()
        return cache[id(item)]

    return [item for _, item in sorted(((encoding(i), i) for i in items), key=lambda p: p[0])]


def _exact_dtype(dtype: Any) -> bytes:
    """A dtype as the one field of an empty structured array (a sub-array dtype keeps its
    shape there); one the ``.npy`` header cannot describe exactly (an align flag, metadata,
    an unsized string) is a ``ValueError``."""
    import numpy

    data = _npy(numpy.empty(0, dtype=[("dtype", dtype)]))
    built = _BUILDERS["numpy_dtype"](data)
    if not (
        built == dtype
        and built.isalignedstruct == dtype.isalignedstruct
        and built.metadata == dtype.metadata
        and built.itemsize == dtype.itemsize
    ):
        raise ValueError(
            f"numpy dtype {dtype!r} cannot be stored exactly (a .npy header records no align "
            "flag, metadata or unsized string); store its .str or .descr instead"
        )
    return data


def _npy(array: Any) -> bytes:
    import numpy

    buffer = io.BytesIO()
    numpy.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- reading: what rebuild builds ----------------------------------------------------------------


def _array(data: Any) -> Any:
    """The array of ``.npy`` bytes: numpy's header parser, then the data bytes taken whole
    (numpy's own reader of an in-memory stream copies field by field and leaves the padding of
    structured items uninitialised)."""
    import numpy

    if not isinstance(data, bytes):
        raise TypeError(f"expected .npy bytes, got {type(data).__name__}")
    stream = io.BytesIO(data)
    shape, fortran_order, dtype = _npy_header(stream)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded (their items would be unpickled)")
    count = math.prod(shape)
    body = data[stream.tell() :]
    if len(body) != count * dtype.itemsize:
        raise ValueError(
            f"the header says {count} items of {dtype.itemsize} bytes, the data holds {len(body)}"
        )
    if dtype.itemsize == 0:
        if count > 2**31:
            raise ValueError(f"{count} items of a zero-width dtype")
        flat = numpy.ndarray(count, dtype=dtype)
    else:
        # over a writable copy of the bytes: ndarray.copy() would copy structured items field
        # by field, leaving their padding uninitialised too
        flat = numpy.frombuffer(bytearray(body), dtype=dtype, count=count)
    if fortran_order:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


_NPY_HEADER_LOCK = threading.Lock()


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, Any]:
    # numpy parses the header with ast.literal_eval, and CPython 3.11's AST constructor is not
    # thread-safe ("SystemError: AST constructor recursion depth mismatch" when threads parse at
    # once; later CPython releases fix it): objects decode on several threads of one process
    with _NPY_HEADER_LOCK:
        return _read_npy_header(stream)


def _read_npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], bool, Any]:
    import numpy

    fmt = numpy.lib.format
    version = fmt.read_magic(stream)
    if version == (1, 0):
        return fmt.read_array_header_1_0(stream)
    if version == (2, 0):
        return fmt.read_array_header_2_0(stream)
    for where in ("numpy.lib._format_impl", "numpy.lib.format"):  # 3.0: utf-8 field names
        module = sys.modules.get(where)
        if module is not None and hasattr(module, "_read_array_header"):
            return module._read_array_header(stream, version)
    raise ValueError(f".npy format version {version} is not supported here")


def _scalar(data: Any) -> Any:
    array = _array(data)
    if array.shape != ():
        raise ValueError(f"a scalar is stored as a 0-d array, got shape {array.shape}")
    return array[()]


def _namespace(kind: type) -> Any:
    def build(fields: Any) -> Any:
        if not (isinstance(fields, dict) and all(isinstance(k, str) for k in fields)):
            raise TypeError("expected a dict of str to values")
        value = kind()
        vars(value).update(fields)  # not setattr: a '__class__' field stays a field
        return value

    return build


def _bytes_io(payload: Any) -> io.BytesIO:
    value, position = payload
    if not (isinstance(value, bytes) and type(position) is int and position >= 0):
        raise TypeError("expected (bytes, position)")
    stream = io.BytesIO(value)
    stream.seek(position)
    return stream


def _path(payload: Any) -> pathlib.PurePath:
    name, text = payload
    if name not in _PATHS or not isinstance(text, str):
        raise TypeError(f"expected (one of {sorted(_PATHS)}, str)")
    kind = _PATHS[name]
    if kind is pathlib.WindowsPath and sys.platform != "win32":
        kind = pathlib.PureWindowsPath  # a concrete Windows path cannot exist here
    elif kind is pathlib.PosixPath and sys.platform == "win32":
        kind = pathlib.PurePosixPath
    return kind(text)


def _items(kind: type) -> Any:
    def build(items: Any) -> Any:
        if not isinstance(items, list):
            raise TypeError("expected a list of items")
        return kind(items)

    return build


_PATHS: dict[str, type] = {
    kind.__name__: kind
    for kind in (
        pathlib.PurePosixPath,
        pathlib.PosixPath,
        pathlib.PureWindowsPath,
        pathlib.WindowsPath,
    )
}
_PATH_NAMES = {kind: name for name, kind in _PATHS.items()}
_BUILDERS = {
    "set": _items(set),
    "frozenset": _items(frozenset),
    "Namespace": _namespace(argparse.Namespace),
    "SimpleNamespace": _namespace(types.SimpleNamespace),
    "BytesIO": _bytes_io,
    "path": _path,
    "ndarray": _array,
    "numpy_scalar": _scalar,
    "numpy_dtype": lambda data: _array(data).dtype.fields["dtype"][0],
    "numpy_type": lambda data: _array(data).dtype.type,
}


def _refused_globals(stream: io.BytesIO) -> list[str]:
    """The globals of numpy that the pickle in ``stream`` (a ``torch.save`` zip, or the legacy
    format's first pickles) names, read without unpickling (:func:`pickletools.genops`).

    torch's weights-only unpickler builds only what its allowlist holds; that list is
    process-wide and a program's imports may widen it (``megatron.core`` adds numpy's
    ``_reconstruct``, ``ndarray`` and ``dtype``). numpy's own unpickling is refused here
    whatever the list says. Only ``GLOBAL`` opcodes name anything: the weights-only unpickler
    supports no other way. A pickle that does not parse is left to ``torch.load``'s refusal."""
    import pickletools
    import zipfile

    names: list[str] = []
    start = stream.tell()
    try:
        if zipfile.is_zipfile(stream):
            with zipfile.ZipFile(stream) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                pickles = [io.BytesIO(archive.read(member))] if member else []
        else:
            stream.seek(start)
            pickles = [stream] * 5  # magic, protocol, system info, the object, storage keys
        for source in pickles:
            for opcode, argument, _ in pickletools.genops(source):
                if opcode.name == "GLOBAL":
                    names.append(str(argument).replace(" ", "."))
    except Exception:  # noqa: BLE001 - malformed: torch.load refuses it with its own words
        pass
    finally:
        stream.seek(start)
    return [n for n in names if n == "numpy" or n.startswith("numpy.")]


def _allow_rebuild() -> None:
    """Allow :func:`rebuild` in weights-only loads (added once, and again if the program
    cleared the allowlist; never taken out, so no load in another thread loses it)."""
    if rebuild not in torch.serialization.get_safe_globals():
        torch.serialization.add_safe_globals([rebuild])


def _kind(value: Any) -> str:
    return f"of type {type(value).__qualname__}"


def _safe_names() -> str:
    return (
        "numpy arrays, scalars and dtypes, io.BytesIO, argparse.Namespace, SimpleNamespace, "
        "paths, bytes, bytearray, sets and frozensets"
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line: the type a weights-only load refused, the unpickler's
    own complaint, else the first line of the message (never torch's advice to load with
    ``weights_only=False``)."""
    text = _ANSI.sub("", str(exc))
    found = re.search(r"GLOBAL ([\w.<>]+)", text)
    if found:
        return f"it holds a {found.group(1)}, which a safe load does not construct"
    found = re.search(r"WeightsUnpickler error: (.+)", text)
    if found:
        return f"the unpickler refused it ({found.group(1).strip()})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line] or lines
    return (
        f"{type(exc).__name__}: {lines[0][:300]}" if lines else f"{type(exc).__name__} (no message)"
    )


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
