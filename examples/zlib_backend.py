"""A custom storage backend in a few lines: reference-format checkpoints with zlib-compressed data files.

Check it with the conformance suite:

    ckptconf run --backend examples.zlib_backend:backend

(from the repository root, so that ``examples`` is importable).
"""

from __future__ import annotations

import zlib
from contextlib import contextmanager

from ckptconf.conformance import Backend
from ckptconf.reference import ReferenceLoadPlanner, ReferenceSavePlanner
from ckptconf.reference.filesystem import DirectoryStore
from ckptconf.reference.storage import BlobSink, ReferenceStorageReader, ReferenceStorageWriter


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


def backend() -> Backend:
    """The backend the suite runs: zlib storage, the reference planners, DCP's save/load driver.

    Without the planners DCP's default ones are used, and their known defects (see
    ``ckptconf backends`` and the torch-dcp expectations) would show up as failures too.
    """
    return Backend(
        name="zlib",
        storage_writer=lambda path: ReferenceStorageWriter(ZlibDirectoryStore(path)),
        storage_reader=lambda path: ReferenceStorageReader(ZlibDirectoryStore(path)),
        save_planner=ReferenceSavePlanner,
        load_planner=ReferenceLoadPlanner,
        description="reference format, data files compressed with zlib",
    )
