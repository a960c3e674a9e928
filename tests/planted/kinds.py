"""Planted bugs in what a state dict may hold: dtypes, 0-dim and empty tensors, views, tied
tensors, and keys."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from ckptconf.conformance import Backend
from ckptconf.reference.flatten import _holds_tensors_or_containers
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem

from ._common import HookedSavePlanner, planted_backend

__all__ = [
    "zero_dim_saved_as_one_element",
    "size0_tensors_dropped",
    "bfloat16_saved_as_float16",
    "bool_saved_as_uint8",
    "noncontiguous_view_storage_written",
    "tied_weights_saved_once",
    "key_collision_silent",
]


# --- 0-dim tensors -------------------------------------------------------------------------------


def as_one_element(item: WriteItem) -> WriteItem:
    """The mistake: a 0-dim tensor is planned as shape ``(1,)`` (``atleast_1d``)."""
    data = item.tensor_data
    if data is None or len(data.size) != 0:
        return item
    one = torch.Size([1])
    chunk = ChunkStorageMetadata(offsets=torch.Size([0]), sizes=one)
    return WriteItem(
        index=MetadataIndex(item.index.fqn, chunk.offsets),
        type=item.type,
        tensor_data=TensorWriteData(chunk, data.properties, one),
    )


class AtLeast1dSavePlanner(HookedSavePlanner):
    """Saves 0-dim tensors as 1-element tensors."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        items = []
        for item in plan.items:
            new = as_one_element(item)
            if new is not item:
                self._resolved[new.index] = self._resolved[item.index].reshape(1)
            items.append(new)
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan


def zero_dim_saved_as_one_element() -> Backend:
    """0-dim tensors are saved with shape (1,)."""
    return planted_backend(
        "zero_dim_saved_as_one_element",
        "0-dim tensors saved as 1-element tensors of shape (1,) (atleast_1d)",
        save_planner=AtLeast1dSavePlanner,
    )


# --- size-0 tensors ------------------------------------------------------------------------------


def holds_data(item: WriteItem) -> bool:
    """The mistake: a tensor with no elements is "nothing to save" and gets no write item."""
    return item.tensor_data is None or math.prod(item.tensor_data.size) > 0


class SkipEmptyTensorsSavePlanner(HookedSavePlanner):
    """Plans no write item for tensors with a size-0 dimension."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        self.plan = dataclasses.replace(plan, items=[i for i in plan.items if holds_data(i)])
        return self.plan


def size0_tensors_dropped() -> Backend:
    """Tensors with a size-0 dimension are left out of the checkpoint."""
    return planted_backend(
        "size0_tensors_dropped",
        "tensors with a size-0 dimension skipped on save ('nothing to write'): key missing",
        save_planner=SkipEmptyTensorsSavePlanner,
    )


# --- dtypes --------------------------------------------------------------------------------------


class HalfForBfloat16SavePlanner(HookedSavePlanner):
    """Converts bfloat16 data to float16 for writing ("same size"), metadata still bfloat16."""

    def resolve_data(self, write_item):
        data = super().resolve_data(write_item)
        if isinstance(data, torch.Tensor) and data.dtype == torch.bfloat16:
            # float16 bytes under the bfloat16 label (a writer checks the dtype it is given)
            return data.to(torch.float16).view(torch.bfloat16)
        return data


def bfloat16_saved_as_float16() -> Backend:
    """bfloat16 tensors are written as float16 bytes while the metadata says bfloat16."""
    return planted_backend(
        "bfloat16_saved_as_float16",
        "bfloat16 data written as float16 bytes (same itemsize), metadata still says bfloat16",
        save_planner=HalfForBfloat16SavePlanner,
    )


def bool_as_uint8(item: WriteItem) -> WriteItem:
    """The mistake: bool tensors recorded (and written) as uint8, as numpy-based code does."""
    data = item.tensor_data
    if data is None or data.properties.dtype != torch.bool:
        return item
    props = TensorProperties(dtype=torch.uint8, requires_grad=data.properties.requires_grad)
    return dataclasses.replace(item, tensor_data=dataclasses.replace(data, properties=props))


class BoolAsUint8SavePlanner(HookedSavePlanner):
    """Saves bool tensors as uint8."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        self.plan = dataclasses.replace(plan, items=[bool_as_uint8(i) for i in plan.items])
        return self.plan

    def resolve_data(self, write_item):
        data = super().resolve_data(write_item)
        if isinstance(data, torch.Tensor) and data.dtype == torch.bool:
            return data.to(torch.uint8)
        return data


