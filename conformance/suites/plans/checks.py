"""Checks on save and load plans, independent of any planner: each returns every problem found.

Coverage is the kit's oracle (:mod:`ckptconf.conformance.kit.oracle`): counting, simple
enough to be obviously right.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, SavePlan, WriteItem

from ...kit import oracle
from ...kit.oracle import Box, cover_problems, in_bounds
from ...kit.oracle import box_text as _box
from .cases import PlanStateCase
from .states import flat_values, value_chunks

__all__ = [
    "metadata_problems",
    "dedup_problems",
    "canonical_plans",
    "plan_differences",
    "metadata_differences",
    "read_plan_problems",
    "loaded_value_problems",
]

_MAX_LISTED = 8


def metadata_problems(case: PlanStateCase, metadata: Metadata) -> list[str]:
    """The metadata describes exactly the state: keys, global sizes, dtypes, bytes, chunk tiling."""
    expected: dict[str, Any] = {t.key: (t.shape, t.dtype) for t in case.tensors}
    expected.update({".".join(p): None for p, _ in case.objects})
    return oracle.metadata_problems(expected, oracle.summarise_metadata(metadata))


def _chunk_set(entry: TensorStorageMetadata) -> Counter:
    return Counter(
        (tuple(c.offsets), tuple(c.sizes))
        for c in entry.chunks
        if not (len(c.sizes) and math.prod(c.sizes) == 0)
    )


def metadata_differences(expected: Metadata, actual: Metadata) -> list[str]:
    """Keys, entry kinds, global sizes, dtypes and (non-empty) chunks that differ."""
    want, got = expected.state_dict_metadata, actual.state_dict_metadata
    out = []
    if set(want) != set(got):
        out.append(
            f"keys differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
        )
    for key in sorted(set(want) & set(got)):
        a, b = want[key], got[key]
        if type(a) is not type(b):
            out.append(f"key {key!r}: expected {type(a).__name__}, got {type(b).__name__}")
        elif isinstance(a, TensorStorageMetadata):
            if tuple(a.size) != tuple(b.size) or a.properties.dtype != b.properties.dtype:
                out.append(
                    f"key {key!r}: expected {a.properties.dtype}{list(a.size)}, got "
                    f"{b.properties.dtype}{list(b.size)}"
                )
            elif _chunk_set(a) != _chunk_set(b):
                out.append(
                    f"key {key!r}: expected chunks {sorted(_chunk_set(a).elements())[:_MAX_LISTED]}, "
                    f"got {sorted(_chunk_set(b).elements())[:_MAX_LISTED]}"
                )
    return out


def _identity(item: WriteItem) -> tuple:
    data = item.tensor_data
    if data is None:
        return (item.index.fqn, None, None)
    return (item.index.fqn, tuple(data.chunk.offsets), tuple(data.chunk.sizes))


def _describe_identity(identity: tuple) -> str:
    fqn, offsets, sizes = identity
    return f"{fqn!r}" if offsets is None else f"{fqn!r} at {_box(offsets, sizes)}"


def _empty(identity: tuple) -> bool:
    return identity[2] is not None and len(identity[2]) > 0 and math.prod(identity[2]) == 0


def dedup_problems(
    local_plans: Sequence[SavePlan], final_plans: Sequence[SavePlan], metadata: Metadata
) -> list[str]:
    """Each chunk any rank holds is written once, by a rank that holds it; final writes tile
    every tensor exactly once and match the metadata's chunks."""
    problems: list[str] = []
    held: dict[tuple, list[int]] = defaultdict(list)
    for rank, plan in enumerate(local_plans):
        for item in plan.items:
            held[_identity(item)].append(rank)
    if len(final_plans) != len(local_plans):
        return [f"the global plan has {len(final_plans)} rank plans for {len(local_plans)} ranks"]
    writers: dict[tuple, list[int]] = defaultdict(list)
    final_chunks: dict[str, list[tuple[Box, str]]] = defaultdict(list)
    for rank, plan in enumerate(final_plans):
        for item in plan.items:
            identity = _identity(item)
            writers[identity].append(rank)
            if rank not in held.get(identity, []):
                holders = held.get(identity)
                problems.append(
                    f"rank {rank} is planned to write {_describe_identity(identity)}, which "
                    + (f"only ranks {holders} hold" if holders else "no rank holds")
                )
            if identity[1] is not None and not _empty(identity):
                final_chunks[identity[0]].append(((identity[1], identity[2]), f"rank {rank}"))
    by_index: dict[tuple, set[tuple]] = defaultdict(set)
    for identity in writers:
        by_index[identity[:2]].add(identity)
    for (fqn, offsets), identities in by_index.items():
        if len(identities) > 1:
            problems.append(
                f"{len(identities)} different chunks are written under one index ({fqn!r}, offsets "
                f"{offsets}): {sorted(_describe_identity(i) for i in identities)}"
            )
    for identity, ranks in writers.items():
        if len(ranks) > 1:
            problems.append(
                f"{_describe_identity(identity)} is written {len(ranks)} times, by ranks {ranks} "
                f"(held by ranks {held.get(identity, [])})"
            )
    for identity, ranks in held.items():
        if identity not in writers and not _empty(identity):
            problems.append(
                f"{_describe_identity(identity)}, held by ranks {ranks[:_MAX_LISTED]}"
                f"{'...' if len(ranks) > _MAX_LISTED else ''}, is written by no rank"
            )
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata):
            continue
        listed = _chunk_set(entry)
        written = Counter(box for box, _ in final_chunks.get(key, []))
        if listed != written:
            only_md = sorted((listed - written).elements())[:_MAX_LISTED]
            only_plan = sorted((written - listed).elements())[:_MAX_LISTED]
            problems.append(
                f"key {key!r}: the metadata's chunks and the written chunks differ: in the "
                f"metadata only {only_md}, written only {only_plan}"
            )
        problems += cover_problems(key, tuple(entry.size), final_chunks.get(key, []), "write items")
    return problems


