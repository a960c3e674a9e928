"""Planted bugs in the Checkpointer object that bundles storage, planners and process group."""

from __future__ import annotations

from typing import Any

from ckptconf.conformance import Backend
from ckptconf.reference import Checkpointer
from ckptconf.reference import driver as reference_driver

from ._common import planted_backend

__all__ = ["checkpointer_passes_removed_argument"]


class StaleSignatureCheckpointer(Checkpointer):
    """Forwards ``coordinator_rank`` by the name the driver used to take (``coordinator``)."""

    def save(self, state_dict: dict[str, Any]):
        return reference_driver.save(
            state_dict,
            storage_writer=self.storage_writer,
            planner=self.save_planner,
            process_group=self.process_group,
            coordinator=self.coordinator_rank,
            no_dist=True if self.no_dist else None,
        )


def checkpointer_passes_removed_argument() -> Backend:
    """Checkpointer.save passes an argument the save driver no longer takes (DCP 2.13's _Checkpointer bug)."""
    return planted_backend(
        "checkpointer_passes_removed_argument",
        "Checkpointer.save forwards an argument the save driver no longer takes: TypeError",
        checkpointer=StaleSignatureCheckpointer,
    )
