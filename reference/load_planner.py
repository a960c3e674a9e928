"""The reference load planner: checks the load contract, then plans reads for resharding."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from .errors import LoadContractError
from .flatten import flatten_state_dict, set_by_path
from .resharding import ReadPlanResult, SavedChunkIndex, read_items_for_chunk
from .serialization import decode_object
from .state_values import TensorPiece, global_size, is_tensor_value, tensor_pieces, value_dtype

__all__ = ["ReferenceLoadPlanner"]

_MAX_LISTED = 20


class ReferenceLoadPlanner(LoadPlanner):
    """Loads in place: the destination state dict's tensors define the layout to read into.

    Before any data is read, the plan checks on each rank that every destination key is
    in the checkpoint (unless ``allow_missing_keys``), that global shapes agree, that
    dtypes agree (unless ``cast_dtypes``, which casts on copy), that saved chunks cover
    every element of every destination piece, and that no destination tensor is on the
    meta device (a load into one would load nothing: materialise it first). All problems
    found on a rank are raised together as one ``LoadContractError``. Then the coordinator
    checks that every key of the checkpoint is held by some destination rank (unless
    ``allow_unexpected_keys``): ranks may hold different keys (pipeline stages, experts,
    per-rank loader state), and a key no rank holds is state a shrunk world would drop.
    """

    def __init__(
        self,
        *,
        allow_missing_keys: bool = False,
        allow_unexpected_keys: bool = False,
        cast_dtypes: bool = False,
        flatten: bool = True,
    ):
        self.allow_missing_keys = allow_missing_keys
        self.allow_unexpected_keys = allow_unexpected_keys
        self.cast_dtypes = cast_dtypes
        self.flatten = flatten

    def set_up_planner(
        self,
        state_dict: dict[str, Any],
        metadata: Metadata | None = None,
        is_coordinator: bool = False,
    ) -> None:
        """Take the destination state dict and the checkpoint's metadata."""
        if metadata is None:
            raise LoadContractError("the load planner needs the checkpoint metadata")
        self.original_state_dict = state_dict
        if self.flatten:
            self.values, self.paths = flatten_state_dict(state_dict)
        else:
            self.values, self.paths = dict(state_dict), {k: (k,) for k in state_dict}
        self.metadata = metadata
        self.is_coordinator = is_coordinator
        self._views: dict[MetadataIndex, torch.Tensor] = {}
        self._decoded: dict[str, Any] = {}

    def create_local_plan(self) -> LoadPlan:
        """Read items for every destination piece; ``LoadContractError`` lists every problem."""
        entries = self.metadata.state_dict_metadata
        problems: list[str] = []
        missing = [k for k in self.values if k not in entries]
        if missing and not self.allow_missing_keys:
            problems.append(
                f"{len(missing)} key(s) of the destination are not in the checkpoint: {_listing(missing)}"
                " (pass allow_missing_keys=True to skip them)"
            )
        items: list[ReadItem] = []
        for key, value in self.values.items():
            entry = entries.get(key)
            if entry is None:
                continue
            if isinstance(entry, BytesStorageMetadata):
                if is_tensor_value(value):
                    problems.append(
                        f"key {key!r}: the destination holds a tensor, the checkpoint an object"
                    )
                    continue
                index = MetadataIndex(key)
                items.append(
                    ReadItem(
                        type=LoadItemType.BYTE_IO,
                        dest_index=index,
                        dest_offsets=torch.Size((0,)),
                        storage_index=index,
                        storage_offsets=torch.Size((0,)),
                        lengths=torch.Size((0,)),
                    )
                )
                continue
            problems += self._plan_tensor(key, value, entry, items)
        # to the coordinator, which raises every problem of every rank at once, with the keys
        # of the checkpoint that no rank holds
        return LoadPlan(items, planner_data={"keys": sorted(self.values), "problems": problems})

    def _plan_tensor(
        self, key: str, value: Any, entry: TensorStorageMetadata, items: list[ReadItem]
    ) -> list[str]:
        if not is_tensor_value(value):
            return [
                f"key {key!r}: the checkpoint holds a tensor, the destination a {type(value).__name__}"
            ]
        problems = self.tensor_problems(key, value, entry)
        if problems:
            return problems
        pieces = self.dest_pieces(key, value)
        if any(piece.view.device.type == "meta" for piece in pieces):
            return [
                f"key {key!r}: the destination tensor is on the meta device, which holds no "
                "data to load into; materialise it first (e.g. torch.empty_like(t, "
                "device='cpu') or module.to_empty(device=...))"
            ]
        index = SavedChunkIndex(entry.chunks)
        for piece in pieces:
            result = self.read_items(key, index, piece, value)
            if result.uncovered:
                problems.append(
                    f"key {key!r}: {result.uncovered} element(s) of the destination piece at offsets "
                    f"{tuple(piece.chunk.offsets)} sizes {tuple(piece.chunk.sizes)} are in no saved chunk"
                )
            items += result.items
            self._views[piece.index] = piece.view
        return problems

    # the three steps of planning one destination tensor, for subclasses to change one of

    def tensor_problems(self, key: str, value: Any, entry: TensorStorageMetadata) -> list[str]:
        """Global shape and dtype disagreements between the destination and the checkpoint."""
        problems = []
        if tuple(global_size(value)) != tuple(entry.size):
            problems.append(
                f"key {key!r}: saved with global shape {tuple(entry.size)}, destination has "
                f"{tuple(global_size(value))}"
            )
        saved_dtype, dest_dtype = entry.properties.dtype, value_dtype(value)
        if saved_dtype != dest_dtype and not self.cast_dtypes:
            problems.append(
                f"key {key!r}: saved as {saved_dtype}, destination is {dest_dtype}"
                " (pass cast_dtypes=True to cast on load)"
            )
        return problems

    def dest_pieces(self, key: str, value: Any) -> list[TensorPiece]:
        """The pieces of the destination value this rank fills."""
        return tensor_pieces(key, value)

    def read_items(
        self, key: str, index: SavedChunkIndex, piece: TensorPiece, value: Any
    ) -> ReadPlanResult:
        """The read items filling one destination piece from the saved chunks."""
        return read_items_for_chunk(key, index, piece.chunk, piece.index)

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        """Raise every rank's problems at once, with the keys of the checkpoint that no
        destination rank holds (unless ``allow_unexpected_keys``), as one ``LoadContractError``."""
        data = [plan.planner_data or {} for plan in global_plan]
        problems = [
            f"rank {rank}: {problem}" if len(global_plan) > 1 else problem
            for rank, part in enumerate(data)
            for problem in part.get("problems", ())
        ]
        if not self.allow_unexpected_keys:
            held = {key for part in data for key in part.get("keys", ())}
            unexpected = [k for k in self.metadata.state_dict_metadata if k not in held]
            if unexpected:
                problems.append(
                    f"{len(unexpected)} key(s) of the checkpoint are not in the destination "
                    f"(held by no rank): {_listing(unexpected)} (a world that shrank would drop "
                    "them; pass allow_unexpected_keys=True to ignore them)"
                )
        if problems:
            raise LoadContractError(
                f"cannot load: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
            )
        return [dataclasses.replace(plan, planner_data=None) for plan in global_plan]

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        """Adopt this rank's plan."""
        return central_plan

    def check_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Decode an object (safely) before anything is loaded: the reference reader calls this
        for every object first, so one that cannot be decoded fails the load untouched."""
        key = read_item.dest_index.fqn
        self._decoded[key] = decode_object(value, key=key)

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Put an object where its key came from (decoding it, safely, unless
        :meth:`check_bytes` already did)."""
        key = read_item.dest_index.fqn
        obj = self._decoded.pop(key) if key in self._decoded else decode_object(value, key=key)
        self.values[key] = obj
        set_by_path(self.original_state_dict, self.paths[key], obj)

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        """The destination region to fill, or a staging tensor of the saved dtype when casting."""
        view = self._dest_view(read_item)
        entry = self.metadata.state_dict_metadata[read_item.storage_index.fqn]
        saved_dtype = entry.properties.dtype  # type: ignore[union-attr]
        if view.dtype != saved_dtype:
            return torch.empty(tuple(read_item.lengths), dtype=saved_dtype)
        return view

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        """Cast a staged tensor into place; direct views are already filled."""
        view = self._dest_view(read_item)
        if tensor.dtype != view.dtype:
            view.copy_(tensor)

    def _dest_view(self, read_item: ReadItem) -> torch.Tensor:
        try:
            view = self._views[read_item.dest_index]
        except KeyError:
            raise LoadContractError(
                f"read item for {read_item.dest_index} names no destination piece of this rank"
            ) from None
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            view = view.narrow(dim, start, length)
        return view


def _listing(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in sorted(keys)[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
