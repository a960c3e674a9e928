"""Save plans on the wire as arrays, and the coordinator's planning on them.

DCP's driver gathers every rank's ``SavePlan`` with ``gather_object`` and scatters the global
plans with ``scatter_object_list``: one pickled Python object per write item each way. At 1,024
ranks of 100 tensors, unpickling the local plans and pickling the global ones costs the
coordinator more than planning (``ckptconf bench plan --wire``), and it unpickles whatever a
rank sent. The reference's driver sends arrays instead (ByteCheckpoint's compact plans, NSDI
'25): each rank encodes its local plan with :func:`encode_save_plan`, the coordinator decodes
them with :func:`decode_save_plans` (bytes checked as untrusted input: nothing is unpickled),
plans on arrays (:func:`compact_global_plan`, the same :func:`~.global_plan.plan_keys` the
object path runs) and sends each rank only which of its items it keeps and the generation to
write into (:func:`encode_global_plan`); the rank rebuilds its ``SavePlan`` from the one it
made (:func:`finish_save_plan`). DCP's ``SavePlan`` objects appear only where a DCP planner
or storage writer is plugged in (the driver then gathers the objects as DCP does), and on the
coordinator when the array planning gives up: :meth:`CompactSavePlan.to_save_plan` rebuilds
the plans for the readable steps, which name every problem.

A local plan on the wire (all integers little-endian)::

    b"CKPTPLN1", n_items: u64, table_len: u64, paths_len: u64
    table: JSON {"keys": [str], "kinds": [0 tensor | 1 shard | 2 object], "dtypes": [str|null],
                 "requires_grad": [bool], "sizes": [[int]], "checksums": bool}
    paths: JSON {key: [str | int, ...]}  (the planner's flattening paths)
    item_keys: i32[n_items]              (index into the table's keys, in plan order)
    offsets: i64[sum of ndims], lengths: i64[sum of ndims]   (each item's chunk)
    if checksums: checksums u64[n_items], has_checksum u8[n_items]

The table and paths are the same bytes on every rank of an SPMD job: the coordinator decodes
each distinct one once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    SavePlan,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

from .dedup import write_item_key
from .global_plan import KeyItems, check_size, plan_keys
from .metadata_format import DTYPES, dtype_name

__all__ = [
    "CompactSavePlan",
    "PlanWireError",
    "ReplicaSets",
    "compact_global_plan",
    "decode_global_plan",
    "decode_save_plans",
    "encode_global_plan",
    "encode_save_plan",
    "finish_save_plan",
    "merged_paths",
]

_MAGIC = b"CKPTPLN1"
_GLOBAL_MAGIC = b"CKPTGPL1"
_HEADER = struct.Struct("<8sQQQ")
_KINDS = (WriteItemType.TENSOR, WriteItemType.SHARD, WriteItemType.BYTE_IO)
_OBJECT = 2
_MAX = 2**62
_GENERATION = re.compile(r"^gen-[A-Za-z0-9_.-]{1,200}$")


class PlanWireError(ValueError):
    """Plan bytes off the wire that are not a plan of this format (names rank and field)."""


@dataclasses.dataclass(frozen=True)
class _Table:
    """A rank's keys and what every item of each key shares."""

    keys: list[str]
    kinds: list[int]
    dtypes: list[torch.dtype | None]
    requires_grad: list[bool]
    sizes: list[tuple[int, ...]]
    ndims: np.ndarray  # (keys,) int64
    checksums: bool


