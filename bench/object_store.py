"""The reference with an object store's costs: a backend for timing the suite where each storage
call waits as a remote one would.

``backend()`` is ckptconf's reference (its drivers and planners) on a folder, each storage call
(list, put of an object, ranged get, head, delete) costing :data:`CALL_SECONDS` and each
client :data:`CLIENT_SECONDS` to build, once per rank process: the factory objects hold the
client, as a training job's saves share one. Its verdict is the reference's; only the time
changes. ``ckptconf run --backend ckptconf.bench.object_store:backend`` times a run against it
(``CKPTCONF_CALL_SECONDS`` and ``CKPTCONF_CLIENT_SECONDS`` change the costs; the issue that
asked for it modelled 50 ms a call and 0.3 s a client).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from ckptconf.conformance.backend import Backend
from ckptconf.reference import ReferenceLoadPlanner, ReferenceSavePlanner
from ckptconf.reference.storage import BlobSink, BlobStore

__all__ = ["CALL_SECONDS", "CLIENT_SECONDS", "CostlyStore", "backend"]

CALL_SECONDS = float(os.environ.get("CKPTCONF_CALL_SECONDS", "0.05"))
"""What one storage call waits, in seconds."""
CLIENT_SECONDS = float(os.environ.get("CKPTCONF_CLIENT_SECONDS", "0.3"))
"""What building a client waits, in seconds."""


class CostlyStore(BlobStore):
    """``inner``'s calls, each after :data:`CALL_SECONDS` (an object's bytes stream in one call:
    writes into an open sink cost nothing more)."""

    def __init__(self, inner: BlobStore, seconds: float = CALL_SECONDS):
        self.inner, self.seconds = inner, seconds
        self.location = inner.location
        self.concurrent_reads = inner.concurrent_reads
        self.concurrent_writes = inner.concurrent_writes

    def _call(self) -> None:
        time.sleep(self.seconds)  # the model of a remote call's latency, not synchronisation

    def prepare(self) -> None:
        self._call()
        self.inner.prepare()

    def create_generation(self, generation: str) -> None:
        self.inner.create_generation(generation)  # an object store has no folders to make

    @contextlib.contextmanager
    def open_sink(self, name: str) -> Iterator[BlobSink]:
        self._call()
        with self.inner.open_sink(name) as sink:
            yield sink

    def seal_generation(self, generation: str) -> None:
        self._call()
        self.inner.seal_generation(generation)

    def read_range(self, name: str, start: int, end: int) -> memoryview:
        self._call()
        return self.inner.read_range(name, start, end)

    def read_into(self, name: str, start: int, buffer: memoryview) -> int:
        self._call()
        return self.inner.read_into(name, start, buffer)

    def size(self, name: str) -> int:
        self._call()
        return self.inner.size(name)

    def read_metadata(self) -> bytes:
        self._call()
        return self.inner.read_metadata()

    def commit_metadata(self, data: bytes) -> None:
        self._call()
        self.inner.commit_metadata(data)

    def generations(self) -> list[str]:
        self._call()
        return self.inner.generations()

    def remove_generation(self, generation: str) -> None:
        self._call()
        self.inner.remove_generation(generation)


class _Storage:
    """The writer or reader factory, with one client per process (built on first use)."""

    def __init__(self, kind: str):
        self.kind, self._client = kind, False

    def __getstate__(self) -> dict[str, Any]:
        return {"kind": self.kind, "_client": False}

    def __call__(self, path: str):
        from ckptconf.reference.filesystem import DirectoryStore
        from ckptconf.reference.storage import ReferenceStorageReader, ReferenceStorageWriter

        if not self._client:
            time.sleep(CLIENT_SECONDS)  # the model of building a client
            self._client = True
        store = CostlyStore(DirectoryStore(path))
        if self.kind == "writer":
            return ReferenceStorageWriter(store)
        return ReferenceStorageReader(store)


_WRITER, _READER = _Storage("writer"), _Storage("reader")


def _save(state_dict, path, *, process_group=None, storage_writer=None):
    from ckptconf.reference import save

    writer = storage_writer or _WRITER(path)
    return save(state_dict, process_group=process_group, storage_writer=writer)


def _load(state_dict, path, *, process_group=None, storage_reader=None):
    from ckptconf.reference import load

    reader = storage_reader or _READER(path)
    load(state_dict, process_group=process_group, storage_reader=reader)


def _async_save(state_dict, path, *, process_group=None, storage_writer=None):
    from ckptconf.reference import async_save

    writer = storage_writer or _WRITER(path)
    return async_save(state_dict, None, process_group=process_group, storage_writer=writer)


def _checkpointer(path: str):
    from ckptconf.reference import Checkpointer

    return Checkpointer(_WRITER(path), _READER(path))


def backend() -> Backend:
    """The reference with object-store costs (see the module docstring)."""
    return Backend(
        name="reference-object-store-costs",
        storage_writer=_WRITER,
        storage_reader=_READER,
        save_planner=ReferenceSavePlanner,  # a class: a factory of the default planner
        load_planner=ReferenceLoadPlanner,
        save=_save,
        load=_load,
        async_save=_async_save,
        checkpointer=_checkpointer,
        description=f"ckptconf.reference on a folder, {CALL_SECONDS * 1e3:g} ms a storage call, "
        f"{CLIENT_SECONDS:g} s a client (once per rank process)",
    )
