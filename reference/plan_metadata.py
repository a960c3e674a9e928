"""Checkpoint metadata built from a global save plan."""

from __future__ import annotations

from collections.abc import Sequence

from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import SavePlan, WriteItemType

from .compat import DCP_FORMAT_VERSION, new_metadata

__all__ = ["build_metadata"]


def build_metadata(plans: Sequence[SavePlan], planner_data: object = None) -> Metadata:
    """One entry per key: tensors with their chunks sorted by offsets, objects as bytes.

    The first item seen for a key fixes its size and dtype; disagreeing items are left
    for :func:`validate_global_plan` to report.
    """
    entries: dict = {}
    for plan in plans:
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                entries.setdefault(fqn, BytesStorageMetadata())
                continue
            data = item.tensor_data
            if data is None:
                raise ValueError(
                    f"write item {fqn!r} of type {item.type.name} carries no tensor data"
                )
            entry = entries.setdefault(
                fqn,
                TensorStorageMetadata(
                    properties=TensorProperties(
                        dtype=data.properties.dtype, requires_grad=data.properties.requires_grad
                    ),
                    size=data.size,
                    chunks=[],
                ),
            )
            if isinstance(entry, TensorStorageMetadata):
                entry.chunks.append(data.chunk)
    for entry in entries.values():
        if isinstance(entry, TensorStorageMetadata):
            entry.chunks.sort(key=lambda c: (tuple(c.offsets), tuple(c.sizes)))
    return new_metadata(
        state_dict_metadata=entries, planner_data=planner_data, version=DCP_FORMAT_VERSION
    )
