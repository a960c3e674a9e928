"""The resharding benchmark: bytes read against bytes needed, checked by hand; values checked."""

from __future__ import annotations

import os

import pytest
from ckptconf.bench import reshard as module
from ckptconf.bench.reshard import CASES, ReshardCase, bench_reshard, case_shape
from ckptconf.cli import main

ROWS_TO_COLUMNS, MESH_2X2_TO_ROWS = CASES


def test_a_column_slab_of_row_chunks_reads_whole_checksum_blocks(tmp_path):
    # float64 (4, 900) saved as 2 row chunks (2, 900): 14,400 bytes each, checksum blocks of
    # 4,096 bytes (the last one 2,112). Loaded as 3 column slabs of 300 columns (2,400 bytes a
    # row). From each saved chunk, rank j needs elements (0, 300j) .. (1, 300j + 299): bytes
    # [2400j, 7200 + 2400(j + 1)), read as whole blocks:
    #   j = 0: [0, 9600)      -> blocks 0..2 -> [0, 12288)     12,288 bytes
    #   j = 1: [2400, 12000)  -> blocks 0..2 -> [0, 12288)     12,288 bytes
    #   j = 2: [4800, 14400)  -> blocks 1..3 -> [4096, 14400)  10,304 bytes
    unshared = 2 * (12288 + 12288 + 10304)
    (row,) = bench_reshard(
        cases=[ROWS_TO_COLUMNS], shape=(4, 900), block_size=4096, rounds=1, folder=str(tmp_path)
    )
    assert row.needed == 4 * 900 * 8
    assert row.read["reference-unshared"] == unshared == 69760
    assert row.amplification("reference-unshared") == 69760 / 28800
    # shared reads: each rank needs 4,800 of a chunk's bytes and would read 2 to 2.6 times
    # that, so one rank reads each chunk's span once ([0, 14400): blocks 0..3) for all three
    assert row.read["reference"] == 2 * 14400 == row.needed
    # DCP reads each saved chunk whole (a torch.save record) for each rank that needs part of it
    assert row.read["dcp"] >= 3 * 2 * 14400
    assert min(row.seconds.values()) > 0
    assert row.speedup == row.seconds["dcp"] / row.seconds["reference"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("shape", "block_size", "expected_read", "unshared_read"),
    [
        # 2x2 chunks of (2, 3): 48 bytes, in one 4 MiB block; each of the 4 ranks (one row)
        # needs half of 2 chunks: alone it reads those 2 chunks whole (8 x 48 bytes); shared,
        # one of the 2 ranks needing a chunk reads it for both (4 x 48)
        ((4, 6), None, 4 * 48, 8 * 48),
        # 2x2 chunks of (4, 2): 64 bytes, 2 blocks of 32; each rank (2 rows) needs one half of
        # 2 chunks, which is one block: 8 x 32 bytes, just what is needed (8 x 4 x 8), nothing
        # to share
        ((8, 4), 32, 8 * 32, 8 * 32),
    ],
)
def test_a_2d_mesh_loaded_as_rows_reads_whole_blocks(
    tmp_path, shape, block_size, expected_read, unshared_read
):
    (row,) = bench_reshard(
        cases=[MESH_2X2_TO_ROWS],
        shape=shape,
        block_size=block_size,
        rounds=2,
        folder=str(tmp_path),
    )
    assert row.needed == shape[0] * shape[1] * 8
    assert row.read["reference"] == expected_read
    assert row.read["reference-unshared"] == unshared_read
    assert row.amplification("reference") == expected_read / row.needed
    assert row.read["dcp"] >= 8 * shape[0] * shape[1] * 8 // 4  # each chunk whole, twice


def test_an_unchanged_layout_reads_each_chunk_once_whole(tmp_path):
    # each rank's saved chunk is its destination: the reference reads it into the destination
    # block by block (read_into), exactly the bytes needed
    same = ReshardCase("S0 on 2 -> S0 on 2", (2,), ("S0",), (2,), ("S0",))
    (row,) = bench_reshard(cases=[same], shape=(4, 6), rounds=1, folder=str(tmp_path))
    assert row.read["reference"] == row.needed == 4 * 6 * 8
    assert row.read["dcp"] >= row.needed


def test_a_load_that_does_not_give_back_the_saved_values_fails(tmp_path, monkeypatch):
    values = module._values

    def off_by_one(mesh, placements, shape, *, encoded):
        out = values(mesh, placements, shape, encoded=encoded)
        if encoded:  # what is saved: one element is not its index
            out[-1].pieces[0].view.view(-1)[-1] += 1
        return out

    monkeypatch.setattr(module, "_values", off_by_one)
    with pytest.raises(AssertionError, match="not the saved values"):
        bench_reshard(cases=[ROWS_TO_COLUMNS], shape=(4, 6), rounds=1, folder=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_the_default_shape_splits_evenly_on_a_2x2_mesh():
    assert case_shape(32) == (1024, 4096)  # a 2x2 chunk: 8 MiB, two whole 4 MiB blocks
    rows, columns = case_shape(0.01)
    assert rows % 4 == 0 and columns >= 3 and rows * columns * 8 <= 0.01 * 2**20


def test_the_command_prints_every_case(tmp_path, capsys):
    assert main(["bench", "reshard", "--mib", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ampl. ref." in out
    assert all(case.name in out for case in CASES)
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit):
        main(["bench", "reshard", "--mib", "1,2"])
