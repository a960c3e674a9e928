"""The planning benchmark: both planners plan the same simulated state and are timed."""

from __future__ import annotations

from ckptconf.bench.plan import _states, bench_plan
from ckptconf.cli import main


def test_the_benchmark_state_is_row_sharded_over_every_rank_plus_one_replica():
    states = _states(4, 2)
    assert [sorted(s) for s in states] == [["emb", "layers.0.w", "layers.1.w"]] * 4
    pieces = [states[r]["layers.1.w"].pieces for r in range(4)]
    assert [tuple(p[0].chunk.offsets) for p in pieces] == [(0, 0), (4, 0), (8, 0), (12, 0)]
    assert all(tuple(p[0].chunk.sizes) == (4, 8) for p in pieces)


def test_each_world_is_timed_for_both_planners(capsys):
    (row,) = bench_plan((4,), tensors=2, repeats=1)
    assert (row.ranks, row.tensors, row.chunks) == (4, 2, 12)
    assert row.dcp_seconds > 0 and row.reference_seconds > 0
    assert row.speedup == row.dcp_seconds / row.reference_seconds
    assert row.dcp_wire_seconds != row.dcp_wire_seconds  # NaN: not measured unless asked
    (row,) = bench_plan((4,), tensors=2, repeats=1, wire=True)
    assert row.dcp_wire_seconds > 0 and row.reference_wire_seconds > 0
    assert row.wire_speedup == (row.dcp_seconds + row.dcp_wire_seconds) / (
        row.reference_seconds + row.reference_wire_seconds
    )
    assert main(["bench", "plan", "--ranks", "3", "--tensors", "1", "--wire"]) == 0
    out = capsys.readouterr().out
    assert "reference speed-up" in out and "(un)pickling" in out and "not run" not in out
    assert "(de)coding" in out and "speed-up with the wire" in out
    (row,) = bench_plan((4,), tensors=1, repeats=1, dcp_max_ranks=3)
    assert row.dcp_seconds != row.dcp_seconds and row.reference_seconds > 0
    assert main(["bench", "plan", "--ranks", "3", "--tensors", "1", "--dcp-max-ranks", "2"]) == 0
    assert "not run" in capsys.readouterr().out


def test_both_planners_plan_the_same_shards():
    """The plans timed are DTensor shard items, and DCP's coordinator makes of them the same
    metadata as the reference's: the benchmark compares like with like (before 2026-11-30 DCP's
    planner saw each simulated value as one opaque object)."""
    from ckptconf.bench.plan import local_plans
    from ckptconf.reference import ReferenceSavePlanner
    from ckptconf.reference.compat import set_up_save_planner
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    states = _states(4, 2)
    plans = local_plans(states)
    assert [[i.type for i in p.items] for p in plans] == [[WriteItemType.SHARD] * 3] * 4
    chunks = {}
    for factory in (DefaultSavePlanner, ReferenceSavePlanner):
        coordinator = factory()
        set_up_save_planner(coordinator, states[0], True)
        out, metadata = coordinator.create_global_plan(plans)
        chunks[factory] = {
            k: sorted(tuple(c.offsets) for c in v.chunks)
            for k, v in metadata.state_dict_metadata.items()
        }
        assert sum(len(p.items) for p in out) == 4 * 2 + 1  # the replica written once
    assert chunks[DefaultSavePlanner] == chunks[ReferenceSavePlanner]
    assert chunks[DefaultSavePlanner]["layers.1.w"] == [(0, 0), (4, 0), (8, 0), (12, 0)]


def test_load_planning_is_timed_for_both_planners_on_the_same_metadata(capsys):
    """Each planner plans the middle rank's resume: one read item per tensor (its own rows of
    the saved chunk it wrote) and one for the replicated tensor."""
    from ckptconf.bench.plan import bench_load_plan

    (row,) = bench_load_plan((4,), tensors=3, repeats=1)
    assert (row.ranks, row.chunks, row.read_items) == (4, 13, 4)
    assert min(row.dcp_local, row.reference_local, row.dcp_global, row.reference_global) > 0
    assert row.shared_reads > 0  # timed: a pass over 4 plans of 4 read items
    assert row.speedup == row.dcp_local / row.reference_local
    assert main(["bench", "plan", "--ranks", "2", "--tensors", "1", "--load"]) == 0
    assert "reference local (s)" in capsys.readouterr().out


def test_the_reference_is_timed_on_array_plans_without_building_plan_objects(monkeypatch):
    """Issue 30: the reference's figure is its driver's path, plans decoded from bytes and
    planned on arrays; rebuilding DCP SavePlans (the fallback for unusual plans) would fail."""
    from ckptconf.reference.compact_plan import CompactSavePlan

    def refuse(self):
        raise AssertionError("the benchmark's plans went to the object path")

    monkeypatch.setattr(CompactSavePlan, "to_save_plan", refuse)
    (row,) = bench_plan((8,), tensors=3, repeats=1, wire=True)
    assert row.reference_seconds > 0 and row.reference_wire_seconds > 0


def test_a_cached_resave_is_timed_beside_the_fresh_plan(capsys):
    (row,) = bench_plan((4,), tensors=2, repeats=1)
    assert row.reference_cached_seconds != row.reference_cached_seconds  # NaN unless asked
    (row,) = bench_plan((4,), tensors=2, repeats=2, cached=True, dcp_max_ranks=0)
    assert row.reference_cached_seconds > 0 and row.reference_seconds > 0
    assert row.cached_speedup == row.reference_seconds / row.reference_cached_seconds
    assert main(["bench", "plan", "--ranks", "3", "--tensors", "1", "--cached"]) == 0
    out = capsys.readouterr().out
    assert "re-save, cached" in out and "fresh / cached" in out
