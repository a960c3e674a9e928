"""The I/O benchmark: each implementation saves and loads the same state, checked, and timed."""

from __future__ import annotations

import os

from ckptconf.conformance.cli import main
from ckptconf.harness.bench_io import bench_io


def test_each_implementation_round_trips_the_state_and_is_timed(tmp_path, capsys):
    result = bench_io(1 << 20, count=4, rounds=1, folder=str(tmp_path))
    assert (result.total, result.count) == (1 << 20, 4)
    assert set(result.save) == set(result.load) == {"raw", "dcp", "reference"}
    assert all(s > 0 for s in [*result.save.values(), *result.load.values()])
    assert os.listdir(tmp_path) == []  # nothing left behind
    assert main(["bench", "io", "--mib", "1", "--count", "2", "--dir", str(tmp_path)]) == 0
    assert "reference / DCP" in capsys.readouterr().out
