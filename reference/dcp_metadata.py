"""Reading torch DCP's pickled ``.metadata`` without running code from it.

DCP's ``FileSystemWriter`` (and ``FsspecWriter``) store a checkpoint's ``Metadata`` as a
pickle. Unpickling an untrusted file can call any importable function. :func:`load_dcp_metadata`
uses an unpickler whose ``find_class`` admits only what DCP metadata is made of (found by
recording what torch 2.6-2.13 metadata pickles reference): DCP's metadata dataclasses and
``_StorageInfo``, ``torch.Size``, dtypes, tensor layouts and memory formats, paths in
``StorageMeta``, and plain containers. Anything else raises :class:`UnsafeMetadataError`
naming the global, before it is looked up. (The technique is the one the Python docs give
for restricting globals, "Restricting Globals" in the ``pickle`` module documentation.)
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata

from .errors import MetadataFormatError

__all__ = ["UnsafeMetadataError", "load_dcp_metadata", "ALLOWED_GLOBALS"]

_METADATA_CLASSES = (
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "MetadataIndex",
    "StorageMeta",
    "_MEM_FORMAT_ENCODING",
)

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("torch.distributed.checkpoint.metadata", name) for name in _METADATA_CLASSES}
    | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint._hf_utils", "_HFStorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    }
    | {
        ("torch", str(v).removeprefix("torch."))
        for v in vars(torch).values()
        if isinstance(v, torch.dtype)
    }
    | {
        ("torch", name)
        for name in (
            "strided",
            "sparse_coo",
            "contiguous_format",
            "channels_last",
            "preserve_format",
        )
    }
)
"""The ``(module, name)`` globals a DCP metadata pickle may reference."""


class UnsafeMetadataError(MetadataFormatError):
    """A DCP ``.metadata`` pickle references a global that DCP metadata never contains."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, source: str):
        super().__init__(io.BytesIO(data))
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeMetadataError(
                f"{self.source}: the pickle references {module}.{name}, which is not part of "
                "DCP metadata (allowed: DCP's metadata classes, torch.Size, dtypes, layouts, "
                "paths and plain containers); refusing to load it"
            )
        return super().find_class(module, name)


def load_dcp_metadata(data: bytes, *, source: str = ".metadata") -> Metadata:
    """The DCP ``Metadata`` pickled in ``data``, loaded without running foreign code.

    Raises:
        UnsafeMetadataError: the pickle references a global outside :data:`ALLOWED_GLOBALS`.
        MetadataFormatError: it is not a pickle, or does not hold a ``Metadata``.
    """
    try:
        value = _RestrictedUnpickler(data, source).load()
    except UnsafeMetadataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format error
        raise MetadataFormatError(
            f"{source}: not a readable DCP metadata pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(value, Metadata):
        raise MetadataFormatError(
            f"{source}: holds a {type(value).__name__}, expected a DCP Metadata"
        )
    return value
