"""Functions the kit's own tests run on ranks (importable by spawned rank processes)."""

from __future__ import annotations

from typing import Any

from ckptconf.conformance.kit import values
from ckptconf.conformance.kit.cases import Layout, SaveLoadCase, TensorSpec

SOME_RANKS = SaveLoadCase(
    (TensorSpec("d", (4,), "float64", salt=0), TensorSpec("s", (4,), "float64", salt=1)),
    (Layout("dtensor", (2,), ("S0",), ranks=(2, 0)), Layout("sharded_tensor", ranks=(2, 0))),
    (Layout(ranks=(1,)), Layout("dtensor", (3,), ("S0",))),
    save_world=3,
    load_world=3,
    objects=(("obj_a", b"stage 2"), ("obj_b", 7)),
    object_ranks=(((2,), (0, 1)), ((), (1,))),
)
"""Tensors saved on ranks 2 and 0 only (in that mesh and chunk order), loaded on rank 1 /
everywhere; ``obj_a`` saved by rank 2 and loaded on ranks 0 and 1, ``obj_b`` saved by every
rank and loaded on rank 1."""


def pieces_of_some_ranks_state() -> dict[str, Any]:
    """This rank's saved state of :data:`SOME_RANKS`: each key's local values (and a
    ShardedTensor's chunk offsets), and whether the rank's own state compares clean."""
    state = values.build_state(SOME_RANKS, for_load=False)
    out: dict[str, Any] = {}
    if "d" in state:
        out["d"] = state["d"].to_local().tolist()
    if "s" in state:
        out["s"] = [
            (s.metadata.shard_offsets, s.tensor.tolist()) for s in state["s"].local_shards()
        ]
    out["objects"] = sorted(k for k in state if k.startswith("obj_"))
    saved_as_loaded = SaveLoadCase(
        SOME_RANKS.tensors,
        SOME_RANKS.save_layouts,
        SOME_RANKS.save_layouts,
        3,
        3,
        SOME_RANKS.objects,
        object_ranks=tuple((saved, saved) for saved, _ in SOME_RANKS.object_ranks),
    )
    out["clean"] = values.compare_state(saved_as_loaded, state) == []
    return out