@dataclasses.dataclass(frozen=True)
class CompactSavePlan:
    """One rank's local save plan as arrays (decoded, checked).

    ``item_keys``: ``(n,)`` int32 index into ``table.keys`` of each item, in plan order;
    ``offsets`` and ``lengths``: each item's chunk offsets and sizes in elements, flat int64
    (an item has as many as its key's dims; objects none); ``checksums`` (``(n,)`` uint64) and
    ``has_checksum`` (``(n,)`` bool) where the rank verified replicas, else ``None``;
    ``paths``: the planner's flattening paths; ``layout``: the bytes that define the plan but
    not the data (everything but the checksums), for plan caching.
    """

    table: _Table
    paths: dict[str, tuple]
    item_keys: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    checksums: np.ndarray | None
    has_checksum: np.ndarray | None
    layout: bytes

    def to_save_plan(self) -> SavePlan:
        """The DCP ``SavePlan`` this plan was encoded from (equal item for item)."""
        table = self.table
        starts = np.concatenate(([0], np.cumsum(table.ndims[self.item_keys])))
        offsets, lengths = self.offsets.tolist(), self.lengths.tolist()
        items, sums = [], {}
        for position, k in enumerate(self.item_keys.tolist()):
            fqn = table.keys[k]
            if table.kinds[k] == _OBJECT:
                item = WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO)
            else:
                a, b = int(starts[position]), int(starts[position + 1])
                chunk = ChunkStorageMetadata(
                    offsets=torch.Size(offsets[a:b]), sizes=torch.Size(lengths[a:b])
                )
                props = TensorProperties(
                    dtype=table.dtypes[k], requires_grad=table.requires_grad[k]
                )
                item = WriteItem(
                    index=MetadataIndex(fqn, chunk.offsets),
                    type=_KINDS[table.kinds[k]],
                    tensor_data=TensorWriteData(
                        chunk=chunk, properties=props, size=torch.Size(table.sizes[k])
                    ),
                )
            items.append(item)
            if self.has_checksum is not None and self.has_checksum[position]:
                sums[write_item_key(item)] = int(self.checksums[position])  # type: ignore[index]
        planner_data: dict[str, Any] = {"paths": dict(self.paths)}
        if table.checksums:
            planner_data["checksums"] = sums
        return SavePlan(items, planner_data=planner_data)


def encode_save_plan(plan: SavePlan) -> bytes:
    """``plan`` (a :class:`~.save_planner.ReferenceSavePlanner` local plan) as bytes.

    Raises ``ValueError`` naming the item for a plan this format cannot carry: planner data
    other than the reference planner's (``paths``, ``checksums``), a tensor item whose index
    offset is not its chunk's, items of one key disagreeing on kind, dtype, global size or
    ``requires_grad``, or ``storage_data`` set.
    """
    data = plan.planner_data or {}
    if not isinstance(data, dict) or set(data) - {"paths", "checksums"}:
        raise ValueError(f"planner data {sorted(data) if isinstance(data, dict) else data!r}")
    if plan.storage_data is not None:
        raise ValueError("a local plan with storage data")
    sums = data.get("checksums")
    index_of: dict[str, int] = {}
    keys: list[str] = []
    kinds, dtypes, grads, sizes = [], [], [], []
    item_keys, offsets, lengths = [], [], []
    checksums, has = [], []
    for item in plan.items:
        fqn = item.index.fqn
        kind = _KINDS.index(item.type)
        tensor = item.tensor_data
        if kind == _OBJECT:
            if tensor is not None or item.index.offset is not None:
                raise ValueError(f"object item {item.index} carries tensor data or offsets")
            shape: tuple[int, ...] = ()
            dtype, grad = None, False
        else:
            if tensor is None or item.index.offset != tensor.chunk.offsets:
                raise ValueError(f"tensor item {item.index} whose index is not its chunk's")
            shape = tuple(tensor.size)
            dtype, grad = dtype_name(tensor.properties.dtype), bool(tensor.properties.requires_grad)
            if len(tensor.chunk.offsets) != len(shape) or len(tensor.chunk.sizes) != len(shape):
                raise ValueError(f"tensor item {item.index}: chunk dims differ from the size's")
            offsets.extend(tensor.chunk.offsets)
            lengths.extend(tensor.chunk.sizes)
        k = index_of.get(fqn)
        if k is None:
            k = index_of[fqn] = len(keys)
            keys.append(fqn)
            kinds.append(kind)
            dtypes.append(dtype)
            grads.append(grad)
            sizes.append(list(shape))
        elif (kinds[k], dtypes[k], grads[k], tuple(sizes[k])) != (kind, dtype, grad, shape):
            raise ValueError(f"items of key {fqn!r} disagree on kind, dtype or size")
        item_keys.append(k)
        if sums is not None:
            found = sums.get(write_item_key(item))
            checksums.append(0 if found is None else found)
            has.append(found is not None)
    table = json.dumps(
        {
            "keys": keys,
            "kinds": kinds,
            "dtypes": dtypes,
            "requires_grad": grads,
            "sizes": sizes,
            "checksums": sums is not None,
        },
        separators=(",", ":"),
    ).encode()
    paths = json.dumps(
        {k: list(v) for k, v in (data.get("paths") or {}).items()}, separators=(",", ":")
    ).encode()
    parts = [
        _HEADER.pack(_MAGIC, len(plan.items), len(table), len(paths)),
        table,
        paths,
        np.asarray(item_keys, dtype="<i4").tobytes(),
        np.asarray(offsets, dtype="<i8").tobytes(),
        np.asarray(lengths, dtype="<i8").tobytes(),
    ]
    if sums is not None:
        parts.append(np.asarray(checksums, dtype="<u8").tobytes())
        parts.append(np.asarray(has, dtype=np.uint8).tobytes())
    return b"".join(parts)


