"""Building blocks of the planted bugs: the reference drivers with swappable parts, and planners
whose steps are split into methods so that a bug overrides exactly one of them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch.distributed as dist
from ckptconf.conformance import Backend
from ckptconf.reference import (
    Checkpointer,
    FileSystemReader,
    FileSystemWriter,
    ReferenceLoadPlanner,
    ReferenceSavePlanner,
)
from ckptconf.reference import driver as reference_driver
from ckptconf.reference.dedup import dedup_save_plans
from ckptconf.reference.errors import PlanValidationError
from ckptconf.reference.plan_metadata import build_metadata
from ckptconf.reference.save_planner import _replica_mismatches
from ckptconf.reference.validation import validate_global_plan
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan
from torch.futures import Future

__all__ = [
    "log",
    "current_rank",
    "completed",
    "planted_backend",
    "VerifiedSavePlanner",
    "HookedSavePlanner",
    "HookedLoadPlanner",
    "reference_parts",
]

log = logging.getLogger("tests.planted")


def current_rank() -> int:
    """This process's rank in the default group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def completed(value: Any) -> Future:
    """A torch future already holding ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future


def _save(
    writer: Callable[[str], Any],
    planner: Callable[[], Any],
    driver: Callable[..., Any],
    state_dict: dict[str, Any],
    path: str,
    *,
    process_group=None,
    storage_writer=None,
):
    storage_writer = storage_writer if storage_writer is not None else writer(path)
    return driver(
        state_dict, process_group=process_group, planner=planner(), storage_writer=storage_writer
    )


def _load(
    reader: Callable[[str], Any],
    planner: Callable[[], Any],
    driver: Callable[..., Any],
    state_dict: dict[str, Any],
    path: str,
    *,
    process_group=None,
    storage_reader=None,
) -> None:
    storage_reader = storage_reader if storage_reader is not None else reader(path)
    driver(
        state_dict, process_group=process_group, planner=planner(), storage_reader=storage_reader
    )


def _async_save(
    writer: Callable[[str], Any],
    planner: Callable[[], Any],
    state_dict: dict[str, Any],
    path: str,
    *,
    process_group=None,
    storage_writer=None,
):
    return reference_driver.async_save(
        state_dict,
        process_group=process_group,
        planner=planner(),
        storage_writer=storage_writer or writer(path),
    )


def _checkpointer(
    writer: Callable[[str], Any],
    reader: Callable[[str], Any],
    save_planner: Callable[[], Any],
    load_planner: Callable[[], Any],
    cls: type,
    path: str,
):
    return cls(writer(path), reader(path), save_planner=save_planner(), load_planner=load_planner())


class VerifiedSavePlanner(ReferenceSavePlanner):
    """The reference save planner as the built-in reference backend uses it: replicas verified."""

    def __init__(self, *, verify_replicas: bool = True, **options: Any):
        super().__init__(verify_replicas=verify_replicas, **options)


def planted_backend(
    name: str,
    description: str,
    *,
    writer: Callable[[str], Any] = FileSystemWriter,
    reader: Callable[[str], Any] = FileSystemReader,
    save_planner: Callable[[], Any] = VerifiedSavePlanner,
    load_planner: Callable[[], Any] = ReferenceLoadPlanner,
    save_driver: Callable[..., Any] = reference_driver.save,
    load_driver: Callable[..., Any] = reference_driver.load,
    async_save: Callable[..., Any] | None = None,
    checkpointer: type = Checkpointer,
) -> Backend:
    """The reference backend with some parts replaced: its drivers run the given parts.

    Its save planner verifies replicas by default, as the built-in reference's does: a
    planted bug must differ from the reference by its bug alone, or every bug would be
    "killed" by the test that differing replicas raise.

    Unlike the built-in reference backend, ``save``/``load``/``async_save`` and the
    ``checkpointer`` use the backend's own planners, so a planner bug is exercised by
    every suite.
    """
    return Backend(
        name=name,
        storage_writer=writer,
        storage_reader=reader,
        save_planner=save_planner,
        load_planner=load_planner,
        save=partial(_save, writer, save_planner, save_driver),
        load=partial(_load, reader, load_planner, load_driver),
        async_save=async_save or partial(_async_save, writer, save_planner),
        checkpointer=partial(
            _checkpointer, writer, reader, save_planner, load_planner, checkpointer
        ),
        description=description,
    )


class HookedSavePlanner(VerifiedSavePlanner):
    """The reference save planner with its global step split into overridable parts."""

    def dedup_plans(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Keep one writer per replicated item."""
        return dedup_save_plans(plans) if self.dedup else list(plans)

    def replica_problems(self, plans: list[SavePlan]) -> list[str]:
        """Replicas that differ (when ``verify_replicas``), checked on the plans before dedup."""
        return _replica_mismatches(plans) if self.verify_replicas else []

    def metadata_for(self, plans: list[SavePlan], paths: dict[str, Any]) -> Metadata:
        """Metadata describing what the plans write."""
        return build_metadata(plans, planner_data=paths)

    def plan_problems(self, plans: list[SavePlan], metadata: Metadata) -> list[str]:
        """Every problem of the global plan."""
        return validate_global_plan(plans, metadata)

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        """As the reference: replica check, dedup, metadata, validation."""
        problems = self.replica_problems(all_plans)
        plans = self.dedup_plans(all_plans)
        paths: dict[str, Any] = {}
        for plan in plans:
            paths.update((plan.planner_data or {}).get("paths", {}))
        plans = [dataclasses.replace(p, planner_data=None) for p in plans]
        metadata = self.metadata_for(plans, paths)
        metadata.storage_meta = self.storage_meta
        problems += self.plan_problems(plans, metadata)
        if problems:
            raise PlanValidationError(problems)
        self.metadata = metadata
        return plans, metadata


class HookedLoadPlanner(ReferenceLoadPlanner):
    """The reference load planner; a bug overrides one of its per-tensor steps
    (``tensor_problems``, ``dest_pieces``, ``read_items``)."""


def reference_parts() -> Backend:
    """The reference, unchanged, through the same drivers as the planted bugs (their control)."""
    return planted_backend("reference-parts", "the reference parts through the planted-bug drivers")
