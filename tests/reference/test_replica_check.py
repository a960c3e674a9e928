"""verify_replicas on shape-only (meta) states: planning works, real replicas are still compared."""

from __future__ import annotations

import pytest
import torch
from ckptconf.harness.simulated import simulate_save_planning
from ckptconf.reference import PlanValidationError, ReferenceSavePlanner


def test_shape_only_replicas_plan_with_verification_on():
    """Meta tensors carry no bytes: nothing to compare, and planning must not fail on them."""
    states = [{"w": torch.empty(4, 3, device="meta"), "step": 7} for _ in range(3)]
    sim, _ = simulate_save_planning(states, lambda: ReferenceSavePlanner(verify_replicas=True))
    written = [item.index.fqn for plan in sim.global_plan for item in plan.items]
    assert sorted(written) == ["step", "w"]


def test_real_replicas_next_to_meta_ones_are_still_compared():
    states = [
        {"m": torch.empty(2, device="meta"), "w": torch.full((2,), float(rank == 1))}
        for rank in range(2)
    ]
    with pytest.raises(PlanValidationError, match=r"key 'w'.*replicas differ.*ranks \[0\].*\[1\]"):
        simulate_save_planning(states, lambda: ReferenceSavePlanner(verify_replicas=True))