def bool_saved_as_uint8() -> Backend:
    """bool tensors are saved as uint8 tensors (dtype changed in the checkpoint)."""
    return planted_backend(
        "bool_saved_as_uint8",
        "bool tensors saved as uint8 (dtype changed in the metadata)",
        save_planner=BoolAsUint8SavePlanner,
    )


# --- non-contiguous views ------------------------------------------------------------------------


def storage_as_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """The mistake: a view's elements read from its storage as if it were contiguous."""
    if tensor.is_contiguous() or tensor.numel() == 0:
        return tensor
    strides = [1] * tensor.dim()
    for d in range(tensor.dim() - 2, -1, -1):
        strides[d] = strides[d + 1] * tensor.shape[d + 1]
    return torch.as_strided(tensor, tensor.shape, strides, tensor.storage_offset())


class StorageOrderSavePlanner(HookedSavePlanner):
    """Writes each tensor's storage from its offset, ignoring the view's strides."""

    def resolve_data(self, write_item):
        data = super().resolve_data(write_item)
        return storage_as_contiguous(data) if isinstance(data, torch.Tensor) else data


def noncontiguous_view_storage_written() -> Backend:
    """A non-contiguous view is saved as its storage read in order (strides ignored)."""
    return planted_backend(
        "noncontiguous_view_storage_written",
        "non-contiguous views saved as raw storage from their offset (strides ignored)",
        save_planner=StorageOrderSavePlanner,
    )


# --- tied tensors --------------------------------------------------------------------------------


def _identity(value: Any) -> int | None:
    """The mistake: tensors are deduplicated by object identity, as if a second key were a copy."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    return id(value) if isinstance(value, (torch.Tensor, ShardedTensor)) else None


class SaveOncePerTensorPlanner(HookedSavePlanner):
    """Skips a tensor object already saved under another key."""

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        super().set_up_planner(state_dict, storage_meta, is_coordinator)
        seen: set = set()
        kept = {}
        for key, value in self.values.items():
            identity = _identity(value)
            if identity is not None and identity in seen:
                continue
            if identity is not None:
                seen.add(identity)
            kept[key] = value
        self.values = kept


def tied_weights_saved_once() -> Backend:
    """Tied tensors (one tensor under two keys) are saved under the first key only."""
    return planted_backend(
        "tied_weights_saved_once",
        "tensors already saved under another key (tied weights) skipped: the second key is missing",
        save_planner=SaveOncePerTensorPlanner,
    )


# --- keys ----------------------------------------------------------------------------------------


def flatten_last_wins(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, tuple]]:
    """DCP-style flattening with dotted keys where a later path flattening to the same key
    silently replaces the earlier one (``{"a.b": x, "a": {"b": y}}`` keeps only y)."""
    flat: dict[str, Any] = {}
    paths: dict[str, tuple] = {}

    def visit(path: tuple, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, child in value.items():
                visit(path + (str(key),), child)
        elif isinstance(value, list) and _holds_tensors_or_containers(value):
            for index, child in enumerate(value):
                visit(path + (index,), child)
        else:
            key = ".".join(map(str, path))
            flat[key] = value
            paths[key] = path

    for key, value in state_dict.items():
        visit((key,), value)
    return flat, paths


class LastWinsSavePlanner(HookedSavePlanner):
    """Flattens without detecting key collisions."""

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False) -> None:
        super().set_up_planner({}, storage_meta, is_coordinator)
        self.values, self.paths = flatten_last_wins(state_dict)


def key_collision_silent() -> Backend:
    """Two paths flattening to one key ({'a.b': x, 'a': {'b': y}}): one value silently lost."""
    return planted_backend(
        "key_collision_silent",
        "flattening lets {'a.b': x, 'a': {'b': y}} collide silently: one of the two values is lost",
        save_planner=LastWinsSavePlanner,
    )