def _fail(rank: int, what: str) -> PlanWireError:
    return PlanWireError(f"rank {rank}'s save plan off the wire: {what}")


def _json(data: bytes, rank: int, field: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(rank, f"{field} is not UTF-8 JSON ({exc})") from None


def _ints(values: Any, rank: int, field: str) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v < _MAX for v in values):
        raise _fail(rank, f"{field}: expected a list of integers in [0, 2**62)")
    return values


def _parse_table(data: bytes, rank: int) -> _Table:
    obj = _json(data, rank, "table")
    if not isinstance(obj, dict) or set(obj) != {
        "keys", "kinds", "dtypes", "requires_grad", "sizes", "checksums",
    }:  # fmt: skip
        raise _fail(
            rank, "table: expected the fields keys, kinds, dtypes, requires_grad, sizes, checksums"
        )
    keys, kinds, dtypes = obj["keys"], obj["kinds"], obj["dtypes"]
    grads, sizes, checksums = obj["requires_grad"], obj["sizes"], obj["checksums"]
    n = len(keys) if isinstance(keys, list) else -1
    if not all(isinstance(v, list) and len(v) == n for v in (kinds, dtypes, grads, sizes)):
        raise _fail(rank, "table: keys, kinds, dtypes, requires_grad and sizes differ in length")
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != n:
        raise _fail(rank, "table.keys: expected distinct strings")
    if type(checksums) is not bool or not all(type(g) is bool for g in grads):
        raise _fail(rank, "table: checksums and requires_grad must be booleans")
    out_dtypes: list[torch.dtype | None] = []
    out_sizes: list[tuple[int, ...]] = []
    for key, kind, dtype, size in zip(keys, kinds, dtypes, sizes):
        if kind not in (0, 1, 2) or type(kind) is not int:
            raise _fail(rank, f"table: key {key!r} has kind {kind!r}, expected 0, 1 or 2")
        size = tuple(_ints(size, rank, f"table.sizes of key {key!r}"))
        if kind == _OBJECT:
            if dtype is not None or size:
                raise _fail(rank, f"table: object key {key!r} has a dtype or a size")
            out_dtypes.append(None)
        else:
            if dtype not in DTYPES:
                raise _fail(rank, f"table: key {key!r} has unknown dtype {dtype!r}")
            out_dtypes.append(DTYPES[dtype])
        out_sizes.append(size)
    ndims = np.asarray([len(s) for s in out_sizes], dtype=np.int64)
    return _Table(keys, kinds, out_dtypes, grads, out_sizes, ndims, checksums)


