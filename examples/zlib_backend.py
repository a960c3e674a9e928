"""A custom storage backend in a few lines: reference-format checkpoints with zlib-compressed data files.

Check it with the conformance suite (from the repository root, so that ``examples`` imports):

    .venv/bin/python -m ckptconf.cli run --backend examples.zlib_backend:backend
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager

from ckptconf.conformance import Backend
from ckptconf.reference import (
    BlobSink,
    DirectoryStore,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
    ReferenceStorageReader,
    ReferenceStorageWriter,
)


class _Collect(BlobSink):
    def __init__(self):
        self.parts = []

    def write(self, data) -> None:
        self.parts.append(bytes(data))


class ZlibDirectoryStore(DirectoryStore):
    """Each data file is one zlib stream; reads decompress the file and slice it."""

    @contextmanager
    def open_sink(self, name):
        sink = _Collect()
        yield sink
        with super().open_sink(name) as raw:
            raw.write(zlib.compress(b"".join(sink.parts), level=1))

    def read_range(self, name, start, end):
        data = zlib.decompress((self.path / name).read_bytes())
        return memoryview(bytearray(data[start:end]))

    def size(self, name):
        return len(zlib.decompress((self.path / name).read_bytes()))


def zlib_writer(path: str) -> ReferenceStorageWriter:
    return ReferenceStorageWriter(ZlibDirectoryStore(path))


def zlib_reader(path: str) -> ReferenceStorageReader:
    return ReferenceStorageReader(ZlibDirectoryStore(path))


def backend() -> Backend:
    """The backend the suite runs: zlib storage, the reference planners, DCP's save/load driver.

    Without the planners DCP's default ones are used, and their known defects (see
    docs/dcp-findings.md) would show up as failures too.
    """
    return Backend(
        name="zlib",
        storage_writer=zlib_writer,  # module-level functions: the backend pickles to ranks
        storage_reader=zlib_reader,
        save_planner=ReferenceSavePlanner,
        load_planner=ReferenceLoadPlanner,
        description="reference format, data files compressed with zlib",
    )
