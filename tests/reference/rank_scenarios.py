"""Functions run on every rank of a gloo world by the multi-process tests.

Each builds value-encoded tensors (every element is its global row-major index), so a
wrong offset shows as a wrong value, and checks what it loaded against DTensor's own
distribution of the same global tensor. They return what they checked, for the
controller to assert on, and raise on the first mismatch.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle

import ckptconf.reference as ref
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor


def encoded(shape) -> torch.Tensor:
    return torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)


def layout(mesh_shape, placements, shape, *, fill=True):
    mesh = init_device_mesh("cpu", tuple(mesh_shape))
    full = encoded(shape) if fill else torch.full(shape, -1.0, dtype=torch.float64)
    return distribute_tensor(full, mesh, placements)


def expected_local(mesh_shape, placements, shape) -> torch.Tensor:
    return layout(mesh_shape, placements, shape).to_local()


def sharded_tensor(shape, *, fill=True):
    from torch.distributed._shard import sharded_tensor as st
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    spec = ChunkShardingSpec(
        dim=0, placements=[f"rank:{r}/cpu" for r in range(dist.get_world_size())]
    )
    value = st.zeros(spec, *shape, dtype=torch.float64)
    for shard in value.local_shards():
        offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        if fill:
            region = encoded(shape)[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))]
            shard.tensor.copy_(region)
        else:
            shard.tensor.fill_(-1)
    return value


PLACEMENTS = {
    "S0": [Shard(0)],
    "S1": [Shard(1)],
    "R": [Replicate()],
}


def save_source(path: str) -> dict:
    """Save a 1-D-mesh state of every kind from this world."""
    ws = dist.get_world_size()
    state = {
        "dt": layout((ws,), [Shard(0)], (8, 6)),
        "uneven": layout((ws,), [Shard(0)], (7, 3)),
        "tiny": layout((ws,), [Shard(0)], (1, 5)),
        "st": sharded_tensor((10, 4)),
        "plain": encoded((3, 3)),
        "nested": {"blob": b"\x01\x02", "step": 9, "layers": [encoded((2,)), encoded((4,))]},
    }
    ref.save(state, path)
    return {"rank": dist.get_rank()}


def load_and_check(path: str, mesh_shape, placements_name: str) -> dict:
    """Load the source checkpoint under another layout and compare every value."""
    placements = {
        "S0": [Shard(0)],
        "S1": [Shard(1)],
        "R": [Replicate()],
        "S0S1": [Shard(0), Shard(1)],
        "S1S0": [Shard(1), Shard(0)],
        "RS0": [Replicate(), Shard(0)],
    }[placements_name]
    shapes = {"dt": (8, 6), "uneven": (7, 3), "tiny": (1, 5)}
    dest = {k: layout(mesh_shape, placements, s, fill=False) for k, s in shapes.items()}
    dest["st"] = sharded_tensor((10, 4), fill=False)
    dest["plain"] = torch.zeros(3, 3, dtype=torch.float64)
    dest["nested"] = {
        "blob": None,
        "step": None,
        "layers": [torch.zeros(2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)],
    }
    ref.load(dest, path)
    checked = []
    for key, shape in shapes.items():
        want = expected_local(mesh_shape, placements, shape)
        got = dest[key].to_local()
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
        checked.append((key, tuple(got.shape)))
    for shard in dest["st"].local_shards():
        offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        want = encoded((10, 4))[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))]
        torch.testing.assert_close(shard.tensor, want, rtol=0, atol=0)
    torch.testing.assert_close(dest["plain"], encoded((3, 3)), rtol=0, atol=0)
    assert dest["nested"]["blob"] == b"\x01\x02" and dest["nested"]["step"] == 9
    torch.testing.assert_close(dest["nested"]["layers"][1], encoded((4,)), rtol=0, atol=0)
    return {"rank": dist.get_rank(), "checked": checked}


def save_2d_and_load_1d(path: str) -> dict:
    """Save on a 2x2 mesh with Shard on both dims, load on the 1-D mesh under Shard(1)."""
    ref.save({"t": layout((2, 2), [Shard(0), Shard(1)], (5, 7))}, path)
    dest = {"t": layout((4,), [Shard(1)], (5, 7), fill=False)}
    ref.load(dest, path)
    torch.testing.assert_close(
        dest["t"].to_local(), expected_local((4,), [Shard(1)], (5, 7)), rtol=0, atol=0
    )
    return {"rank": dist.get_rank(), "local": tuple(dest["t"].to_local().shape)}


class _FailOnRank(ref.FileSystemWriter):
    def __init__(self, path, fail_rank):
        super().__init__(path)
        self.fail_rank = fail_rank

    def write_data(self, plan, planner):
        if dist.get_rank() == self.fail_rank:
            raise OSError(f"injected write failure on rank {self.fail_rank}")
        return super().write_data(plan, planner)


def failing_save_keeps_previous(path: str, fail_rank: int) -> dict:
    """A save failing in write on one rank raises everywhere; the old checkpoint still loads."""
    ws = dist.get_world_size()
    ref.save({"t": layout((ws,), [Shard(0)], (6, 2))}, path)
    newer = layout((ws,), [Shard(0)], (6, 2))
    newer.to_local().add_(1000)
    try:
        ref.save({"t": newer}, storage_writer=_FailOnRank(path, fail_rank))
    except ref.CheckpointError as exc:
        error = {"ranks": exc.failed_ranks, "message": str(exc).splitlines()[1]}
    else:
        raise AssertionError("the save with a failing rank did not raise")
    dest = {"t": layout((ws,), [Shard(0)], (6, 2), fill=False)}
    ref.load(dest, path)
    torch.testing.assert_close(
        dest["t"].to_local(), expected_local((ws,), [Shard(0)], (6, 2)), rtol=0, atol=0
    )
    generations = sorted(n for n in os.listdir(path) if n.startswith("gen-"))
    return {"error": error, "generations": len(generations)}


# --- state dicts that differ between ranks -------------------------------------------------------


def save_pipeline_stages(path):
    """Rank r holds layer r only (a pipeline stage) and its own loader state."""
    rank = dist.get_rank()
    state = {f"layers.{rank}.w": encoded((4,)) + 10 * rank, f"loader.rank{rank}": {"pos": rank}}
    ref.save(state, path)


def load_pipeline_stages(path, layers):
    """Load the layers ``layers[rank]`` (and this rank's loader state, if it had one): what
    loaded, or the error."""
    rank = dist.get_rank()
    state = {f"layers.{i}.w": torch.full((4,), -1.0, dtype=torch.float64) for i in layers[rank]}
    if rank < 2:
        state[f"loader.rank{rank}"] = {"pos": -1}
    try:
        ref.load(state, path)
    except ref.CheckpointError as exc:
        return {"error": str(exc)}
    return {"values": {k: v.tolist() if torch.is_tensor(v) else v for k, v in state.items()}}


def save_for_inspection(path: str, writer: str) -> None:
    """A 2-rank checkpoint for inspect/verify, written by ``writer`` (``"reference"``,
    ``"dcp"`` or ``"hf"``, DCP's safetensors layout): 'rows' float64[5, 3] Shard(0) (uneven:
    3 + 2 rows), 'cols' float32[2, 4] Shard(1), 'stage1.w' int64[3] on rank 1 only, and an
    object 'step' (not for hf, which stores no objects)."""
    import torch.distributed.checkpoint as dcp

    rank = dist.get_rank()
    state = {
        "rows": layout((2,), [Shard(0)], (5, 3)),
        "cols": distribute_tensor(
            encoded((2, 4)).float(), init_device_mesh("cpu", (2,)), [Shard(1)]
        ),
        "step": 7,
    }
    if rank == 1:
        state["stage1.w"] = torch.arange(3)
    if writer == "reference":
        ref.save(state, path)
    elif writer == "hf":
        del state["step"]
        hf = dcp.HuggingFaceStorageWriter(path, save_distributed=True, enable_consolidation=False)
        dcp.save(state, storage_writer=hf)
    else:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(path))


def save_other_for_inspection(path: str, writer: str) -> None:
    """Another save with the same files as :func:`save_for_inspection`: 'rows' is float64[6, 3]."""
    import torch.distributed.checkpoint as dcp

    state = {"rows": layout((2,), [Shard(0)], (6, 3))}
    if writer == "reference":
        ref.save(state, path)
    elif writer == "hf":
        hf = dcp.HuggingFaceStorageWriter(path, save_distributed=True, enable_consolidation=False)
        dcp.save(state, storage_writer=hf)
    else:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(path))


def save_2d_for_inspection(path: str, writer: str) -> None:
    """'grid' float32[4, 6] on a (2, 2) mesh as [Shard(0), Shard(1)] (4 ranks), by ``writer``."""
    import torch.distributed.checkpoint as dcp

    mesh = init_device_mesh("cpu", (2, 2))
    state = {"grid": distribute_tensor(encoded((4, 6)).float(), mesh, [Shard(0), Shard(1)])}
    if writer == "reference":
        ref.save(state, path)
    else:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(path))


def save_per_rank_values_under_one_key(path: str) -> dict:
    """pytorch/pytorch#120356: each rank holds its own values under one key, as if replicated.
    Returns the error each rank got (DCP keeps one rank's copy and drops the other's)."""
    rank = dist.get_rank()
    try:
        ref.save({"weight": torch.tensor([2 * rank, 2 * rank + 1])}, path)
    except ref.CheckpointError as exc:
        return {"error": str(exc)}
    return {"error": None}


class StatefulFailingOnRankOne:
    """A Stateful whose ``state_dict()`` raises on rank 1 only."""

    def state_dict(self):
        if dist.get_rank() == 1:
            raise RuntimeError("rank 1's loader cannot give its state")
        return {"pos": 3}

    def load_state_dict(self, state_dict):
        pass


def one_rank_failing_before_the_first_step(path: str, kind: str) -> dict:
    """A failure on rank 1 before any collective: a Stateful's ``state_dict()`` at save or load,
    an object no safe load reads at the ``async_save`` call. Returns the error each rank got
    (the other rank's future's, for async), or ``"pending"`` for a future still waiting."""
    import enum

    class Mode(enum.Enum):
        TRAIN = 1

    rank = dist.get_rank()
    try:
        if kind == "save":
            ref.save({"w": torch.ones(2), "loader": StatefulFailingOnRankOne()}, path)
        elif kind == "load":
            ref.save({"w": torch.ones(2), "loader": {"pos": 3}}, path)
            ref.load({"w": torch.zeros(2), "loader": StatefulFailingOnRankOne()}, path)
        else:
            extra = Mode.TRAIN if rank == 1 else 1
            future = ref.async_save({"w": torch.ones(2), "extra": extra}, path)
            try:
                future.result(timeout=60)
            except TimeoutError:
                return {"error": "pending"}
        return {"error": None}
    except BaseException as exc:  # noqa: BLE001 - CheckpointError is a BaseException, as DCP's
        return {"error": f"{type(exc).__name__}: {exc}"}


def save_planning_unpickles_nothing(path: str) -> dict:
    """A save of sharded, replicated, per-rank and object values whose planning step is
    watched: every unpickling by ``torch.distributed`` while plans are on the wire is recorded.
    Loads it back and returns what it saw."""
    import torch.distributed.distributed_c10d as c10d
    from ckptconf.reference.coordination import Coordination

    rank, world = dist.get_rank(), dist.get_world_size()
    planning = {"now": False, "unpickled": 0, "steps": []}
    unpickler, step = c10d._unpickler, Coordination.reduce_scatter_bytes

    class Watched(unpickler):
        def load(self):
            planning["unpickled"] += planning["now"]
            return super().load()

    def watched_step(self, name, local, reduce):
        planning["now"] = True
        planning["steps"].append(name)
        try:
            return step(self, name, local, reduce)
        finally:
            planning["now"] = False

    from ckptconf.reference import coordination

    class WatchedPickle:  # the coordination's own unpickling of pickled steps
        def __getattr__(self, name):
            return getattr(pickle, name)

        def loads(self, *args, **kwargs):
            planning["unpickled"] += planning["now"]
            return pickle.loads(*args, **kwargs)

    c10d._unpickler, Coordination.reduce_scatter_bytes = Watched, watched_step
    coordination.pickle = WatchedPickle()
    try:
        dt = layout((world,), [Shard(0)], (7, 3))
        emb = layout((world,), [Replicate()], (2, 2))
        mine = torch.full((rank + 1,), float(rank))
        state = {"dt": dt, "emb": emb, f"own{rank}": mine, "cfg": {"lr": 0.5}}
        metadata = ref.save(state, path)
    finally:
        c10d._unpickler, Coordination.reduce_scatter_bytes = unpickler, step
        coordination.pickle = pickle
    back = {
        "dt": layout((world,), [Shard(0)], (7, 3), fill=False),
        "emb": layout((world,), [Replicate()], (2, 2), fill=False),
        f"own{rank}": torch.zeros(rank + 1),
        "cfg": {"lr": 0.0},
    }
    ref.load(back, path)
    assert torch.equal(back["dt"].to_local(), expected_local((world,), [Shard(0)], (7, 3)))
    assert torch.equal(back["emb"].to_local(), encoded((2, 2)))
    assert torch.equal(back[f"own{rank}"], torch.full((rank + 1,), float(rank)))
    return {
        "unpickled": planning["unpickled"],
        "steps": planning["steps"],
        "keys": sorted(metadata.state_dict_metadata),
        "chunks": [tuple(c.offsets) for c in metadata.state_dict_metadata["dt"].chunks],
        "cfg": back["cfg"],
    }


@contextlib.contextmanager
def counted_rounds():
    """A list that gets an entry per round of shared reads run while inside."""
    from ckptconf.reference import shared_reads

    rounds = []
    exchange = shared_reads.RelayPlanner.exchange

    def counted(self, *args, **kwargs):
        rounds.append(1)
        return exchange(self, *args, **kwargs)

    shared_reads.RelayPlanner.exchange = counted
    try:
        yield rounds
    finally:
        shared_reads.RelayPlanner.exchange = exchange


def save_rows(path: str, shape) -> dict:
    """Save a value-encoded float64 tensor of ``shape`` under ``Shard(0)`` on this world."""
    ref.save({"w": layout((dist.get_world_size(),), [Shard(0)], shape)}, path)
    return {"rank": dist.get_rank()}


def load_columns_counting(
    path: str, shape, share_reads: bool, round_bytes: int | None = None, placement: str = "S1"
):
    """Load under ``Shard(1)`` (or ``placement``) on this world, counting the data bytes this
    rank reads and the rounds of shared reads; the values are checked against DTensor's own
    distribution."""
    from ckptconf.bench.reshard import _Counter, _counting_reference_reader
    from ckptconf.reference import shared_reads

    counter = _Counter()
    placements = PLACEMENTS[placement]
    dest = {"w": layout((dist.get_world_size(),), placements, shape, fill=False)}
    saved = shared_reads.ROUND_BYTES
    if round_bytes is not None:
        shared_reads.ROUND_BYTES = round_bytes
    try:
        with counted_rounds() as rounds:
            ref.load(
                dest,
                storage_reader=_counting_reference_reader(path, counter),
                share_reads=share_reads,
            )
    finally:
        shared_reads.ROUND_BYTES = saved
    want = expected_local((dist.get_world_size(),), placements, shape)
    torch.testing.assert_close(dest["w"].to_local(), want, rtol=0, atol=0)
    local = dest["w"].to_local()
    return {
        "read": counter.bytes,
        "needed": local.numel() * local.element_size(),
        "rounds": len(rounds),
    }


def load_columns_failing(path: str, shape) -> dict:
    """Load under ``Shard(1)``; return the error every rank raised."""
    dest = {"w": layout((dist.get_world_size(),), [Shard(1)], shape, fill=False)}
    try:
        ref.load(dest, path)
    except ref.CheckpointError as exc:
        return {"ranks": sorted(exc.failures), "message": str(exc)}
    return {"ranks": None, "message": "loaded"}


def save_rows_and_step(path: str, shape) -> dict:
    """Two row-sharded tensors and an object (``step``), saved from this world."""
    mesh = (dist.get_world_size(),)
    ref.save(
        {"a": layout(mesh, [Shard(0)], shape), "b": layout(mesh, [Shard(0)], shape), "step": 9},
        path,
    )
    return {"rank": dist.get_rank()}


def load_columns_with_step(path: str, shape, round_bytes=None, fail_allocation_on=None) -> dict:
    """Load ``save_rows_and_step``'s checkpoint as column slabs into ``step=0``, with the round
    bound lowered, or one rank's allocations of the round failing as out of memory; returns
    the ranks the error names (``None``: loaded), ``step`` and whether each tensor holds only
    saved values or -1 (never anything else)."""
    from ckptconf.reference import shared_reads

    mesh = (dist.get_world_size(),)
    dest = {
        "a": layout(mesh, [Shard(1)], shape, fill=False),
        "b": layout(mesh, [Shard(1)], shape, fill=False),
        "step": 0,
    }

    class OutOfMemory:
        def __getattr__(self, name):
            return getattr(torch, name)

        def empty(self, *args, **kwargs):
            raise RuntimeError("DefaultCPUAllocator: not enough memory (injected)")

    saved = shared_reads.ROUND_BYTES
    if round_bytes is not None:
        shared_reads.ROUND_BYTES = round_bytes
    if dist.get_rank() == fail_allocation_on:
        shared_reads.torch = OutOfMemory()
    try:
        ref.load(dest, path)
        failed = None
    except ref.CheckpointError as exc:
        failed = sorted(exc.failures)
    finally:
        shared_reads.ROUND_BYTES = saved
        shared_reads.torch = torch
    want = expected_local(mesh, [Shard(1)], shape)
    clean = all(
        bool(((dest[k].to_local() == want) | (dest[k].to_local() == -1)).all()) for k in ("a", "b")
    )
    return {"failed": failed, "step": dest["step"], "clean": clean}


def load_columns_with_flag(path: str, shape, share_on_coordinator: bool) -> dict:
    """Load as column slabs, the coordinator (rank 0) passing ``share_on_coordinator`` and every
    other rank the opposite; the values are checked; return the rounds of shared reads."""
    share = share_on_coordinator if dist.get_rank() == 0 else not share_on_coordinator
    return load_columns_counting(path, shape, share)


def complex_columns_to_rows(path: str, block_size: int, share_reads: bool) -> bool:
    """Save complex128 column slabs with checksum blocks of ``block_size`` bytes (no multiple of
    16: spans start misaligned), load them as row slabs; whether the values are the saved ones."""
    shape, mesh = (17, 31), (dist.get_world_size(),)
    full = encoded(shape).to(torch.complex128) * (1 + 1j)
    saved = distribute_tensor(full, init_device_mesh("cpu", mesh), [Shard(1)])
    ref.save({"w": saved}, storage_writer=ref.FileSystemWriter(path, block_size=block_size))
    dest = {
        "w": distribute_tensor(torch.zeros_like(full), init_device_mesh("cpu", mesh), [Shard(0)])
    }
    ref.load(dest, path, share_reads=share_reads)
    return bool(
        torch.equal(
            dest["w"].to_local(),
            distribute_tensor(full, init_device_mesh("cpu", mesh), [Shard(0)]).to_local(),
        )
    )


def round_trips(lengths, reply_lengths) -> list:
    """``Coordination._round_trip`` with rank r sending ``lengths[r]`` bytes (byte i is
    ``(r + i) % 251``) and getting back ``reply_lengths[r]`` bytes derived from all it sent;
    returns what this rank got, checked against what it should get."""
    from ckptconf.reference.coordination import Coordination

    coord = Coordination(coordinator_rank=1)
    rank = coord.rank
    mine = bytes((rank + i) % 251 for i in range(lengths[rank]))

    def reply(messages):
        assert [len(m) for m in messages] == list(lengths)
        for r, m in enumerate(messages):
            assert m == bytes((r + i) % 251 for i in range(lengths[r]))
        return [bytes((r * 7 + i) % 253 for i in range(n)) for r, n in enumerate(reply_lengths)]

    got = coord._round_trip(mine, reply)
    return [got == bytes((rank * 7 + i) % 253 for i in range(reply_lengths[rank])), len(got)]


class _CopyingReader(ref.FileSystemReader):
    """Hands the planner copies of the items it is given (a reader may: DCP's planners tell
    items by their fields)."""

    def read_data(self, plan, planner):
        import dataclasses

        items = [dataclasses.replace(item) for item in plan.items]
        return super().read_data(dataclasses.replace(plan, items=items), planner)


def load_columns_with_copying_reader(path: str, shape) -> dict:
    """Load as column slabs through :class:`_CopyingReader`; the values are checked."""
    mesh = (dist.get_world_size(),)
    dest = {"w": layout(mesh, [Shard(1)], shape, fill=False)}
    with counted_rounds() as rounds:
        ref.load(dest, storage_reader=_CopyingReader(path))
    torch.testing.assert_close(
        dest["w"].to_local(), expected_local(mesh, [Shard(1)], shape), rtol=0, atol=0
    )
    return {"rounds": len(rounds)}
