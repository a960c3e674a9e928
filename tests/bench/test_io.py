"""The I/O benchmark: each implementation saves and loads the same state, checked, and timed;
each one's peak memory measured in processes of its own; sizes and counts swept."""

from __future__ import annotations

import os
import tempfile

import pytest
from ckptconf.bench.io import IMPLEMENTATIONS, bench_io, peak_rss_growth
from ckptconf.cli import main
from ckptconf.conformance.options import memory_folder


def test_each_implementation_round_trips_the_state_and_is_timed(tmp_path):
    result = bench_io(1 << 20, count=4, rounds=1, folder=str(tmp_path), rss=False)
    assert (result.total, result.count) == (1 << 20, 4)
    assert (
        set(result.save)
        == set(result.load)
        == {
            "raw",
            "dcp",
            "dcp-4",
            "reference",
            "reference-unverified",
        }
    )
    assert all(s > 0 for s in [*result.save.values(), *result.load.values()])
    assert result.rss == {}
    assert os.listdir(tmp_path) == []  # nothing left behind


def test_peak_rss_growth_is_what_each_step_holds_beyond_the_state(tmp_path):
    total = 16 << 20
    growth = peak_rss_growth(total, 1, str(tmp_path))  # a process per implementation and step
    assert set(growth) == {"save", "load"}
    for step in ("save", "load"):
        assert set(growth[step]) == set(IMPLEMENTATIONS)
        assert all(bytes_ >= 0 for bytes_ in growth[step].values())
    # raw I/O writes from the state and reads into the destination: no buffer of its size
    assert growth["save"]["raw"] < total // 8 and growth["load"]["raw"] < total // 8
    # DCP's reader torch.loads each saved tensor whole, then copies it into the destination
    assert growth["load"]["dcp"] >= total * 0.9
    assert os.listdir(tmp_path) == []


def test_the_command_prints_the_growth_in_mib_and_times_the_state(tmp_path, capsys, monkeypatch):
    import ckptconf.bench.io as module

    def growth(total, count, folder):  # the child processes are tested above
        return {
            "save": {"raw": 0, "dcp": 1 << 20, "reference": total // 4},
            "load": {"raw": 0, "dcp": 3 << 19, "reference": total * 2},
        }

    monkeypatch.setattr(module, "peak_rss_growth", growth)
    assert main(["bench", "io", "--mib", "4", "--count", "2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ref. / best DCP" in out and "peak RSS growth (MiB)" in out and "DCP x state" in out
    speed, growth = _rows(out)[:2], _rows(out)[2:]
    assert [row[:3] for row in speed] == [["4", "2", "save"], ["4", "2", "load"]]
    assert growth == [
        ["4", "2", "save", "0.0", "1.0", "1.0", "0.000", "0.250", "0.250"],
        ["4", "2", "load", "0.0", "1.5", "8.0", "0.000", "0.375", "2.000"],
    ]


def _rows(out: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in out.splitlines()
        if line.startswith("│")
    ]


def test_sizes_and_counts_are_swept_one_row_pair_each(tmp_path, capsys):
    argv = ["bench", "io", "--mib", "1,2", "--count", "1,3", "--dir", str(tmp_path), "--no-rss"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [row[:3] for row in _rows(out)] == [
        [mib, count, step] for mib in "12" for count in "13" for step in ("save", "load")
    ]
    assert "peak RSS" not in out
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit):
        main(["bench", "io", "--mib", "1,x"])
    with pytest.raises(SystemExit):
        main(["bench", "io", "--count", "0"])


def test_the_default_folder_is_memory_only_with_room_for_the_checkpoint():
    from ckptconf.bench.io import default_folder

    assert default_folder(room=1 << 60) == tempfile.gettempdir()  # no tmpfs has an EiB free
    if memory_folder(room=1 << 20) == "/dev/shm":
        assert default_folder(room=1 << 20) == "/dev/shm"
