"""Save and load across real gloo ranks: placement change, world-size change, 2-D meshes, failures."""

from __future__ import annotations

import pytest
from ckptconf.harness import get_world

from . import rank_scenarios as rs

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def source_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("mp") / "source")
    get_world(2).run(rs.save_source, path)
    return path


def test_two_ranks_load_under_other_placements(source_checkpoint, world_factory):
    results = world_factory(2).run(rs.load_and_check, source_checkpoint, (2,), "S1")
    assert [r["checked"] for r in results] == [
        [("dt", (8, 3)), ("uneven", (7, 2)), ("tiny", (1, 3))],
        [("dt", (8, 3)), ("uneven", (7, 1)), ("tiny", (1, 2))],
    ]
    results = world_factory(2).run(rs.load_and_check, source_checkpoint, (2,), "R")
    assert (
        results[0]["checked"]
        == results[1]["checked"]
        == [("dt", (8, 6)), ("uneven", (7, 3)), ("tiny", (1, 5))]
    )


def test_four_ranks_load_a_two_rank_checkpoint(source_checkpoint, world_factory):
    results = world_factory(4).run(rs.load_and_check, source_checkpoint, (4,), "S0")
    # 7 rows over 4 ranks: 2, 2, 2, 1; 1 row over 4 ranks: 1, 0, 0, 0 (empty shards)
    assert [dict(r["checked"])["uneven"] for r in results] == [(2, 3), (2, 3), (2, 3), (1, 3)]
    assert [dict(r["checked"])["tiny"] for r in results] == [(1, 5), (0, 5), (0, 5), (0, 5)]


def test_four_ranks_on_a_two_d_mesh(source_checkpoint, tmp_path, world_factory):
    results = world_factory(4).run(rs.load_and_check, source_checkpoint, (2, 2), "S0S1")
    assert [dict(r["checked"])["dt"] for r in results] == [(4, 3)] * 4
    results = world_factory(4).run(rs.save_2d_and_load_1d, str(tmp_path / "twod"))
    assert [r["local"] for r in results] == [(5, 2), (5, 2), (5, 2), (5, 1)]


def test_three_ranks_uneven(source_checkpoint, world_factory):
    results = world_factory(3).run(rs.load_and_check, source_checkpoint, (3,), "S0")
    assert [dict(r["checked"])["uneven"] for r in results] == [(3, 3), (3, 3), (1, 3)]


@pytest.mark.parametrize("fail_rank", [0, 1])
def test_a_rank_failing_in_write_fails_every_rank_and_keeps_the_old_checkpoint(
    tmp_path, fail_rank, world_factory
):
    results = world_factory(2).run(rs.failing_save_keeps_previous, str(tmp_path / "ck"), fail_rank)
    for result in results:
        assert result["error"]["ranks"] == [fail_rank]
        assert f"injected write failure on rank {fail_rank}" in result["error"]["message"]
    # the failed save's generation stays until the next good save cleans it
    assert results[0]["generations"] == 2


def test_save_plans_cross_the_wire_as_arrays_never_unpickled(tmp_path, world_factory):
    """Issue 30: the reference's own planner and writer send plans as arrays in tensors; the
    coordinator unpickles nothing in the planning step, and every rank loads what it saved."""
    results = world_factory(3).run(rs.save_planning_unpickles_nothing, str(tmp_path / "ck"))
    for result in results:
        assert result["steps"] == ["save planning"]
        assert result["unpickled"] == 0
        assert result["keys"] == ["cfg.lr", "dt", "emb", "own0", "own1", "own2"]
        assert result["chunks"] == [(0, 0), (3, 0), (6, 0)]
        assert result["cfg"] == {"lr": 0.5}


@pytest.mark.parametrize("share_reads", [False, True])
def test_complex_values_load_from_blocks_of_any_size(tmp_path, world_factory, share_reads):
    # 100-byte blocks: a span of 16-byte elements starts 4 bytes off; a complex copy from a
    # misaligned view crashed the process (SIGSEGV)
    results = world_factory(3).run(
        rs.complex_columns_to_rows, str(tmp_path / "c"), 100, share_reads
    )
    assert results == [True, True, True]


@pytest.mark.parametrize(
    ("lengths", "reply_lengths"),
    [
        ((10, 0, 4096), (4096, 1, 0)),  # everything fits a first frame
        ((10, 9000, 5), (3, 3, 3)),  # one message longer: the rests are asked for
        ((1, 2, 3), (0, 20000, 4097)),  # replies longer: their rests follow
        ((5000, 4097, 70000), (9000, 0, 4100)),  # both
    ],
)
def test_a_steps_messages_of_any_length_arrive_whole(world_factory, lengths, reply_lengths):
    results = world_factory(3).run(rs.round_trips, lengths, reply_lengths)
    assert results == [[True, n] for n in reply_lengths]
