"""What a backend stored for one checkpoint, as the suite reads and changes it.

The storage suite corrupts checkpoints (a flipped bit, a truncated or deleted object,
tampered metadata) and looks for each chunk's saved bytes. It does that through a
:class:`StoredObjects` for the checkpoint's path: by default :class:`LocalFiles` (the
regular files under the path), or what the backend's ``stored_objects`` factory gives
(an object store's objects under a prefix). Names are relative to the checkpoint and
use ``/``. Objects are replaced whole: object stores have no partial writes.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

__all__ = ["LocalFiles", "StoredObjects"]


class StoredObjects(ABC):
    """The objects stored for one checkpoint: list, read, replace and delete them.

    Call order, as the storage suite uses it (in the controller, or on rank 0 of a
    one-rank world, never while a save or load runs): :meth:`names` after a save; then
    :meth:`read`/:meth:`size`; then changes (:meth:`write`, :meth:`change_byte`,
    :meth:`delete`) before a load; a change may be undone by writing the old bytes back.
    """

    local: bool = False
    """Whether the objects are regular files at the checkpoint's local path (the crash-states
    suite records local file-system calls only: it runs where this is true)."""

    in_place: bool = False
    """Whether :meth:`change_byte` changes one byte where it lies (a file) rather than replacing
    the whole object: the tampered-metadata test probes 4096 bytes one by one where it is,
    256 where each change rewrites an object."""

    @abstractmethod
    def names(self) -> list[str]:
        """Every object of the checkpoint, relative names, sorted."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """All bytes of object ``name``. Raises ``FileNotFoundError`` if it does not exist."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Replace (or create) object ``name`` with ``data``."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove object ``name``."""

    def size(self, name: str) -> int:
        """Length of object ``name`` in bytes."""
        return len(self.read(name))

    def change_byte(self, name: str, offset: int, change: Callable[[int], int]) -> int:
        """Replace byte ``offset`` of ``name`` (``old``) by ``change(old)``; return ``old``."""
        data = bytearray(self.read(name))
        old = data[offset]
        data[offset] = change(old)
        self.write(name, bytes(data))
        return old

    def where(self) -> str:
        """Where the objects are, for messages: ``"files under /tmp/x"``, ``"s3://b/p/"``."""
        return type(self).__name__


class LocalFiles(StoredObjects):
    """The regular files under a folder (the default for every backend); a checkpoint that is
    a single file is one object, named by the file's name."""

    local = True
    in_place = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _file(self, name: str) -> Path:
        if self.path.is_file() and name == self.path.name:
            return self.path
        return self.path / name

    def names(self) -> list[str]:
        if self.path.is_file():
            return [self.path.name]
        found = []
        for root, _, files in os.walk(self.path):
            for name in files:
                full = Path(root, name)
                if full.is_file():
                    found.append(full.relative_to(self.path).as_posix())
        return sorted(found)

    def read(self, name: str) -> bytes:
        return self._file(name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self._file(name).write_bytes(data)

    def delete(self, name: str) -> None:
        os.remove(self._file(name))

    def size(self, name: str) -> int:
        return os.path.getsize(self._file(name))

    def change_byte(self, name: str, offset: int, change: Callable[[int], int]) -> int:
        with open(self._file(name), "r+b") as target:  # in place: no rewrite of a large file
            target.seek(offset)
            old = target.read(1)[0]
            target.seek(offset)
            target.write(bytes([change(old)]))
        return old

    def where(self) -> str:
        return f"files under {self.path}"
