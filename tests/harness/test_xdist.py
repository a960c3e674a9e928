"""Worlds under pytest-xdist: each worker has its own pools and they do not collide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_xdist_workers_each_run_their_own_worlds(tmp_path):
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/harness/xdist_cases.py",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CKPTCONF_PROBE_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("case*.json"))]
    assert len(records) == 4
    pools: dict[str, set] = {}
    for record in records:
        pools.setdefault(record["worker"], set()).add(tuple(record["pids"]))
    assert set(pools) <= {"gw0", "gw1"}
    assert all(len(seen) == 1 for seen in pools.values()), pools  # each worker reuses one pool
    if len(pools) == 2:  # xdist may give all four cases to one worker
        assert pools["gw0"].isdisjoint(pools["gw1"])