def _parse_paths(data: bytes, rank: int) -> dict[str, tuple]:
    obj = _json(data, rank, "paths")
    if not isinstance(obj, dict):
        raise _fail(rank, "paths: expected a JSON object")
    out = {}
    for key, parts in obj.items():
        if not isinstance(parts, list) or not all(type(p) in (str, int) for p in parts):
            raise _fail(rank, f"paths of key {key!r}: expected a list of strings and integers")
        out[key] = tuple(parts)
    return out


def decode_save_plans(blobs: Sequence[bytes]) -> list[CompactSavePlan]:
    """Every rank's local plan (rank ``i``'s bytes at ``i``) off the wire, checked.

    A table or paths section that several ranks sent as the same bytes is parsed once and
    shared. Raises :class:`PlanWireError` naming the rank and the field for bytes that are not
    such a plan: wrong magic or lengths, JSON of the wrong shape, an unknown dtype, an item
    naming a key the table does not have, negative or huge sizes.
    """
    tables: dict[bytes, _Table] = {}
    paths: dict[bytes, dict[str, tuple]] = {}
    out = []
    for rank, blob in enumerate(blobs):
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise _fail(rank, f"{len(blob)} bytes, shorter than the header")
        magic, n, table_len, paths_len = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise _fail(rank, f"starts with {magic!r}, expected {_MAGIC!r}")
        at = _HEADER.size
        if n > len(blob) or table_len + paths_len > len(blob) - at:
            raise _fail(rank, "section lengths run past the end")
        table_bytes = blob[at : at + table_len]
        at += table_len
        paths_bytes = blob[at : at + paths_len]
        at += paths_len
        table = tables.get(table_bytes)
        if table is None:
            table = tables[table_bytes] = _parse_table(table_bytes, rank)
        path_map = paths.get(paths_bytes)
        if path_map is None:
            path_map = paths[paths_bytes] = _parse_paths(paths_bytes, rank)
        if len(blob) < at + 4 * n:
            raise _fail(rank, f"{n} items need {4 * n} bytes of keys, the plan ends first")
        item_keys = np.frombuffer(blob, dtype="<i4", count=n, offset=at)
        at += 4 * n
        if n and (item_keys.min() < 0 or item_keys.max() >= len(table.keys)):
            raise _fail(
                rank, f"an item names key number {item_keys.max()}, the table has {len(table.keys)}"
            )
        flat = int(table.ndims[item_keys].sum()) if n else 0
        sums = 9 * n if table.checksums else 0
        if len(blob) != at + 16 * flat + sums:
            raise _fail(rank, f"{len(blob)} bytes, expected {at + 16 * flat + sums} for {n} items")
        offsets = np.frombuffer(blob, dtype="<i8", count=flat, offset=at)
        lengths = np.frombuffer(blob, dtype="<i8", count=flat, offset=at + 8 * flat)
        if flat and (
            min(offsets.min(), lengths.min()) < 0 or max(offsets.max(), lengths.max()) >= _MAX
        ):
            raise _fail(rank, "chunk offsets and sizes must lie in [0, 2**62)")
        checksums = has = None
        if table.checksums:
            at += 16 * flat
            checksums = np.frombuffer(blob, dtype="<u8", count=n, offset=at)
            has = np.frombuffer(blob, dtype=np.uint8, count=n, offset=at + 8 * n).astype(bool)
        layout = blob[: len(blob) - sums]
        out.append(
            CompactSavePlan(table, path_map, item_keys, offsets, lengths, checksums, has, layout)
        )
    return out


