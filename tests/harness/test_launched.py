"""The suites under torchrun (SPMD): a launched world runs steps of any size up to its own,
reports errors and hangs by rank, and a torchrun run reports what pool mode reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# gloo on the loopback interface only (the launcher's store is the launcher's own)
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
SUBSET = (
    "test_more_ranks_than_rows or test_a_sub_group_whose_coordinator "
    "or test_1d_mesh_to_2d_mesh_and_back"
)
"""Worlds of 1 to 4 ranks, sub-groups and 2-D meshes; small, as CI runs it twice. (The
crash-state tests, whose ranks strace themselves, were checked under torchrun by hand: see the
README.)"""
NODES_SUBSET = "test_a_sub_group_whose_coordinator"
"""What the two-node run checks: a sub-group across both nodes (the world is the same one, met
through rendezvous instead of a standalone store; one test keeps CI under its limit)."""


def _launch(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher in its own process group; on a timeout, stop that group by its id."""
    process = subprocess.Popen(
        args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{args[:6]} did not finish within {timeout} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(args, process.returncode, out, "")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _collected(selection: str) -> list[str]:
    """The report ids (``file::Class::test[params]``) of the reference's tests ``selection``
    picks, as pytest collects them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "ckptconf.conformance", "--collect-only"]
        + ["-q", "-p", "no:cacheprovider", "--ckpt-backend", "reference", "-k", selection],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    node_ids = [line for line in listed.stdout.splitlines() if "::" in line]
    return ["::".join([Path(n.split("::")[0]).name, *n.split("::")[1:]]) for n in node_ids]


def _outcomes(path: Path) -> dict[str, str]:
    return {t["id"]: t["outcome"] for t in json.loads(path.read_text())["tests"]}


@pytest.mark.slow
def test_a_launched_world_runs_steps_and_names_failing_and_stuck_ranks():
    done = _launch(
        TORCHRUN + ["--standalone", "--nproc-per-node", "4", "-m", "tests.harness.launched_script"],
        300,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stdout[-4000:]
    seen = json.loads(line.removeprefix("RESULT "))
    # each step on ranks 0..n-1 with a process group of n ranks: (rank, size, sum of ranks)
    assert seen["sizes"] == [[[r, n, float(sum(range(n)))] for r in range(n)] for n in (4, 2, 3, 4)]
    # each rank's outcome its own: rank 1's error, rank 0's value
    assert seen["error"] == [[1, "ValueError", "planted error on rank 1"]]
    assert seen["error_results"] == [0, None]
    assert "rank 1 says goodbye" in seen["error_output"]  # what the rank printed, with its error
    assert seen["after_error"][3] == [3, 4, 6.0]
    assert seen["hang"] and all(kind == "Stuck" for _, kind, _ in seen["hang"])
    assert seen["hang_seconds"] < 60
    assert seen["after_hang"][3] == [3, 4, 6.0]  # the world survived the hang
    assert [1, True] in seen["stuck"]  # rank 1 named, its stack shows where it is
    assert "rank(s) 1 did not answer" in seen["lost"]


@pytest.mark.slow
def test_a_torchrun_run_reports_what_pool_mode_reports(tmp_path):
    run = [sys.executable, "-m", "ckptconf", "run", "--backend", "reference", "--profile", "ci"]
    run += ["-k", SUBSET]
    # what pool mode reports for the reference: every test it collects passed (the reference
    # passes the whole suite in pool mode, scripts/run); collecting costs no ranks
    expected = dict.fromkeys(_collected(SUBSET), "passed")
    assert len(expected) >= 8, expected

    one_node = TORCHRUN + ["--standalone", "--nproc-per-node", "4", "-m", "ckptconf"]
    done = _launch(one_node + run[3:] + ["--report", str(tmp_path / "spmd.json")], 600)
    assert done.returncode == 0, done.stdout[-4000:]
    report = json.loads((tmp_path / "spmd.json").read_text())
    assert report["runner"] == "launched world: 4 ranks (cpu)"
    assert _outcomes(tmp_path / "spmd.json") == expected

    # two "nodes" of 2 ranks each, meeting through c10d rendezvous on 127.0.0.1
    port = _free_port()
    node = TORCHRUN + ["--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d"]
    node += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"ckptconf-{port}"]
    node += ["-m", "ckptconf", *run[3:-1], NODES_SUBSET, "--report", str(tmp_path / "nodes.json")]
    nodes = [
        subprocess.Popen(node, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = []
    for process in nodes:
        try:
            outputs.append(process.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for other in nodes:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail("the two-node run did not finish within 600 s")
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert (
        json.loads((tmp_path / "nodes.json").read_text())["runner"]
        == "launched world: 4 ranks (cpu)"
    )
    across = {k: v for k, v in expected.items() if NODES_SUBSET in k}
    assert across and _outcomes(tmp_path / "nodes.json") == across


@pytest.mark.slow
def test_a_rank_stuck_for_good_fails_its_test_and_the_run_still_ends(tmp_path):
    report = tmp_path / "stuck.json"
    done = _launch(
        TORCHRUN + ["--standalone", "--nproc-per-node", "2", "-m", "ckptconf", "run"]
        + ["--backend", "tests.harness.stuck_backend:stuck_on_rank_1", "--profile", "ci"]
        + ["--timeout", "5", "-k", "test_round_trip_dtensor_on_two_ranks", "--report", str(report)],
        300,
    )  # fmt: skip
    assert done.returncode != 0
    (test,) = json.loads(report.read_text())["tests"]
    assert test["outcome"] == "failed"
    failure = test["failure"]
    assert "hung" in failure["what"], failure
    assert "stuck_backend.py" in failure["details"] and "rank 1: Stuck" in failure["details"]
