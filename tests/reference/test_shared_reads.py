"""Shared reads (issue 30): a resharding load reads each saved chunk once and sends the parts."""

from __future__ import annotations

import pytest
from ckptconf.harness import get_world

from . import rank_scenarios as rs

pytestmark = pytest.mark.multiprocess

SHAPE = (256, 1024)  # float64: 2 MiB, saved as two 1 MiB row chunks


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("shared") / "rows")
    get_world(2).run(rs.save_rows, path, SHAPE)
    return path


def test_a_column_load_of_row_chunks_reads_each_byte_about_once(rows, world_factory):
    results = world_factory(3).run(rs.load_columns_counting, rows, SHAPE, True)
    needed = sum(r["needed"] for r in results)
    assert needed == 256 * 1024 * 8
    assert sum(r["read"] for r in results) <= 1.05 * needed
    unshared = world_factory(3).run(rs.load_columns_counting, rows, SHAPE, False)
    # each of the 3 ranks reads both whole chunks itself
    assert sum(r["read"] for r in unshared) == 3 * needed


def test_pieces_travel_in_rounds_when_a_round_would_pass_its_bound(rows, world_factory):
    # each chunk's pieces (about 0.7 MiB sent by its owner) pass a 0.5 MiB bound: a round each
    results = world_factory(3).run(rs.load_columns_counting, rows, SHAPE, True, 512 << 10)
    assert [r["rounds"] for r in results] == [2, 2, 2]
    assert sum(r["read"] for r in results) <= 1.05 * 256 * 1024 * 8
    one = world_factory(3).run(rs.load_columns_counting, rows, SHAPE, True)
    assert [r["rounds"] for r in one] == [1, 1, 1]


def test_a_corrupt_chunk_fails_the_load_on_every_rank_naming_its_reader(tmp_path, world_factory):
    path = tmp_path / "rows"
    world_factory(2).run(rs.save_rows, str(path), SHAPE)
    (data,) = path.glob("gen-*/r1.bin")  # the rows rank 1 saved
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0xFF
    data.write_bytes(bytes(raw))
    results = world_factory(3).run(rs.load_columns_failing, str(path), SHAPE)
    # one rank reads that chunk for all three; every rank raises its failure, none hangs
    assert len({tuple(r["ranks"]) for r in results}) == 1
    assert len(results[0]["ranks"]) == 1
    for result in results:
        assert "checksum mismatch for key 'w'" in result["message"]


def test_ranks_that_need_whole_chunks_read_them_themselves(rows, world_factory):
    # a replicated load: every rank needs all of both chunks, no read is amplified, nothing is
    # sent (sharing would only move the same bytes over the process group)
    results = world_factory(3).run(rs.load_columns_counting, rows, SHAPE, True, None, "R")
    assert [r["rounds"] for r in results] == [0, 0, 0]
    assert [r["read"] for r in results] == [256 * 1024 * 8] * 3
    # the layout saved: each rank reads its own chunk once, in place
    same = world_factory(2).run(rs.load_columns_counting, rows, SHAPE, True, None, "S0")
    assert [(r["rounds"], r["read"]) for r in same] == [(0, 128 * 1024 * 8)] * 2


@pytest.mark.parametrize("share_on_coordinator", [True, False])
def test_the_coordinators_share_reads_decides_for_every_rank(
    rows, world_factory, share_on_coordinator
):
    results = world_factory(3).run(rs.load_columns_with_flag, rows, SHAPE, share_on_coordinator)
    assert [r["rounds"] for r in results] == [int(share_on_coordinator)] * 3


@pytest.fixture(scope="module")
def rows_and_step(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared") / "rows_and_step"
    get_world(2).run(rs.save_rows_and_step, str(path), SHAPE)
    (data,) = path.glob("gen-*/r1.bin")  # rank 1's rows of both tensors
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF  # in tensor a's rows
    data.write_bytes(bytes(raw))
    return str(path)


@pytest.mark.parametrize("round_bytes", [None, 64])
def test_a_failed_shared_load_leaves_every_rank_s_objects_and_no_unverified_value(
    rows_and_step, world_factory, round_bytes
):
    # every rank needs rank 1's corrupt rows; one rank reads them for all (one round, or a
    # round per chunk): it fails, no piece moves, no rank loads the object
    results = world_factory(3).run(rs.load_columns_with_step, rows_and_step, SHAPE, round_bytes)
    assert len({tuple(r["failed"]) for r in results}) == 1 and len(results[0]["failed"]) == 1
    assert [r["step"] for r in results] == [0, 0, 0]
    assert all(r["clean"] for r in results)


def test_a_rank_failing_to_allocate_its_round_fails_every_rank_without_a_hang(
    rows, tmp_path, world_factory
):
    path = tmp_path / "ok"
    world_factory(2).run(rs.save_rows_and_step, str(path), SHAPE)
    results = world_factory(3).run(rs.load_columns_with_step, str(path), SHAPE, None, 1, timeout=60)
    assert [r["failed"] for r in results] == [[1]] * 3
    assert [r["step"] for r in results] == [0, 0, 0]
    loaded = world_factory(3).run(rs.load_columns_with_step, str(path), SHAPE)
    assert [(r["failed"], r["step"], r["clean"]) for r in loaded] == [(None, 9, True)] * 3


def test_a_reader_that_hands_the_planner_copies_of_its_items_still_shares(rows, world_factory):
    # relayed items are told by their destination key, not by identity
    results = world_factory(3).run(rs.load_columns_with_copying_reader, rows, SHAPE)
    assert [r["rounds"] for r in results] == [1, 1, 1]
