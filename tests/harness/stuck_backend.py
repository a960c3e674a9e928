"""A backend whose save never returns on rank 1 (a Python loop, not a collective): under
torchrun the launched world is lost and the run must stop with a report, not hang."""

from __future__ import annotations

import threading

import torch.distributed as dist
from ckptconf.conformance import Backend, select_backend


def _save(state_dict, path, *, process_group=None):
    if dist.get_rank() == 1:
        threading.Event().wait()  # stuck for good: only ending the process stops it
    return select_backend("reference").run_save(state_dict, path)


def _load(state_dict, path, *, process_group=None):
    return select_backend("reference").run_load(state_dict, path)


def stuck_on_rank_1() -> Backend:
    """The reference, except that rank 1's save never returns."""
    return Backend(name="stuck_on_rank_1", save=_save, load=_load)