@dataclasses.dataclass(frozen=True)
class ReplicaSets:
    """Which items of a world's local plans are copies of one chunk (one key, the same offsets
    and sizes; an object key's items are all copies): what the replica check compares.

    ``rows``: the items' indices among every rank's items in rank order; ``sets``: each row's
    set, non-decreasing (a set's rows are adjacent). Only sets of two or more items are kept.
    It depends on the layout, not the data: a cached plan keeps it, and every save compares its
    own checksums with it (:meth:`differ`).
    """

    rows: np.ndarray
    sets: np.ndarray

    @classmethod
    def of(
        cls, chunks: Sequence[tuple[KeyItems, np.ndarray, np.ndarray]], rank_starts: np.ndarray
    ) -> ReplicaSets:
        """From :func:`~.global_plan.plan_keys`' chunks of each key with replicas (each row's
        chunk id and each chunk's count), with ``rank_starts[r]`` the index of rank r's first
        item."""
        rows, sets, base = [], [], 0
        for entry, ids, counts in chunks:
            many = counts[ids] > 1
            flat = rank_starts[entry.ranks[many]] + entry.positions[many]
            labels = ids[many]
            order = np.argsort(labels, kind="stable")
            rows.append(flat[order])
            sets.append(labels[order] + base)
            base += len(counts)
        empty = np.zeros(0, dtype=np.int64)
        return cls(np.concatenate(rows) if rows else empty, np.concatenate(sets) if sets else empty)

    def differ(self, plans: Sequence[CompactSavePlan]) -> bool:
        """Whether two copies of one chunk, both with a checksum, carry different checksums in
        ``plans`` (local plans of the layout these sets were made for)."""
        if not len(self.rows):
            return False
        if any(p.checksums is None for p in plans):
            raise ValueError("replica sets compared with plans that carry no checksums")
        checksums = np.concatenate([p.checksums for p in plans])  # type: ignore[misc]
        has = np.concatenate([p.has_checksum for p in plans])  # type: ignore[misc]
        if len(checksums) <= int(self.rows.max()):
            raise ValueError("replica sets compared with plans of another layout")
        verified = has[self.rows]
        rows, sets = self.rows[verified], self.sets[verified]
        sums = checksums[rows]
        return bool(((sets[1:] == sets[:-1]) & (sums[1:] != sums[:-1])).any())


def merged_paths(plans: Sequence[CompactSavePlan]) -> dict[str, tuple]:
    """The ranks' paths merged as ``dict.update`` in rank order would (keys in order of first
    appearance, each one's value from the last rank having it), each distinct map once."""
    first: dict[int, dict] = {}
    last: dict[int, tuple[int, dict]] = {}
    for rank, plan in enumerate(plans):
        first.setdefault(id(plan.paths), plan.paths)
        last[id(plan.paths)] = (rank, plan.paths)
    out: dict[str, tuple] = {}
    for paths in first.values():
        out.update(paths)
    for _, paths in sorted(last.values(), key=lambda v: v[0]):
        out.update(paths)
    return out


