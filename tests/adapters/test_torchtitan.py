"""The torchtitan adapter (its CheckpointManager): selected by name, what it declares, a 2-rank
save and resharded load in its sync mode, and the ci subset with its own finding reported as
expected (its full verdict: docs/backends.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchtitan.components.checkpoint", reason="needs ckptconf[torchtitan]")

from ckptconf.conformance import (  # noqa: E402
    Layout,
    SaveLoadCase,
    TensorSpec,
    check_save_then_load,
    select_backend,
)

ROOT = Path(__file__).resolve().parents[2]

CASE = SaveLoadCase(
    (TensorSpec("w", (4, 3), "float32"), TensorSpec("p", (5,), "float64", salt=1)),
    (Layout("sharded_tensor"), Layout()),
    (Layout("sharded_tensor", shard_dim=1), Layout("sharded_tensor")),
    save_world=2,
    load_world=2,
    nested=True,
)


def test_the_manager_runs_the_whole_system_and_says_what_it_cannot_take(monkeypatch):
    import torch

    monkeypatch.delenv("CKPTCONF_TORCHTITAN_ASYNC_MODE", raising=False)
    backend = select_backend("torchtitan")
    assert backend.inherits == "torch-dcp"
    assert backend.save is not None and backend.async_save is not None
    assert backend.storage_writer is None and not backend.supports("storage")
    assert "checkpoint id" in backend.unsupported_reasons["storage"]
    assert backend.supports("async_save") and backend.supports("checkpointer")
    monkeypatch.setenv("CKPTCONF_TORCHTITAN_ASYNC_MODE", "async_with_pinned_mem")
    pinned = select_backend("torchtitan")
    if not torch.accelerator.is_available():
        assert "Non-blocking copy requires" in pinned.unsupported_reasons["async_save"]
    monkeypatch.setenv("CKPTCONF_TORCHTITAN_ASYNC_MODE", "sync")
    with pytest.raises(Exception, match="CKPTCONF_TORCHTITAN_ASYNC_MODE='sync'"):
        select_backend("torchtitan")


@pytest.fixture
def one_rank(tmp_path):
    """A one-rank gloo world on a file store: the manager asks for the rank when it purges."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_each_save_is_the_next_step_and_a_load_of_nothing_raises(tmp_path, one_rank):
    import torch

    backend = select_backend("torchtitan")
    path = tmp_path / "ckpt"
    with pytest.raises(FileNotFoundError, match="no step-N checkpoint"):
        backend.run_load({"w": torch.zeros(3)}, path)
    backend.run_save({"w": torch.ones(3)}, path)
    backend.run_async_save({"w": torch.full((3,), 2.0)}, path).result()
    assert sorted(os.listdir(path)) == ["step-1", "step-2"]
    state = {"w": torch.zeros(3)}
    backend.run_load(state, path)
    assert state["w"].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.multiprocess
def test_save_on_two_ranks_and_load_resharded():
    check_save_then_load(select_backend("torchtitan"), CASE)


# test_round_trip itself (not test_round_trip_dtensor_... and the rest), and the async test
SELECTION = "(test_round_trip and not test_round_trip_) or test_state_changed_after_call"


@pytest.mark.multiprocess
def test_the_ci_subset_reports_its_own_finding_as_expected(tmp_path):
    """``ckptconf run --backend torchtitan`` on a subset: a top-level object is not restored by
    the manager's load (its own finding, expected), DCP's failures are inherited, exit 0."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "ckptconf.cli", "run"]
        + ["--backend", "torchtitan", "--profile", "ci", "--report", str(report)]
        + ["--", "-k", SELECTION, "--ckpt-no-shrink"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    tests = {t["id"].split("::")[-1]: t for t in json.loads(report.read_text())["tests"]}
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert tests["test_round_trip"]["outcome"] == "expected", tests["test_round_trip"]
    outcomes = {t["outcome"] for t in tests.values()}
    assert outcomes <= {"passed", "expected", "inherited"}, tests
