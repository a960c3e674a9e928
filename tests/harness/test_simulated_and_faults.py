"""Simulated worlds at scale, and killing a rank mid-save."""

from __future__ import annotations

import pytest
from ckptconf.harness import WorldError, run_fresh_world
from ckptconf.harness.simulated import mesh_values, simulate_save_planning
from ckptconf.reference import ReferenceSavePlanner, validate_global_plan
from torch.distributed.tensor import Shard

from . import kill_scenarios as ks


def test_simulated_planning_at_a_thousand_ranks_on_a_two_d_mesh():
    values = mesh_values("w", (100, 80), (25, 40), [Shard(0), Shard(1)], meta=True)
    states = [{"w": v, "step": 3} for v in values]
    result, planners = simulate_save_planning(states, ReferenceSavePlanner)
    assert len(result.local_plans) == len(result.global_plan) == len(planners) == 1000
    assert all(len(p.items) == 2 for p in result.local_plans)  # a shard and the replicated step
    assert sum(len(p.items) for p in result.global_plan) == 1001  # step kept once
    assert len(result.metadata.state_dict_metadata["w"].chunks) == 1000
    assert validate_global_plan(result.global_plan, result.metadata) == []


@pytest.mark.parametrize("point", ["mid_write", "finish"])
def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, point):
    path = str(tmp_path / "ck")
    run_fresh_world(ks.save_version, 2, path, 1)
    kill_rank = 0 if point == "finish" else 1  # finish runs on the coordinator only
    with pytest.raises(WorldError) as info:
        run_fresh_world(ks.save_version_killing, 2, path, 2, kill_rank, point, timeout=60)
    assert f"rank {kill_rank} died" in str(info.value) and "SIGKILL" in str(info.value)
    assert run_fresh_world(ks.load_version, 2, path) == [1.0, 1.0]
