"""Functions the harness tests run on every rank (importable by spawned processes)."""

from __future__ import annotations

import os
import signal

import torch.distributed as dist

_calls_seen = []


def rank_and_size(tag):
    return (dist.get_rank(), dist.get_world_size(), tag)


def fail_on(rank):
    print(f"about to check rank {dist.get_rank()}")
    if dist.get_rank() == rank:
        raise KeyError(f"planted failure on rank {rank}")
    return "ok"


def stuck_in_a_collective_on(rank):
    import torch

    if dist.get_rank() == rank:
        dist.recv(torch.zeros(1), src=(rank + 1) % dist.get_world_size())  # never sent
    return "done"


def exit_on(rank, code):
    if dist.get_rank() == rank:
        os._exit(code)
    dist.barrier()


def sigkill_on(rank):
    if dist.get_rank() == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()


def mutate_argument(box):
    box.append(dist.get_rank())
    _calls_seen.append(len(box))
    return list(box), id(dist.group.WORLD)


def unpicklable_result():
    return lambda: None


def all_reduce_sum():
    import torch

    t = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(t)
    return t.item()


def cuda_shared_local_value():
    import torch
    from ckptconf.harness import rank_device

    return torch.full((2,), float(dist.get_rank()), device=rank_device()).sum().item()


# rank functions of the conformance runner: fn(backend, *args)


def backend_name_and_rank(backend):
    return backend.name, dist.get_rank()


def fail_on_rank_with_backend(backend, rank):
    if dist.get_rank() == rank:
        raise ValueError(f"rank {rank} failed on purpose")
    return f"rank {dist.get_rank()} fine"


def hang_on_rank_with_backend(backend, rank):
    return stuck_in_a_collective_on(rank)


def backend_steps_seen(backend) -> tuple[str, int]:
    """The backend's name and how many steps this rank ran with the object it holds."""
    backend.steps_seen = getattr(backend, "steps_seen", 0) + 1
    return backend.name, backend.steps_seen
