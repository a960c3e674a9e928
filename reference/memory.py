"""The reference format held in memory, for tests and for users who want no files."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .storage import (
    BlobSink,
    BlobStore,
    ReferenceStorageReader,
    ReferenceStorageWriter,
    iter_generations,
)

__all__ = ["MemoryStore", "InMemoryWriter", "InMemoryReader"]


class _BufferSink(BlobSink):
    def __init__(self):
        self.buffer = io.BytesIO()

    def write(self, data) -> None:
        self.buffer.write(data)


class MemoryStore(BlobStore):
    """A checkpoint in a dict of byte strings, shared by the writers and readers given it.

    Only one process sees it: use it without a process group, or give each rank the
    same object inside one process.
    """

    def __init__(self, name: str = "memory"):
        self.location = f"memory://{name}"
        self.files: dict[str, bytes] = {}
        self.metadata: bytes | None = None
        self._lock = threading.Lock()

    def prepare(self) -> None:
        pass

    def create_generation(self, generation: str) -> None:
        pass

    @contextmanager
    def open_sink(self, name: str) -> Iterator[BlobSink]:
        sink = _BufferSink()
        yield sink
        with self._lock:
            self.files[name] = sink.buffer.getvalue()

    def read_range(self, name: str, start: int, end: int) -> memoryview:
        return memoryview(bytearray(self.files[name][start:end]))

    def size(self, name: str) -> int:
        try:
            return len(self.files[name])
        except KeyError:
            raise FileNotFoundError(name) from None

    def read_metadata(self) -> bytes:
        if self.metadata is None:
            raise FileNotFoundError(f"{self.location} holds no committed checkpoint")
        return self.metadata

    def commit_metadata(self, data: bytes) -> None:
        self.metadata = bytes(data)

    def generations(self) -> list[str]:
        return iter_generations({name.split("/", 1)[0] for name in self.files})

    def remove_generation(self, generation: str) -> None:
        with self._lock:
            for name in [n for n in self.files if n.startswith(generation + "/")]:
                del self.files[name]


class InMemoryWriter(ReferenceStorageWriter):
    """Writes a reference-format checkpoint into a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore, **kwargs):
        super().__init__(store, **kwargs)


class InMemoryReader(ReferenceStorageReader):
    """Reads a reference-format checkpoint from a :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore, **kwargs):
        super().__init__(store, **kwargs)
