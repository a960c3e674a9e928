"""The reference save planner."""

from __future__ import annotations

import dataclasses
import io
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import (
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

from .checksums import DEFAULT_ALGORITHM, checksum
from .compact_plan import CompactSavePlan, compact_global_plan, merged_paths
from .dedup import dedup_save_plans, write_item_key
from .errors import PlanValidationError
from .flatten import flatten_state_dict
from .global_plan import fast_global_plan
from .plan_cache import PLAN_CACHE, PlanCache
from .plan_metadata import build_metadata
from .serialization import encode_object
from .state_values import (
    global_size,
    is_sharded_value,
    is_tensor_value,
    tensor_bytes,
    tensor_pieces,
    value_dtype,
)
from .validation import validate_global_plan

__all__ = ["ReferenceSavePlanner"]


class ReferenceSavePlanner(SavePlanner):
    """Plans a save of nested state dicts with tensors, DTensors, ShardedTensors and objects.

    Args:
        dedup: keep one copy of chunks that several ranks hold (plain tensors, objects,
            replicated DTensor chunks), chosen deterministically and balanced by bytes.
        verify_replicas: before dedup, compare a checksum (XXH3-64) of every replica and fail
            the save naming key, offsets and ranks if replicas that should be equal differ
            (objects under one key included). On by default, the configuration the suite
            certifies: it reads each rank's data once more while planning (``ckptconf bench
            io --verify-replicas`` measures the cost).
        flatten: flatten nested dicts and lists into dotted keys (DCP's keys).
        cache_plans: on the coordinator, reuse the global plan of a layout planned before
            (:mod:`~ckptconf.reference.plan_cache`; ByteCheckpoint's plan caching, DCP's
            ``enable_plan_caching``), keyed on every rank's whole layout, the world size and
            these options; replicas are still compared on every save. On by default, the
            configuration the suite certifies. Plans travel as arrays only across processes,
            so one process's saves never use it.
    """

    def __init__(
        self,
        *,
        dedup: bool = True,
        verify_replicas: bool = True,
        flatten: bool = True,
        cache_plans: bool = True,
    ):
        self.dedup = dedup
        self.verify_replicas = verify_replicas
        self.flatten = flatten
        self.plan_cache: PlanCache | None = PLAN_CACHE if cache_plans else None
        """Where this planner looks up and keeps global plans (``None``: it plans every save)."""

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        storage_meta: StorageMeta | None = None,
        is_coordinator: bool = False,
    ) -> None:
        """Take the state dict to save."""
        if self.flatten:
            self.values, self.paths = flatten_state_dict(state_dict)
        else:
            self.values, self.paths = dict(state_dict), {k: (k,) for k in state_dict}
        self.storage_meta = storage_meta
        self.is_coordinator = is_coordinator
        self._resolved: dict[MetadataIndex, Any] = {}

    def create_local_plan(self) -> SavePlan:
        """One write item per tensor piece this rank holds and per object."""
        items: list[WriteItem] = []
        for key, value in self.values.items():
            if not is_tensor_value(value):
                index = MetadataIndex(key)
                items.append(WriteItem(index=index, type=WriteItemType.BYTE_IO))
                # encoded now: refused here if no safe load could read it, and the bytes
                # written are the object as it was when the save planned
                self._resolved[index] = encode_object(value, key=key)
                continue
            kind = WriteItemType.SHARD if is_sharded_value(value) else WriteItemType.TENSOR
            props = TensorProperties(
                dtype=value_dtype(value), requires_grad=bool(getattr(value, "requires_grad", False))
            )
            size = global_size(value)
            for piece in tensor_pieces(key, value):
                items.append(
                    WriteItem(
                        index=piece.index,
                        type=kind,
                        tensor_data=TensorWriteData(chunk=piece.chunk, properties=props, size=size),
                    )
                )
                self._resolved[piece.index] = piece.view
        planner_data: dict[str, Any] = {"paths": self.paths}
        if self.verify_replicas:
            planner_data["checksums"] = {
                write_item_key(item): checksum(DEFAULT_ALGORITHM, self._payload(item))
                for item in items
                if not self._is_shape_only(item)  # meta tensors: planning only, nothing to compare
            }
        self.plan = SavePlan(items, planner_data=planner_data)
        return self.plan

    def _is_shape_only(self, item: WriteItem) -> bool:
        value = self._resolved[item.index]
        return isinstance(value, torch.Tensor) and value.device.type == "meta"

    def _payload(self, item: WriteItem) -> bytes | memoryview:
        value = self._resolved[item.index]
        return value if item.type == WriteItemType.BYTE_IO else tensor_bytes(value)

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        """Dedup replicas, build metadata, validate; raises ``PlanValidationError`` with every problem."""
        problems: list[str] = []
        if self.verify_replicas:
            problems += _replica_mismatches(all_plans)
        paths: dict[str, Any] = {}
        for plan in all_plans:  # dedup keeps planner_data: the same merge either way
            paths.update((plan.planner_data or {}).get("paths", {}))
        fast = (
            None if problems else fast_global_plan(all_plans, dedup=self.dedup, planner_data=paths)
        )
        if fast is not None:
            plans, metadata = fast
        else:  # the readable steps: they define the result and name every problem
            plans = dedup_save_plans(all_plans) if self.dedup else list(all_plans)
            plans = [dataclasses.replace(p, planner_data=None) for p in plans]
            metadata = build_metadata(plans, planner_data=paths)
            problems += validate_global_plan(plans, metadata)
        metadata.storage_meta = self.storage_meta
        if problems:
            raise PlanValidationError(problems)
        self.metadata = metadata
        return plans, metadata

    def create_global_plan_compact(
        self, all_plans: list[CompactSavePlan]
    ) -> tuple[list[np.ndarray | None], Metadata]:
        """:meth:`create_global_plan` of plans off the wire as arrays: each rank's kept
        positions (``None``: all its items) and the metadata, the same as the object path's.

        Plans the array planning does not take (anything unusual, any replica mismatch) are
        rebuilt as ``SavePlan`` objects for :meth:`create_global_plan`, which names every
        problem (``PlanValidationError``). With :attr:`plan_cache`, a layout planned before
        gets its cached plan (its replicas compared with this save's checksums first) and this
        save's storage metadata; a plan the array planning made is cached.
        """
        cache, key = self.plan_cache, b""
        if cache is not None:
            key = cache.key(all_plans, self._cache_options())
            hit = cache.get(key, all_plans)  # served only if this save's replicas agree
            if hit is not None:
                metadata = hit.fresh_metadata(self.storage_meta)
                self.metadata = metadata
                return list(hit.kept), metadata
        paths = merged_paths(all_plans)
        fast = compact_global_plan(
            all_plans, dedup=self.dedup, verify_replicas=self.verify_replicas, planner_data=paths
        )
        if fast is None:
            objects = [plan.to_save_plan() for plan in all_plans]
            plans, metadata = self.create_global_plan(objects)
            kept: list[np.ndarray | None] = []
            for local, out in zip(objects, plans):
                where = {id(item): p for p, item in enumerate(local.items)}
                kept.append(np.asarray([where[id(item)] for item in out.items], dtype=np.int64))
            return kept, metadata
        kept, metadata, replicas = fast
        if cache is not None:
            cache.put(key, kept, metadata, replicas)
        metadata.storage_meta = self.storage_meta
        self.metadata = metadata
        return kept, metadata

    def _cache_options(self) -> tuple:
        """What besides the plans a global plan depends on: the planner and its options."""
        kind = type(self)
        return (kind.__module__, kind.__qualname__, self.dedup, self.verify_replicas)

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        """Adopt this rank's part of the global plan."""
        self.plan = new_plan
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        """The tensor view or the encoded object to write for ``write_item``."""
        try:
            value = self._resolved[write_item.index]
        except KeyError:
            raise KeyError(
                f"write item {write_item.index} is not part of this rank's state dict"
            ) from None
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(value)
        return value.detach()


def _replica_mismatches(plans: list[SavePlan]) -> list[str]:
    by_key: dict[tuple, dict[int, int]] = defaultdict(dict)
    for rank, plan in enumerate(plans):
        for key, crc in ((plan.planner_data or {}).get("checksums") or {}).items():
            by_key[key][rank] = crc
    problems = []
    for key, crcs in sorted(by_key.items(), key=lambda kv: repr(kv[0])):
        if len(set(crcs.values())) > 1:
            where = f" at offsets {tuple(key[1])}" if len(key) > 2 else ""
            groups: dict[int, list[int]] = defaultdict(list)
            for rank, crc in sorted(crcs.items()):
                groups[crc].append(rank)
            detail = "; ".join(
                f"ranks {ranks} have checksum {crc:016x}" for crc, ranks in groups.items()
            )
            problems.append(f"key {key[0]!r}{where}: replicas differ ({detail})")
    return problems
