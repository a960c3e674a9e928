"""Cached global save plans: a re-save of an unchanged layout skips the coordinator's planning.

A training job saves the same layout again and again (same keys, shapes, dtypes, sharding,
world), and the coordinator's global plan (dedup, metadata, validation) is then the same every
time. ByteCheckpoint (NSDI '25) caches it for such saves; DCP has
``DefaultSavePlanner(enable_plan_caching=True)`` (off by default). The reference
caches it on the coordinator, keyed on the *whole* input of that planning: a SHA-256 digest of
every rank's local plan bytes as they came off the wire, less the replica checksums
(:attr:`~.compact_plan.CompactSavePlan.layout`: keys, kinds, dtypes, ``requires_grad``, global
sizes, every chunk's offsets and sizes, the flattening paths), the world size (the number of
plans) and the planner's class and options (``dedup``, ``verify_replicas``). Planning is a
pure function of that input, so a hit gives exactly what planning would: the cache may be
shared by every save of the process (another process group, another checkpoint, another
``Checkpointer``) and is never stale.

What a hit reuses: each rank's kept positions (dedup), the metadata's entries and planner data
(the paths), and which items are copies of one chunk. What every save still does: the ranks'
local plans and their bytes on the wire (each rank plans its own state: the cache lives on the
coordinator only, so ranks cannot disagree about it), the coordinator's decoding and check of
those bytes, the replica checksum comparison (data, not layout: a hit whose replicas differ is
planned afresh, which names them), the storage metadata (checkpoint id and save id), the
generation folder the data goes into (and so every data file's name), a new ``Metadata`` object
(what a writer's ``finish`` may change is never the cached one), and the write results.

Where DCP's caching goes wrong, and what is done here instead:

- DCP keys its class-level caches on the planner's class name, so two checkpoints saved with
  one planner class in one process (model and optimizer, two ``Checkpointer`` objects, two
  process groups) take each other's cached plans (pytorch#158767; NVIDIA-NeMo/Automodel#3369:
  a stale final plan with another writer's ``storage_data``). Here the key is the layout.
- DCP decides "unchanged" with ``_compare_save_plans``, which compares items' indices, chunks
  and global sizes, but not their dtype or ``requires_grad``, nor the planner data: a re-save
  with another dtype reuses metadata naming the old one. Here every byte of the layout counts.
- DCP's ranks each keep a local cache and send an empty plan when theirs is unchanged; a
  failed global plan left those caches ahead of the coordinator's (pytorch#176289). Here only
  the coordinator caches, and only a plan that planned and validated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from .compact_plan import CompactSavePlan, ReplicaSets

__all__ = ["PLAN_CACHE", "CachedPlan", "PlanCache"]


@dataclasses.dataclass(frozen=True)
class CachedPlan:
    """A global plan kept for later saves of its layout: each rank's kept positions (``None``:
    all its items; read-only), the metadata without storage metadata, and the replica sets
    (``None`` where replicas were not verified)."""

    kept: tuple[np.ndarray | None, ...]
    metadata: Metadata
    replicas: ReplicaSets | None

    def fresh_metadata(self, storage_meta: StorageMeta | None) -> Metadata:
        """The metadata for one save: new ``Metadata``, entries and chunk lists (a writer or a
        caller changing them changes nothing cached), this save's ``storage_meta``."""
        return _copy(self.metadata, storage_meta)


def _copy(metadata: Metadata, storage_meta: StorageMeta | None) -> Metadata:
    entries = {}
    for key, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, TensorStorageMetadata):
            entry = dataclasses.replace(
                entry,
                properties=dataclasses.replace(entry.properties),
                chunks=list(entry.chunks),
            )
        else:
            entry = dataclasses.replace(entry)
        entries[key] = entry
    data = metadata.planner_data
    return dataclasses.replace(
        metadata,
        state_dict_metadata=entries,
        planner_data=dict(data) if isinstance(data, dict) else data,
        storage_data=None,
        storage_meta=storage_meta,
    )


class PlanCache:
    """The global plans of the last ``max_entries`` layouts planned, most recent last.

    ``hits`` and ``misses`` count lookups; :meth:`clear` empties it. Thread-safe (an
    ``async_save`` plans on a background thread).
    """

    def __init__(self, max_entries: int = 2):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, CachedPlan] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, plans: Sequence[CompactSavePlan], options: tuple) -> bytes:
        """The digest of what planning these plans depends on: ``options`` (the planner's
        class and flags, as a tuple of strings, numbers and booleans), the world size and every
        rank's layout bytes, each behind its length."""
        digest = hashlib.sha256()
        digest.update(repr(options).encode())
        digest.update(struct.pack("<Q", len(plans)))
        for plan in plans:
            digest.update(struct.pack("<Q", len(plan.layout)))
            digest.update(plan.layout)
        return digest.digest()

    def get(self, key: bytes, plans: Sequence[CompactSavePlan]) -> CachedPlan | None:
        """The plan cached under ``key`` (now the most recent) if ``plans``' replicas agree by
        its replica sets, else ``None`` (to be planned afresh, which names differing
        replicas); counts a hit (a plan served) or a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
        if found is not None and found.replicas is not None and found.replicas.differ(plans):
            found = None
        with self._lock:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def put(
        self,
        key: bytes,
        kept: Sequence[np.ndarray | None],
        metadata: Metadata,
        replicas: ReplicaSets | None,
    ) -> None:
        """Keep a plan that planned and validated under ``key`` (copies of its arrays and
        metadata: the save that made them goes on with its own), dropping the least recent
        beyond ``max_entries``."""
        frozen = []
        for positions in kept:
            if positions is not None:
                positions = np.array(positions, dtype=np.int64)
                positions.flags.writeable = False
            frozen.append(positions)
        entry = CachedPlan(tuple(frozen), _copy(metadata, None), replicas)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every plan and reset the counters."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


PLAN_CACHE = PlanCache()
"""The process's cache, used by every :class:`~.save_planner.ReferenceSavePlanner` made with
``cache_plans=True`` (the default)."""
