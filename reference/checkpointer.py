"""Checkpointer: one object bundling storage, planners, process group and coordinator."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadPlanner, SavePlanner
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter

from . import driver

__all__ = ["Checkpointer"]


class Checkpointer:
    """The shape of DCP's ``_Checkpointer``, with ``save``, ``async_save`` and ``load`` that work.

    (DCP's own ``_Checkpointer.save`` in torch 2.13 passes a ``coordinator_rank``
    argument that ``dcp.save`` no longer takes, and raises ``TypeError``.)
    """

    def __init__(
        self,
        storage_writer: StorageWriter,
        storage_reader: StorageReader,
        *,
        process_group: dist.ProcessGroup | None = None,
        coordinator_rank: int = 0,
        no_dist: bool = False,
        load_planner: LoadPlanner | None = None,
        save_planner: SavePlanner | None = None,
        share_reads: bool = True,
    ):
        self.storage_writer = storage_writer
        self.storage_reader = storage_reader
        self.process_group = process_group
        self.coordinator_rank = coordinator_rank
        self.no_dist = no_dist
        self.load_planner = load_planner
        self.save_planner = save_planner
        self.share_reads = share_reads
        """``load``'s ``share_reads``: see :func:`ckptconf.reference.load`."""

    def _common(self) -> dict[str, Any]:
        return {
            "process_group": self.process_group,
            "coordinator_rank": self.coordinator_rank,
            "no_dist": True if self.no_dist else None,
        }

    def save(self, state_dict: dict[str, Any]) -> Metadata:
        """Save ``state_dict`` with the configured writer and planner."""
        return driver.save(
            state_dict,
            storage_writer=self.storage_writer,
            planner=self.save_planner,
            **self._common(),
        )

    def async_save(self, state_dict: dict[str, Any]) -> Future:
        """Stage ``state_dict`` and save it in the background; the future gives the metadata."""
        return driver.async_save(
            state_dict,
            storage_writer=self.storage_writer,
            planner=self.save_planner,
            **self._common(),
        )

    def load(self, state_dict: dict[str, Any]) -> None:
        """Load into ``state_dict`` in place with the configured reader and planner."""
        driver.load(
            state_dict,
            storage_reader=self.storage_reader,
            planner=self.load_planner,
            share_reads=self.share_reads,
            **self._common(),
        )
