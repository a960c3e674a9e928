"""The planning benchmark: both planners plan the same simulated state and are timed."""

from __future__ import annotations

from ckptconf.conformance.cli import main
from ckptconf.harness.bench_plan import _states, bench_plan


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
    assert main(["bench", "plan", "--ranks", "3", "--tensors", "1", "--wire"]) == 0
    out = capsys.readouterr().out
    assert "reference speed-up" in out and "(un)pickling" in out
