"""Deliberately broken storage backends: the storage suite must report each as failing.

Each is the reference format with one storage bug planted, as ``module:attr`` backends
for ``--ckpt-backend tests.conformance.broken_storage:<name>``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemReader, FileSystemWriter
from ckptconf.reference.filesystem import METADATA_FILE, DirectoryStore
from ckptconf.reference.storage import ReferenceStorageReader, ReferenceStorageWriter


class UnverifiedReader(FileSystemReader):
    """Reads the reference format with its block checksums recorded but never verified."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, verify_checksums=False)


def unverified_checksums() -> Backend:
    """Checksums are computed on save and ignored on load: corrupt data loads as wrong values."""
    return Backend(
        name="broken-unverified-checksums",
        storage_writer=FileSystemWriter,
        storage_reader=UnverifiedReader,
    )


class _InPlaceStore(DirectoryStore):
    """Overwrites the same files in place: no generation folders, no truncation, no rename."""

    def create_generation(self, generation: str) -> None:
        (self.path / generation).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def open_sink(self, name: str):
        target = self.path / name
        with open(target, "r+b" if target.exists() else "wb") as file:
            yield _Sink(file)

    def commit_metadata(self, data: bytes) -> None:
        fd = os.open(self.path / METADATA_FILE, os.O_WRONLY | os.O_CREAT, 0o644)  # no O_TRUNC
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


class _Sink:
    def __init__(self, file):
        self.file = file

    def write(self, data) -> None:
        self.file.write(data)


class InPlaceWriter(ReferenceStorageWriter):
    """Writes every save into the same data files and the same metadata file, in place."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(_InPlaceStore(path))

    def storage_meta(self):
        meta = super().storage_meta()
        self._save_id = "in-place"  # the same generation folder for every save
        return meta


def overwrites_in_place() -> Backend:
    """A re-save overwrites files without truncating them: a shorter new metadata document
    keeps the old one's tail."""
    return Backend(
        name="broken-in-place",
        storage_writer=InPlaceWriter,
        storage_reader=FileSystemReader,
    )


class PrefixGlobReader(FileSystemReader):
    """Finds metadata with ``glob(path + "*")``: a sibling whose name extends this one's
    (``step_1`` and ``step_10``) has its keys merged in."""

    def read_metadata(self):
        metadata = super().read_metadata()
        here = Path(self.store.location)
        for other in sorted(here.parent.glob(here.name + "*")):
            if other != here and (other / METADATA_FILE).exists():
                extra = FileSystemReader(other).read_metadata()
                for key, entry in extra.state_dict_metadata.items():
                    metadata.state_dict_metadata.setdefault(key, entry)
        self.metadata = metadata
        return metadata


def prefix_listing() -> Backend:
    """Reads the metadata of every checkpoint whose path starts with this one's."""
    return Backend(
        name="broken-prefix-listing",
        storage_writer=FileSystemWriter,
        storage_reader=PrefixGlobReader,
    )


class _ZeroPaddingStore(DirectoryStore):
    """Pads a short read with zeros and claims every data file is long enough."""

    def read_range(self, name: str, start: int, end: int) -> memoryview:
        data = bytes(super().read_range(name, start, end))
        return memoryview(bytearray(data + b"\0" * (end - start - len(data))))

    def size(self, name: str) -> int:
        super().size(name)  # a missing file is still an error
        return 1 << 62


class ZeroFillReader(ReferenceStorageReader):
    """Fills what a short data file lacks with zeros (and verifies no checksum)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(_ZeroPaddingStore(path), verify_checksums=False)


def zero_fill_short_read() -> Backend:
    """A truncated data file loads with zeros where its missing bytes were."""
    return Backend(
        name="broken-zero-fill",
        storage_writer=FileSystemWriter,
        storage_reader=ZeroFillReader,
    )
