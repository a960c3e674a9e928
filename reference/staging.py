"""Staging for async save: copy what this rank holds to host memory before returning.

On CUDA the copies go into pinned host buffers kept in a :class:`StagingPool`, so a
later save of the same shapes reuses them; all copies are queued without blocking and
waited for once.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch

from .flatten import map_leaves
from .serialization import encode_object
from .state_values import (
    StagedTensor,
    TensorPiece,
    global_size,
    is_sharded_value,
    is_tensor_value,
    tensor_pieces,
    value_dtype,
)

__all__ = ["StagingPool", "stage_state_dict"]


class StagingPool:
    """Reusable host buffers by (shape, dtype); pinned when CUDA is available."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self._used: list[tuple[tuple, torch.Tensor]] = []

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """A host buffer with the shape and dtype of ``like``."""
        key = (tuple(like.shape), like.dtype)
        if self._free[key]:
            buffer = self._free[key].pop()
        else:
            pin = like.device.type == "cuda" and torch.cuda.is_available()
            buffer = torch.empty(like.shape, dtype=like.dtype, pin_memory=pin)
        self._used.append((key, buffer))
        return buffer

    def release_all(self) -> None:
        """Return every buffer handed out, once the save that used them is done."""
        for key, buffer in self._used:
            self._free[key].append(buffer)
        self._used.clear()


def stage_state_dict(state_dict: dict[str, Any], pool: StagingPool | None = None) -> dict[str, Any]:
    """A state dict whose tensors are host copies and whose objects are deep copies (each
    checked to be storable: :class:`~.serialization.UnsafeObjectError` otherwise).

    Keys and nesting are kept, so the staged dict saves to the same checkpoint.
    """
    pool = pool or StagingPool()
    cuda_copies = False

    def stage(key: str, value: Any) -> Any:
        nonlocal cuda_copies
        if not is_tensor_value(value):
            encode_object(value, key=key)  # refused at the call, not in the background save
            return copy.deepcopy(value)
        pieces = []
        for piece in tensor_pieces(key, value):
            source = piece.view.detach()
            buffer = pool.take(source)
            buffer.copy_(source, non_blocking=source.device.type == "cuda")
            cuda_copies |= source.device.type == "cuda"
            pieces.append(TensorPiece(piece.index, piece.chunk, buffer))
        return StagedTensor(
            size=global_size(value),
            dtype=value_dtype(value),
            requires_grad=bool(getattr(value, "requires_grad", False)),
            sharded=is_sharded_value(value),
            pieces=tuple(pieces),
            is_torch_tensor=isinstance(value, torch.Tensor),
        )

    staged = map_leaves(state_dict, stage)
    if cuda_copies:
        torch.cuda.synchronize()
    return staged