def compact_global_plan(
    plans: Sequence[CompactSavePlan], *, dedup: bool, verify_replicas: bool, planner_data: object
) -> tuple[list[np.ndarray | None], Metadata, ReplicaSets | None] | None:
    """What :meth:`ReferenceSavePlanner.create_global_plan` gives for these plans, on arrays:
    each rank's kept positions (``None``: all its items), the metadata, and (where replicas
    are verified) which items are copies of one chunk, for a cached plan's later saves to
    compare; ``None`` where the readable steps must decide (items of one key disagreeing on
    kind, dtype or size, replicas whose checksums differ, and whatever
    :func:`~.global_plan.plan_keys` gives up on)."""
    with _gc_paused():
        return _compact_global_plan(plans, dedup, verify_replicas, planner_data)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic collector off while the coordinator builds its plans and metadata: they
    are a million acyclic objects at 10,000 ranks, and each collection they trigger walks every
    object the process holds (a training process: its model; the benchmark: the local plans),
    which at 10,000 ranks cost more than the planning. Reference counting still frees them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _compact_global_plan(plans, dedup, verify_replicas, planner_data):
    registry: dict[str, int] = {}
    key_rows: list[tuple[int, int]] = []  # per global key: (rank, table index) of its first item
    mapping: dict[int, np.ndarray] = {}
    for rank, plan in enumerate(plans):
        table = plan.table
        if id(table) in mapping:
            continue
        ids = np.empty(len(table.keys), dtype=np.int64)
        for k, fqn in enumerate(table.keys):
            g = registry.get(fqn)
            if g is None:
                g = registry[fqn] = len(key_rows)
                key_rows.append((rank, k))
            else:
                first_rank, first_k = key_rows[g]
                other = plans[first_rank].table
                if (
                    (table.kinds[k] == _OBJECT) != (other.kinds[first_k] == _OBJECT)
                    or table.dtypes[k] != other.dtypes[first_k]
                    or table.sizes[k] != other.sizes[first_k]
                ):
                    return None
            ids[k] = g
        mapping[id(table)] = ids
    counts = np.asarray([len(p.item_keys) for p in plans], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return None
    gids = np.concatenate([mapping[id(p.table)][p.item_keys] for p in plans])
    ranks = np.repeat(np.arange(len(plans), dtype=np.int64), counts)
    rank_starts = np.concatenate(([0], np.cumsum(counts)))
    positions = np.arange(total, dtype=np.int64) - np.repeat(rank_starts[:-1], counts)
    key_ndims = np.asarray([plans[r].table.ndims[k] for r, k in key_rows], dtype=np.int64)
    item_ndims = key_ndims[gids]
    flat_starts = np.cumsum(item_ndims) - item_ndims
    offsets = np.concatenate([p.offsets for p in plans])
    lengths = np.concatenate([p.lengths for p in plans])
    verify = verify_replicas and all(p.checksums is not None for p in plans)
    order = np.argsort(gids, kind="stable")
    bounds = np.searchsorted(gids[order], np.arange(len(key_rows) + 1))
    keys = []
    made: dict[tuple, ChunkStorageMetadata] = {}
    for g, (first_rank, first_k) in enumerate(key_rows):
        rows = order[bounds[g] : bounds[g + 1]]
        table = plans[first_rank].table
        fqn = table.keys[first_k]
        head = _head(plans, ranks[rows], positions[rows], table.sizes[first_k])
        if table.kinds[first_k] == _OBJECT:
            entry = KeyItems(fqn, True, ranks[rows], positions[rows], head=head)
        else:
            size = table.sizes[first_k]
            if not check_size(size):
                return None
            columns = flat_starts[rows][:, None] + np.arange(len(size))
            lows, extents = offsets[columns], lengths[columns]
            entry = KeyItems(
                fqn, False, ranks[rows], positions[rows], lows, extents, size,
                table.dtypes[first_k], chunks=_chunks(lows, extents, made), head=head,
            )  # fmt: skip
        keys.append(entry)
    chunks: list[tuple[KeyItems, np.ndarray, np.ndarray]] | None = [] if verify else None
    planned = plan_keys(
        keys, len(plans), dedup=dedup, planner_data=planner_data, replica_chunks=chunks
    )
    if planned is None:
        return None
    replicas = None if chunks is None else ReplicaSets.of(chunks, rank_starts)
    if replicas is not None and replicas.differ(plans):
        return None
    dropped, metadata = planned
    kept: list[np.ndarray | None] = []
    for rank, count in enumerate(counts.tolist()):
        gone = dropped.get(rank)
        kept.append(None if not gone else np.delete(np.arange(count), sorted(gone)))
    return kept, metadata, replicas


def _head(plans, ranks: np.ndarray, positions: np.ndarray, size: tuple[int, ...]):
    def head(row: int) -> tuple[torch.Size, bool]:
        plan = plans[int(ranks[row])]
        k = int(plan.item_keys[int(positions[row])])
        return torch.Size(size), plan.table.requires_grad[k]

    return head


def _chunks(lows: np.ndarray, extents: np.ndarray, made: dict):
    """The metadata chunks of rows of one key. ``torch.Size`` costs about 3 us to make, so one
    chunk object is made per distinct box, shared by every key with that box, and a key whose
    boxes are those of an earlier key (in an SPMD job, the many weights sharded alike) gets a
    copy of that key's list (``made`` holds both): the object path likewise puts the plans'
    own chunk objects in the metadata."""

    def chunks(rows: np.ndarray) -> list[ChunkStorageMetadata]:
        low, extent = np.ascontiguousarray(lows[rows]), np.ascontiguousarray(extents[rows])
        layout = (low.shape, low.tobytes(), extent.tobytes())
        known = made.get(layout)  # type: ignore[call-overload]
        if known is not None:  # a key sharded as one before (an SPMD model's many weights)
            return list(known)
        out = []
        for box in zip(map(tuple, low.tolist()), map(tuple, extent.tolist())):
            chunk = made.get(box)
            if chunk is None:
                chunk = made[box] = ChunkStorageMetadata(
                    offsets=torch.Size(box[0]), sizes=torch.Size(box[1])
                )
            out.append(chunk)
        made[layout] = out  # type: ignore[index]
        return list(out)

    return chunks


def encode_global_plan(kept: np.ndarray | None, generation: str) -> bytes:
    """One rank's part of the global plan: the positions of its local items it writes
    (``None``: all) and the generation folder it writes into."""
    header = json.dumps({"generation": generation, "all": kept is None}).encode()
    positions = b"" if kept is None else np.asarray(kept, dtype="<i4").tobytes()
    return _GLOBAL_MAGIC + struct.pack("<Q", len(header)) + header + positions


def decode_global_plan(blob: bytes, items: int) -> tuple[np.ndarray | None, str]:
    """The kept positions (``None``: all ``items``) and generation of :func:`encode_global_plan`
    bytes, checked: ``PlanWireError`` unless the positions rise strictly within ``[0, items)``
    and the generation is a generation folder name."""
    blob = bytes(blob)
    if len(blob) < 16 or blob[:8] != _GLOBAL_MAGIC:
        raise PlanWireError(f"the global plan off the wire does not start with {_GLOBAL_MAGIC!r}")
    (length,) = struct.unpack_from("<Q", blob, 8)
    if length > len(blob) - 16:
        raise PlanWireError("the global plan's header runs past its end")
    try:
        header = json.loads(blob[16 : 16 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanWireError(f"the global plan's header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict) or set(header) != {"generation", "all"}:
        raise PlanWireError("the global plan's header: expected the fields generation and all")
    generation, everything = header["generation"], header["all"]
    if not isinstance(generation, str) or not _GENERATION.match(generation):
        raise PlanWireError(f"the global plan names generation {generation!r}, not gen-<id>")
    rest = blob[16 + length :]
    if everything is True and not rest:
        return None, generation
    if everything is not False or len(rest) % 4:
        raise PlanWireError("the global plan's kept positions are not int32 values")
    kept = np.frombuffer(rest, dtype="<i4")
    if len(kept) and (kept[0] < 0 or kept[-1] >= items or (np.diff(kept) <= 0).any()):
        raise PlanWireError(
            f"the global plan's kept positions must rise strictly within [0, {items})"
        )
    return kept, generation


def finish_save_plan(local: SavePlan, kept: np.ndarray | None, storage_data: Any) -> SavePlan:
    """This rank's global plan: the ``kept`` items of its ``local`` plan, with the writer's
    ``storage_data`` (what the object path's dedup and writer give)."""
    items = local.items if kept is None else [local.items[p] for p in kept.tolist()]
    return dataclasses.replace(
        local, items=list(items), planner_data=None, storage_data=storage_data
    )
