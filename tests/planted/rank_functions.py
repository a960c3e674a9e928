"""Functions the planted-bug checks run on every rank of a world."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ckptconf.conformance import select_backend

_GROUPS: dict[tuple[int, ...], object] = {}


def save_in_group_without_rank_0(spec: str, path: str) -> str | None:
    """Ranks 2 and 3 save in their own sub-group (global rank 0 is not in it): "saved", or
    "raised" if the save raised; the other ranks return None."""
    if (2, 3) not in _GROUPS:
        _GROUPS[(2, 3)] = dist.new_group([2, 3], backend="gloo")  # collective: every rank
    if dist.get_rank() not in (2, 3):
        return None
    try:
        select_backend(spec).run_save({"w": torch.arange(4.0)}, path, process_group=_GROUPS[(2, 3)])
    except Exception:  # noqa: BLE001 - the outcome is the point
        return "raised"
    return "saved"


def save_a_key_only_rank_1_holds(spec: str, path: str) -> str:
    """On 2 ranks: both hold ``a``, rank 1 alone holds ``b``; save, then load both back on the
    same ranks: "loaded", "wrong value" or "raised"."""
    rank = dist.get_rank()
    backend = select_backend(spec)
    state = {"a": torch.arange(2.0), **({"b": torch.arange(3.0) + 10} if rank == 1 else {})}
    backend.run_save(state, path)
    dest = {key: torch.zeros_like(value) for key, value in state.items()}
    try:
        backend.run_load(dest, path)
    except BaseException:  # noqa: BLE001 - the outcome is the point
        return "raised"
    return "loaded" if all(torch.equal(dest[k], state[k]) for k in state) else "wrong value"
