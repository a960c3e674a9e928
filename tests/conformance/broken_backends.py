"""Deliberately broken backends: the suite must report each as failing, with a readable case."""

from __future__ import annotations

import dataclasses

from ckptconf.conformance import Backend
from ckptconf.reference import FileSystemReader, FileSystemWriter


class DropLastItemWriter(FileSystemWriter):
    """Silently skips the last item of every rank's plan (a 'last chunk skipped' bug)."""

    def write_data(self, plan, planner):
        future = super().write_data(dataclasses.replace(plan, items=plan.items[:-1]), planner)
        results = future.value()
        if plan.items:  # report the dropped item as written, at the previous item's region
            last = plan.items[-1]
            fake = results[-1] if results else None
            if fake is not None:
                results.append(dataclasses.replace(fake, index=last.index))
        return future


class ShiftedReader(FileSystemReader):
    """Reads a tensor piece that starts inside a saved chunk one element early (an off-by-one ranged read)."""

    def read_data(self, plan, planner):
        items = []
        for item in plan.items:
            if item.storage_offsets and item.storage_offsets[-1] > 0:
                offsets = list(item.storage_offsets)
                offsets[-1] -= 1
                item = dataclasses.replace(
                    item, storage_offsets=type(item.storage_offsets)(offsets)
                )
            items.append(item)
        return super().read_data(dataclasses.replace(plan, items=items), planner)


def shifted_reader() -> Backend:
    """Reads resharded tensor data shifted by one element along the last dim."""
    return Backend(
        name="broken-shifted-read", storage_writer=FileSystemWriter, storage_reader=ShiftedReader
    )


def dropped_last_item() -> Backend:
    """Writes all but the last item of each rank and claims success."""
    return Backend(
        name="broken-dropped-item",
        storage_writer=DropLastItemWriter,
        storage_reader=FileSystemReader,
    )
