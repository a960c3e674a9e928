"""Planted bugs in the order a folder writer makes its files durable: what only a crash shows."""

from __future__ import annotations

import os
from contextlib import contextmanager

from ckptconf.conformance import Backend
from ckptconf.reference.filesystem import METADATA_FILE, DirectoryStore, _fsync_dir
from ckptconf.reference.storage import ReferenceStorageWriter

from ._common import planted_backend

__all__ = [
    "metadata_renamed_before_data_synced",
    "metadata_synced_after_rename",
    "metadata_written_in_place",
]


class _LateSyncStore(DirectoryStore):
    """Commits the metadata (written, synced, renamed, folder synced) first, and syncs the data
    files it names only afterwards: a clean save is durable, but not in between."""

    @contextmanager
    def open_sink(self, name: str):
        with open(self.path / name, "wb") as file:
            yield _Sink(file)

    def seal_generation(self, generation: str) -> None:
        pass

    def commit_metadata(self, data: bytes) -> None:
        super().commit_metadata(data)
        for generation in self.generations():
            folder = self.path / generation
            for file in sorted(folder.iterdir()):
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(folder)


class _InPlaceMetadataStore(DirectoryStore):
    """Writes the metadata file in place (truncate, write, fsync) instead of renaming a new one
    over it."""

    def commit_metadata(self, data: bytes) -> None:
        with open(self.path / METADATA_FILE, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _fsync_dir(self.path)


class _SyncAfterRenameStore(DirectoryStore):
    """Renames the new metadata over the old one first and syncs its bytes afterwards."""

    def commit_metadata(self, data: bytes) -> None:
        temporary = self.path / f".{METADATA_FILE}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.path / METADATA_FILE)
        fd = os.open(self.path / METADATA_FILE, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.path)


class _Sink:
    def __init__(self, file):
        self.file = file

    def write(self, data) -> None:
        self.file.write(data)


class LateSyncWriter(ReferenceStorageWriter):
    def __init__(self, path: str | os.PathLike):
        super().__init__(_LateSyncStore(path))


class SyncAfterRenameWriter(ReferenceStorageWriter):
    def __init__(self, path: str | os.PathLike):
        super().__init__(_SyncAfterRenameStore(path))


class InPlaceMetadataWriter(ReferenceStorageWriter):
    def __init__(self, path: str | os.PathLike):
        super().__init__(_InPlaceMetadataStore(path))


def metadata_renamed_before_data_synced() -> Backend:
    """Metadata committed (renamed, folder synced) before the data files it names are synced.

    A power loss right after the commit keeps metadata that names lost data."""
    return planted_backend(
        "metadata_renamed_before_data_synced",
        "metadata committed before its data files are synced (they are synced after the rename)",
        writer=LateSyncWriter,
    )


def metadata_written_in_place() -> Backend:
    """Metadata truncated and rewritten in place instead of a new file renamed over it.

    A crash between the truncate and the write leaves no metadata: the previous checkpoint is
    lost."""
    return planted_backend(
        "metadata_written_in_place",
        "metadata rewritten in place (O_TRUNC, write, fsync) instead of renamed over",
        writer=InPlaceMetadataWriter,
    )


def metadata_synced_after_rename() -> Backend:
    """New metadata renamed over the old one before its own bytes are synced.

    If the rename reaches the disk before the data (a power loss between the rename and the
    fsync), the metadata file is empty: the previous checkpoint is lost."""
    return planted_backend(
        "metadata_synced_after_rename",
        "metadata renamed into place, then synced (the zero-length-file pattern)",
        writer=SyncAfterRenameWriter,
    )
