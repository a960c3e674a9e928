"""Benchmark of global save planning at simulated scale: the reference against torch DCP.

For R simulated ranks holding T row-sharded tensors (``Shard(0)`` over all R ranks, 4 rows
each) and one replicated tensor, every rank's local plan is made once (:func:`local_plans`),
then each planner's coordinator ``create_global_plan`` (dedup, metadata, validation) is timed
on those same plans, best of ``repeats``. (Until 2026-11-30 each planner made its own local
plans, and DCP's planner, which does not know the simulated values, planned each as one
opaque object: its figures were for 3 objects per rank, not the shards.) Shape-only (meta) tensors: nothing is allocated or written. The ratio is
measured in one run, on one machine, so it compares like with like.

In a real world the coordinator also unpickles every rank's local plan (DCP gathers them with
``gather_object``) and pickles every rank's global plan (``scatter_object_list``); with
``wire=True`` that cost is measured too, once per planner, as ``wire_seconds``. The
reference's driver sends plans as arrays (:mod:`ckptconf.reference.compact_plan`, issue 30):
its planning is ``create_global_plan_compact`` on the decoded plans (the same local plans,
encoded by each rank) and its wire cost the coordinator's decoding of every rank's bytes and
encoding of every rank's global plan (kept positions and the generation). With
``cached=True`` the reference's planning of a second save of the same layout is timed too (a
hit of its plan cache, :mod:`ckptconf.reference.plan_cache`), beside the fresh plan of the same
run: the fresh figures are always made with the cache off.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoadPlanBench", "PlanBench", "bench_load_plan", "bench_plan", "local_plans"]


@dataclass
class PlanBench:
    """Seconds of ``create_global_plan`` for one world, reference and DCP."""

    ranks: int
    tensors: int
    chunks: int
    dcp_seconds: float
    reference_seconds: float
    dcp_wire_seconds: float = float("nan")
    reference_wire_seconds: float = float("nan")
    reference_cached_seconds: float = float("nan")

    @property
    def cached_speedup(self) -> float:
        """The reference's fresh planning over its planning of a re-save of the same layout
        (a hit of its plan cache); NaN unless measured with ``cached``."""
        return self.reference_seconds / self.reference_cached_seconds

    @property
    def speedup(self) -> float:
        """DCP's time over the reference's: above 1, the reference is faster."""
        return self.dcp_seconds / self.reference_seconds

    @property
    def wire_speedup(self) -> float:
        """DCP's planning plus (un)pickling over the reference's planning plus its array
        (de)coding (NaN unless measured with ``wire``)."""
        return (self.dcp_seconds + self.dcp_wire_seconds) / (
            self.reference_seconds + self.reference_wire_seconds
        )


def _states(ranks: int, tensors: int) -> list[dict]:
    from ckptconf.harness.simulated import mesh_values
    from torch.distributed.tensor import Replicate, Shard

    states: list[dict] = [{} for _ in range(ranks)]
    for t in range(tensors):
        for rank, value in enumerate(
            mesh_values(f"layers.{t}.w", (ranks * 4, 8), (ranks,), [Shard(0)], meta=True)
        ):
            states[rank][f"layers.{t}.w"] = value
    for rank, value in enumerate(mesh_values("emb", (16, 8), (ranks,), [Replicate()], meta=True)):
        states[rank]["emb"] = value
    return states


def local_plans(states: list[dict]) -> list:
    """Every rank's local plan: DCP's write items of the DTensor shards each rank holds
    (``SHARD`` items with chunk, properties and global size, as DCP's own planner makes for a
    DTensor; made by the reference planner, which takes the shape-only simulated values that
    DCP's planner would see as opaque objects)."""
    from ckptconf.reference import ReferenceSavePlanner
    from ckptconf.reference.compat import set_up_save_planner

    plans = []
    for rank, state in enumerate(states):
        planner = ReferenceSavePlanner()
        set_up_save_planner(planner, state, rank == 0)
        plans.append(planner.create_local_plan())
    return plans


def _global_plan_seconds(
    states: list[dict], plans: list, factory: Callable, repeats: int, wire: bool = False
) -> tuple[float, float]:
    """Best seconds of ``create_global_plan`` on ``plans``, and (if ``wire``) of the
    coordinator's unpickling of the local plans plus pickling of the global plans (else NaN)."""
    from ckptconf.reference.compat import set_up_save_planner

    best, result = float("inf"), None
    for _ in range(repeats):
        coordinator = factory()
        set_up_save_planner(coordinator, states[0], True)
        start = time.perf_counter()
        result = coordinator.create_global_plan(plans)
        best = min(best, time.perf_counter() - start)
    if not wire:
        return best, float("nan")
    gathered = [pickle.dumps(plan) for plan in plans]  # what each rank sends
    start = time.perf_counter()
    for blob in gathered:
        pickle.loads(blob)
    for plan in result[0]:
        pickle.dumps(plan)
    return best, time.perf_counter() - start


def _compact_plan_seconds(
    states: list[dict], plans: list, repeats: int, wire: bool = False
) -> tuple[float, float]:
    """The reference's driver path on ``plans``: best seconds of
    ``create_global_plan_compact`` on the decoded array plans, and (if ``wire``) of the
    coordinator's decoding of every rank's bytes plus encoding of every rank's global plan
    (else NaN). The ranks' encoding of their local plans is not timed (nor is their pickling
    for DCP)."""
    from ckptconf.reference import ReferenceSavePlanner
    from ckptconf.reference.compact_plan import (
        decode_save_plans,
        encode_global_plan,
        encode_save_plan,
    )
    from ckptconf.reference.compat import set_up_save_planner

    blobs = [encode_save_plan(plan) for plan in plans]  # what each rank sends
    best, best_wire = float("inf"), float("inf")
    for _ in range(repeats):
        coordinator = ReferenceSavePlanner(cache_plans=False)  # a fresh plan every time
        set_up_save_planner(coordinator, states[0], True)
        start = time.perf_counter()
        decoded = decode_save_plans(blobs)
        decoding = time.perf_counter() - start
        start = time.perf_counter()
        kept, _ = coordinator.create_global_plan_compact(decoded)
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        for positions in kept:
            encode_global_plan(positions, "gen-0123456789abcdef")
        best_wire = min(best_wire, decoding + time.perf_counter() - start)
    return best, best_wire if wire else float("nan")


def _cached_plan_seconds(states: list[dict], plans: list, repeats: int) -> float:
    """Best seconds of the reference coordinator's planning of a re-save of ``plans``' layout
    (new checksums, the same layout): ``create_global_plan_compact`` hitting a plan cache that
    the first save filled (the digest of every rank's layout, the lookup, the replica
    comparison, this save's copy of the metadata). Decoding and encoding cost what they cost
    a fresh plan (the ``wire`` column)."""
    from ckptconf.reference import ReferenceSavePlanner
    from ckptconf.reference.compact_plan import decode_save_plans, encode_save_plan
    from ckptconf.reference.compat import set_up_save_planner
    from ckptconf.reference.plan_cache import PlanCache

    decoded = decode_save_plans([encode_save_plan(plan) for plan in plans])
    cache = PlanCache()
    best = float("inf")
    for attempt in range(repeats + 1):  # the first one plans and fills the cache
        coordinator = ReferenceSavePlanner()
        coordinator.plan_cache = cache
        set_up_save_planner(coordinator, states[0], True)
        start = time.perf_counter()
        coordinator.create_global_plan_compact(decoded)
        if attempt:
            best = min(best, time.perf_counter() - start)
    if cache.hits != repeats:
        raise RuntimeError(f"{cache.hits} hits of the plan cache in {repeats} re-saves")
    return best


def bench_plan(
    worlds: tuple[int, ...] = (256, 1024),
    tensors: int = 100,
    repeats: int = 2,
    wire: bool = False,
    dcp_max_ranks: int = 4096,
    cached: bool = False,
) -> list[PlanBench]:
    """``create_global_plan`` seconds of DCP's ``DefaultSavePlanner`` and the reference's
    ``ReferenceSavePlanner`` per world size in ``worlds`` (and the coordinator's pickling of
    the plans, if ``wire``; and the reference's planning of a re-save of the same layout, a
    hit of its plan cache, if ``cached``). DCP is not run on worlds above ``dcp_max_ranks``
    (its seconds are NaN there): at 10,000 ranks it takes minutes."""
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    out = []
    for ranks in worlds:
        states = _states(ranks, tensors)
        plans = local_plans(states)
        dcp, dcp_wire = float("nan"), float("nan")
        if ranks <= dcp_max_ranks:
            dcp, dcp_wire = _global_plan_seconds(states, plans, DefaultSavePlanner, repeats, wire)
        reference, ref_wire = _compact_plan_seconds(states, plans, repeats, wire)
        hit = _cached_plan_seconds(states, plans, repeats) if cached else float("nan")
        chunks = ranks * tensors + ranks
        out.append(PlanBench(ranks, tensors, chunks, dcp, reference, dcp_wire, ref_wire, hit))
    return out


@dataclass
class LoadPlanBench:
    """Seconds of load planning for one world, DCP and reference: one rank's local plan
    (``set_up_planner`` and ``create_local_plan``) and the coordinator's global plan."""

    ranks: int
    chunks: int
    dcp_local: float
    reference_local: float
    dcp_global: float
    reference_global: float
    read_items: int
    shared_reads: float = float("nan")
    """Seconds of the reference load's shared-reads pass over the R plans (its driver runs it
    after the global plan; here every chunk is read whole, so nothing is shared)."""

    @property
    def speedup(self) -> float:
        """DCP's local planning time over the reference's."""
        return self.dcp_local / self.reference_local


def _destination(ranks: int, tensors: int, mesh):
    """What the middle rank loads into: its ``Shard(0)`` DTensor of each tensor (4 rows of 8),
    and the replicated one as a plain tensor."""
    import torch
    from torch.distributed.tensor import DTensor, Shard

    state = {}
    for t in range(tensors):
        state[f"layers.{t}.w"] = DTensor.from_local(
            torch.zeros(4, 8), mesh, [Shard(0)], run_check=False,
            shape=torch.Size([ranks * 4, 8]), stride=(8, 1),
        )  # fmt: skip
    state["emb"] = torch.zeros(16, 8)
    return state


def _shared_reads_seconds(metadata, plans, repeats: int) -> float:
    """Best seconds of :func:`~ckptconf.reference.shared_reads.plan_shared_reads` on ``plans``
    against ``metadata`` given a reference-format region for every saved chunk."""
    import dataclasses

    from ckptconf.reference.metadata_format import Region
    from ckptconf.reference.shared_reads import plan_shared_reads
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    regions = {}
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            size = entry.properties.dtype.itemsize
            for chunk in entry.chunks:
                length = size * math.prod(chunk.sizes)
                regions[MetadataIndex(key, chunk.offsets)] = Region(
                    "r0.bin", 0, length, 4 << 20, (0,), "xxh3_64"
                )
    with_regions = dataclasses.replace(metadata, storage_data=regions)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        plan_shared_reads(plans, with_regions)
        best = min(best, time.perf_counter() - start)
    return best


def bench_load_plan(
    worlds: tuple[int, ...] = (256, 1024), tensors: int = 100, repeats: int = 2
) -> list[LoadPlanBench]:
    """Load planning of the state :func:`bench_plan` saves, resumed on the same layout: the
    middle rank's local plan against the checkpoint's metadata (R chunks per tensor), and the
    coordinator's ``create_global_plan`` on R plans like it; DCP's ``DefaultLoadPlanner`` and
    the reference's ``ReferenceLoadPlanner`` on the same metadata and destinations.

    The rank's DTensors need a process group of R ranks: torch's fake process group (from its
    testing package) gives one in this process, with no communication.
    """
    import torch.distributed as dist
    from ckptconf.reference import ReferenceLoadPlanner, ReferenceSavePlanner
    from ckptconf.reference.compat import set_up_save_planner
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("bench_load_plan starts its own (fake) process group; one is running")
    out = []
    for ranks in worlds:
        states = _states(ranks, tensors)
        coordinator = ReferenceSavePlanner()
        set_up_save_planner(coordinator, states[0], True)
        _, metadata = coordinator.create_global_plan(local_plans(states))
        del states
        dist.init_process_group("fake", store=FakeStore(), rank=ranks // 2, world_size=ranks)
        try:
            mesh = init_device_mesh("cpu", (ranks,))
            times = {}
            for name, factory in (("dcp", DefaultLoadPlanner), ("reference", ReferenceLoadPlanner)):
                local = glob = float("inf")
                for _ in range(repeats):
                    planner, state = factory(), _destination(ranks, tensors, mesh)
                    start = time.perf_counter()
                    planner.set_up_planner(state, metadata, False)
                    plan = planner.create_local_plan()
                    local = min(local, time.perf_counter() - start)
                    coordinator = factory()
                    coordinator.set_up_planner(_destination(ranks, tensors, mesh), metadata, True)
                    start = time.perf_counter()
                    coordinator.create_global_plan([plan] * ranks)
                    glob = min(glob, time.perf_counter() - start)
                times[name] = (local, glob, len(plan.items))
            shared = _shared_reads_seconds(metadata, [plan] * ranks, repeats)
        finally:
            dist.destroy_process_group()
        out.append(
            LoadPlanBench(
                ranks, ranks * tensors + 1, times["dcp"][0], times["reference"][0],
                times["dcp"][1], times["reference"][1], times["reference"][2], shared,
            )
        )  # fmt: skip
    return out