def canonical_plans(plans: Iterable[SavePlan]) -> list[tuple]:
    """Per rank, the sorted ``(fqn, offsets, sizes, type)`` of its write items."""
    return [
        tuple(
            sorted(
                (repr(i.index.fqn), repr(_identity(i)[1]), repr(_identity(i)[2]), i.type.name)
                for i in plan.items
            )
        )
        for plan in plans
    ]


def plan_differences(first: list[tuple], second: list[tuple]) -> list[str]:
    """Ranks whose canonical plans differ, with the items each run alone planned."""
    if len(first) != len(second):
        return [f"the plans have {len(first)} and {len(second)} ranks"]
    out = []
    for rank, (a, b) in enumerate(zip(first, second)):
        if a != b:
            out.append(
                f"rank {rank}: only in the first plan {sorted(set(a) - set(b))[:4]}, "
                f"only in the second {sorted(set(b) - set(a))[:4]}"
            )
    return out


def _pieces(state: dict[str, Any]) -> dict[str, list[tuple[Box, torch.Tensor]]]:
    out = {}
    for key, value in flat_values(state).items():
        if isinstance(value, torch.Tensor):
            out[key] = [((o, s), view) for o, s, view in value_chunks(value)]
    return out


def read_plan_problems(
    load_plans: Sequence[LoadPlan], dest_states: Sequence[dict[str, Any]], metadata: Metadata
) -> list[str]:
    """Every destination element is read exactly once, from a saved chunk that holds it."""
    problems: list[str] = []
    for rank, (plan, state) in enumerate(zip(load_plans, dest_states)):
        pieces = _pieces(state)
        reads: dict[tuple[str, tuple], list[tuple[Box, str]]] = defaultdict(list)
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                continue
            fqn = item.dest_index.fqn
            lengths = tuple(item.lengths)
            if len(lengths) and math.prod(lengths) == 0:
                continue
            where = f"rank {rank}: read item for {fqn!r} (dest offsets {tuple(item.dest_offsets)}, lengths {lengths})"
            piece = next(
                (
                    box
                    for box, _ in pieces.get(fqn, [])
                    if box[0] == tuple(item.dest_index.offset or ())
                ),
                None,
            )
            if piece is None:
                problems.append(
                    f"{where} names destination piece {item.dest_index}, which rank {rank} does not hold"
                )
                continue
            entry = metadata.state_dict_metadata.get(item.storage_index.fqn)
            saved = None
            if isinstance(entry, TensorStorageMetadata):
                saved = next(
                    (
                        (tuple(c.offsets), tuple(c.sizes))
                        for c in entry.chunks
                        if tuple(c.offsets) == tuple(item.storage_index.offset or ())
                    ),
                    None,
                )
            if saved is None:
                problems.append(
                    f"{where} reads saved chunk {item.storage_index}, which the metadata lacks"
                )
                continue
            storage_offsets = tuple(item.storage_offsets)
            if not in_bounds(saved[1], storage_offsets, lengths):
                problems.append(
                    f"{where} reads {_box(storage_offsets, lengths)} of saved chunk {_box(*saved)}, "
                    "outside it"
                )
                continue
            source = tuple(o + s for o, s in zip(saved[0], storage_offsets))
            target = tuple(o + d for o, d in zip(piece[0], item.dest_offsets))
            if source != target:
                problems.append(
                    f"{where} copies global index {source} of saved chunk {_box(*saved)} to global "
                    f"index {target} of destination piece {_box(*piece)}"
                )
                continue
            reads[(fqn, piece[0])].append(
                ((tuple(item.dest_offsets), lengths), f"from saved chunk at {saved[0]}")
            )
        for fqn, boxes in pieces.items():
            for (offsets, sizes), _ in boxes:
                if len(sizes) and math.prod(sizes) == 0:
                    continue
                problems += [
                    f"rank {rank}, destination piece at {_box(offsets, sizes)}: {p}"
                    for p in cover_problems(fqn, sizes, reads.get((fqn, offsets), []), "reads")
                ]
    return problems


def loaded_value_problems(case: PlanStateCase, dest_states: Sequence[dict[str, Any]]) -> list[str]:
    """Every destination element holds its global index (as saved); objects equal what was saved."""
    from ckptconf.harness.simulated import index_encoded

    from ...kit.values import same_object

    problems: list[str] = []
    objects = {".".join(p): v for p, v in case.objects}
    for rank, state in enumerate(dest_states):
        flat = flat_values(state)
        for tensor in case.tensors:
            encode = index_encoded(tensor.shape)
            for offsets, sizes, view in value_chunks(flat[tensor.key]):
                if math.prod(sizes) == 0 and len(sizes):
                    continue
                want = encode(offsets, sizes).to(view.dtype)
                wrong = (view != want).nonzero()
                if len(wrong):
                    local = tuple(int(i) for i in wrong[0])
                    index = tuple(o + i for o, i in zip(offsets, local))
                    problems.append(
                        f"rank {rank}, key {tensor.key!r}, piece at {_box(offsets, sizes)}: "
                        f"{len(wrong)} wrong element(s), first at global index {index}: expected "
                        f"{want[local].item()!r}, got {view[local].item()!r}"
                    )
        for key, value in objects.items():
            if not same_object(flat.get(key), value):
                problems.append(
                    f"rank {rank}, object {key!r}: expected {value!r}, got {flat.get(key)!r}"
                )
    return problems
