"""The reference format on a local or network filesystem.

Layout of a checkpoint folder::

    ckptconf.json           the committed metadata (replaced atomically by rename)
    gen-<save id>/r<N>.bin  raw data written by rank N in that save (and r<N>-<k>.bin
                            where a rank with much to write spreads it over threads)

``ckptconf.json`` is written to a temporary name, flushed to disk, then renamed over
the old one, and the folder is synced, so a crash leaves either the old or the new
checkpoint, never a mix. Before that, every data file is synced, and so is the
generation folder that names them; a checkpoint folder the save creates is synced into
its parent. So after a power loss, a save that returned is there whole (the
crash-states suite checks both, from a strace recording of the save).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .storage import (
    BlobSink,
    BlobStore,
    ReferenceStorageReader,
    ReferenceStorageWriter,
    iter_generations,
)

__all__ = ["DirectoryStore", "FileSystemWriter", "FileSystemReader", "METADATA_FILE"]

METADATA_FILE = "ckptconf.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileSink(BlobSink):
    positional = True

    def __init__(self, file):
        self.file = file

    def write(self, data) -> None:
        self.file.write(data)

    def write_at(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        fd = self.file.fileno()
        while len(view):  # pwrite may write less than asked
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written


class DirectoryStore(BlobStore):
    """A checkpoint as a folder of files; ``sync_files`` flushes data to disk before commit."""

    @property
    def concurrent_reads(self) -> bool:
        """Each read opens its own file object, so reads may run at once; a subclass that
        reads its own way (overrides ``read_range`` or ``read_into``) says so itself."""
        kind = type(self)
        return (
            kind.read_range is DirectoryStore.read_range
            and kind.read_into is DirectoryStore.read_into
        )

    @property
    def concurrent_writes(self) -> bool:
        """Each sink is a file of its own; a subclass that writes its own way says so itself."""
        return type(self).open_sink is DirectoryStore.open_sink

    def __init__(self, path: str | os.PathLike, *, sync_files: bool = True):
        self.path = Path(path)
        self.location = str(path)
        self.sync_files = sync_files

    def prepare(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"checkpoint path {self.path} exists and is not a folder")
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        if self.sync_files:
            for created in missing:  # a new folder's name is durable once its parent is synced
                _fsync_dir(created.parent)

    def seal_generation(self, generation: str) -> None:
        if self.sync_files:
            _fsync_dir(self.path / generation)

    def create_generation(self, generation: str) -> None:
        (self.path / generation).mkdir(parents=True, exist_ok=False)

    @contextmanager
    def open_sink(self, name: str) -> Iterator[BlobSink]:
        target = self.path / name
        with open(target, "wb") as file:
            yield _FileSink(file)
            file.flush()
            if self.sync_files:
                os.fsync(file.fileno())

    def read_range(self, name: str, start: int, end: int) -> memoryview:
        buffer = memoryview(bytearray(max(0, end - start)))
        return buffer[: self._read_file_into(name, start, buffer)]

    def read_into(self, name: str, start: int, buffer: memoryview) -> int:
        if type(self).read_range is not DirectoryStore.read_range:
            # a subclass that reads differently (decompresses, say) must see every read
            return super().read_into(name, start, buffer)
        return self._read_file_into(name, start, buffer)

    def _read_file_into(self, name: str, start: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from byte ``start`` of file ``name``; how many bytes it got."""
        with open(self.path / name, "rb", buffering=0) as file:
            file.seek(start)
            got = 0
            while got < len(buffer):
                n = file.readinto(buffer[got:])
                if not n:
                    break
                got += n
        return got

    def size(self, name: str) -> int:
        return (self.path / name).stat().st_size

    def read_metadata(self) -> bytes:
        target = self.path / METADATA_FILE
        if not target.exists() and (self.path / ".metadata").exists():
            raise FileNotFoundError(
                f"{self.path} holds a torch DCP FileSystemWriter checkpoint (.metadata), not a ckptconf one; "
                "read it with torch.distributed.checkpoint.FileSystemReader"
            )
        return target.read_bytes()

    def commit_metadata(self, data: bytes) -> None:
        temporary = self.path / f".{METADATA_FILE}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            if self.sync_files:
                os.fsync(file.fileno())
        os.replace(temporary, self.path / METADATA_FILE)
        if self.sync_files:
            _fsync_dir(self.path)

    def generations(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return iter_generations(p.name for p in self.path.iterdir() if p.is_dir())

    def remove_generation(self, generation: str) -> None:
        shutil.rmtree(self.path / generation, ignore_errors=True)


class FileSystemWriter(ReferenceStorageWriter):
    """Writes a reference-format checkpoint into the folder ``path``."""

    def __init__(self, path: str | os.PathLike, *, sync_files: bool = True, **kwargs):
        super().__init__(DirectoryStore(path, sync_files=sync_files), **kwargs)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """A plain local path (no URL scheme) is a checkpoint id for this writer."""
        return "://" not in str(checkpoint_id)

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        """Start a new save, optionally at another folder."""
        if checkpoint_id is not None:
            self.store = DirectoryStore(checkpoint_id, sync_files=self.store.sync_files)  # type: ignore[attr-defined]
        super().reset(None)


class FileSystemReader(ReferenceStorageReader):
    """Reads a reference-format checkpoint from the folder ``path``."""

    def __init__(self, path: str | os.PathLike, **kwargs):
        super().__init__(DirectoryStore(path), **kwargs)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        """A local path holding a reference checkpoint."""
        return (Path(checkpoint_id) / METADATA_FILE).exists()

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        """Forget state, optionally switching to another folder."""
        if checkpoint_id is not None:
            self.store = DirectoryStore(checkpoint_id)
        super().reset(None)
