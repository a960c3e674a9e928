"""Benchmark of a resharding load: save under one layout, load under another, reference vs DCP.

Each case saves one float64 tensor, value-encoded (every element is its global row-major
index), from the simulated ranks of one mesh and placements (``ckptconf.harness.simulated``),
then loads it on a gloo world of the other mesh's size, one process per rank. Torch DCP saves
and loads with its default planners and ``FileSystemWriter``/``FileSystemReader``; the
reference with its planners and its ``FileSystemWriter``/``ReferenceStorageReader``, once with
its defaults (``reference``: shared reads, a chunk several ranks need strided parts of is
read once and its parts sent over the process group) and once with ``share_reads=False``
(``reference-unshared``: each rank reads what it needs itself). Every load is checked element
by element on every rank.

Read amplification is the bytes read from the data files during the load (all ranks
together; the metadata file is not counted) over the bytes the destination tensors hold. DCP's
bytes are counted under its buffered file object (what its reads asked of the file, buffer
refills included); the reference's through its ``BlobStore`` (``read_range`` and
``read_into``: it reads whole checksum blocks). Load seconds run from a barrier before the
load to one after it (the slowest rank's); the best of ``rounds`` interleaved rounds is kept.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CASES", "ReshardBench", "ReshardCase", "bench_reshard", "case_shape"]


@dataclass(frozen=True)
class ReshardCase:
    """A layout change: the mesh and placements saved and loaded (``"S<d>"`` for
    ``Shard(d)``, ``"R"`` for ``Replicate()``, one per mesh dimension)."""

    name: str
    save_mesh: tuple[int, ...]
    save_placements: tuple[str, ...]
    load_mesh: tuple[int, ...]
    load_placements: tuple[str, ...]


CASES = (
    ReshardCase("S0 on 2 -> S1 on 3", (2,), ("S0",), (3,), ("S1",)),
    ReshardCase("S0,S1 on 2x2 -> S0 on 4", (2, 2), ("S0", "S1"), (4,), ("S0",)),
)


@dataclass
class ReshardBench:
    """One case's load: bytes the destination needs, bytes read and best seconds per
    implementation (``"dcp"``, ``"reference"``, ``"reference-unshared"``)."""

    case: str
    shape: tuple[int, ...]
    needed: int
    read: dict[str, int]
    seconds: dict[str, float]

    def amplification(self, name: str) -> float:
        """Bytes ``name`` read over the bytes needed."""
        return self.read[name] / self.needed

    @property
    def speedup(self) -> float:
        """DCP's load time over the reference's: above 1, the reference is faster."""
        return self.seconds["dcp"] / self.seconds["reference"]


def case_shape(mib: float) -> tuple[int, int]:
    """A 2-D float64 shape of about ``mib`` MiB: 1024 rows (fewer for a small tensor) and as
    many columns as fit (4096 for 32 MiB: a 2x2 mesh's chunk is then two 4 MiB blocks)."""
    elements = max(1, int(mib * 2**20) // 8)
    rows = min(1024, max(4, elements // 12 // 4 * 4))
    return rows, max(3, elements // rows)


def _placements(texts: Sequence[str]) -> list:
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate() if t == "R" else Shard(int(t[1:])) for t in texts]


class _Counter:
    def __init__(self) -> None:
        self.bytes = 0


class _CountingFileIO(io.FileIO):
    """A file whose reads add the bytes they got to ``counter``."""

    def __init__(self, path, counter: _Counter):
        super().__init__(path, "rb")
        self.counter = counter

    def readinto(self, buffer):
        got = super().readinto(buffer)
        self.counter.bytes += got or 0
        return got

    def read(self, size=-1):
        data = super().read(size)
        self.counter.bytes += len(data or b"")
        return data

    def readall(self):
        data = super().readall()
        self.counter.bytes += len(data)
        return data


def _counting_dcp_reader(path: str, counter: _Counter):
    """DCP's ``FileSystemReader`` of ``path`` whose data-file reads are counted in ``counter``
    (its ``fs.create_stream`` opens them; the metadata file is opened uncounted)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystem

    class CountingFileSystem(FileSystem):
        @contextmanager
        def create_stream(self, path, mode):
            if mode != "rb" or Path(path).name == ".metadata":
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            with io.BufferedReader(_CountingFileIO(path, counter)) as stream:
                yield stream

    reader = dcp.FileSystemReader(path)
    reader.fs = CountingFileSystem()
    return reader


def _counting_reference_reader(path: str, counter: _Counter):
    """The reference's reader of the folder ``path`` through a store counting what it reads
    (a read-only store: the writing methods raise)."""
    from ckptconf.reference import BlobStore, DirectoryStore, ReferenceStorageReader

    class CountingStore(BlobStore):
        def __init__(self, inner: BlobStore):
            self.inner = inner
            self.location = inner.location

        def read_range(self, name, start, end):
            data = self.inner.read_range(name, start, end)
            counter.bytes += len(data)
            return data

        def read_into(self, name, start, buffer):
            got = self.inner.read_into(name, start, buffer)
            counter.bytes += got
            return got

        def size(self, name):
            return self.inner.size(name)

        def read_metadata(self):
            return self.inner.read_metadata()

        def generations(self):
            return self.inner.generations()

        def _read_only(self, *args):
            raise NotImplementedError("a store for reading only")

        prepare = create_generation = open_sink = commit_metadata = _read_only
        remove_generation = _read_only

    return ReferenceStorageReader(CountingStore(DirectoryStore(path)))


def _values(mesh, placements, shape, *, encoded: bool):
    """Every rank's value of the tensor on ``mesh``: value-encoded, or all -1 (to load into)."""
    import torch
    from ckptconf.harness.simulated import index_encoded, mesh_values

    fill = index_encoded(shape) if encoded else (lambda o, s: torch.full(s, -1.0))
    return mesh_values("w", shape, mesh, _placements(placements), fill=fill, dtype=torch.float64)


def _check(dests: dict, shape) -> None:
    """Raise unless every destination piece (of each rank's value in ``dests``) holds its
    elements' global indices."""
    import torch
    from ckptconf.harness.simulated import index_encoded

    fill = index_encoded(shape)
    for rank, value in dests.items():
        for piece in value.pieces:
            offsets, sizes = tuple(piece.chunk.offsets), tuple(piece.chunk.sizes)
            if not torch.equal(piece.view, fill(offsets, sizes).to(piece.view.dtype)):
                raise AssertionError(
                    f"rank {rank}'s piece at {offsets} of size {sizes} is not the saved values"
                )


def _save(case: ReshardCase, shape, root: str, block_size: int | None) -> dict[str, str]:
    """Save the case's encoded tensor with each implementation; each one's folder."""
    import ckptconf.reference as ref
    import torch.distributed.checkpoint as dcp
    from ckptconf.harness.simulated import checkpointable, simulate_save
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    saved = _values(case.save_mesh, case.save_placements, shape, encoded=True)
    paths = {"dcp": os.path.join(root, "dcp"), "reference": os.path.join(root, "reference")}
    paths["reference-unshared"] = paths["reference"]
    states = [{"w": checkpointable(v)} for v in saved]
    simulate_save(states, DefaultSavePlanner, lambda r: dcp.FileSystemWriter(paths["dcp"]))
    options = {} if block_size is None else {"block_size": block_size}
    simulate_save(
        states,
        ref.ReferenceSavePlanner,
        lambda r: ref.FileSystemWriter(paths["reference"], **options),
    )
    return paths


def _load(name: str, case: ReshardCase, shape, path: str) -> tuple[int, float, int]:
    """Bytes read, seconds and bytes needed of one checked load of ``path`` by ``name``, on a
    gloo world of the load mesh's size (the reference's shared reads exchange pieces over it)."""
    from ckptconf.harness import get_world

    results = get_world(math.prod(case.load_mesh)).run(_load_on_rank, name, case, shape, path)
    wrong = [r[3] for r in results if r[3]]
    if wrong:
        raise AssertionError(f"{name}: " + "; ".join(wrong))
    return (
        sum(r[0] for r in results),
        max(r[1] for r in results),
        sum(r[2] for r in results),
    )


def _load_on_rank(
    name: str, case: ReshardCase, shape, path: str
) -> tuple[int, float, int, str | None]:
    """This rank's part of :func:`_load`: its bytes read, the load's seconds (between barriers),
    the bytes its destination holds, and what is wrong with its values (``None``: all right)."""
    import ckptconf.reference as ref
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from ckptconf.harness.simulated import checkpointable
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    rank = dist.get_rank()
    dest = _values(case.load_mesh, case.load_placements, shape, encoded=False)[rank]
    needed = sum(p.view.numel() * p.view.element_size() for p in dest.pieces)
    state = {"w": checkpointable(dest)}
    counter = _Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dist.barrier()
        start = time.perf_counter()
        if name == "dcp":
            dcp.load(
                state,
                storage_reader=_counting_dcp_reader(path, counter),
                planner=DefaultLoadPlanner(),
            )
        else:
            reader = _counting_reference_reader(path, counter)
            ref.load(state, storage_reader=reader, share_reads=name == "reference")
        dist.barrier()
        seconds = time.perf_counter() - start
    try:
        _check({rank: dest}, shape)
    except AssertionError as exc:
        return counter.bytes, seconds, needed, str(exc)
    return counter.bytes, seconds, needed, None


def bench_reshard(
    mib: float = 32,
    rounds: int = 3,
    folder: str | None = None,
    *,
    cases: Sequence[ReshardCase] = CASES,
    shape: tuple[int, ...] | None = None,
    block_size: int | None = None,
) -> list[ReshardBench]:
    """Each case's resharding load by DCP and the reference, of a tensor of about ``mib`` MiB
    (or of ``shape``); ``block_size`` is the reference's checksum block (default 4 MiB)."""
    from .io import default_folder

    shape = tuple(shape) if shape is not None else case_shape(mib)
    out = []
    root = tempfile.mkdtemp(prefix="ckptconf-reshard-", dir=folder or default_folder())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # DCP's notices on simulated ranks
            for number, case in enumerate(cases):
                folder_of = os.path.join(root, str(number))
                paths = _save(case, shape, folder_of, block_size)
                read: dict[str, int] = {}
                best = {name: math.inf for name in paths}
                needed = 0
                for _ in range(rounds):
                    for name, path in paths.items():
                        got, seconds, needed = _load(name, case, shape, path)
                        if read.setdefault(name, got) != got:
                            raise AssertionError(f"{name} read {got} bytes, {read[name]} before")
                        best[name] = min(best[name], seconds)
                out.append(ReshardBench(case.name, shape, needed, read, best))
                shutil.rmtree(folder_of)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out
