"""Run by test_xdist.py under ``pytest -n 2``: each xdist worker gets its own warm worlds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from . import rank_functions as rf


@pytest.mark.parametrize("case", range(4))
def test_world_in_a_worker(world_factory, case):
    world = world_factory(2)
    assert world.run(rf.all_reduce_sum) == [3.0, 3.0]
    record = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "pids": world.pids}
    Path(os.environ["CKPTCONF_PROBE_DIR"], f"case{case}.json").write_text(json.dumps(record))
